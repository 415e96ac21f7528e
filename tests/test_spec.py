"""The spec (spec/bundle-format.md), its JSON Schema and the code agree.

(a) every manifest kbundle writes validates against the schema; (b) the spec's example
manifest round-trips through the manifest records byte for byte; (c) the example embedded in
the spec is the standalone example file; (d) what the schema refuses, ``parse_manifest``
refuses too; (e) the container rules the spec states (frame layout, member kinds, names,
reader obligations, identity) hold for real bundles.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest
import zstandard
from bundle_factory import assemble
from conftest import child_env, run_cli
from schema_support import SPEC_DIR, assert_valid_manifest, definition_accepts, schema_errors

import kbundle
from kbundle.container.manifest import (
    Manifest,
    NewerFormatWarning,
    parse_manifest,
    serialize_manifest,
)
from kbundle.container.names import name_problem
from kbundle.container.tarstream import END_OF_ARCHIVE, padding
from kbundle.container.writer import header_region
from kbundle.container.zstdframes import TRAILER_SIZE, FrameTracker, trailer_frame
from kbundle.errors import (
    BundleFormatError,
    IntegrityError,
    KbundleError,
    UnsupportedFormatVersionError,
)

EXAMPLE_PATH = SPEC_DIR / "example-manifest.json"
SPEC_PATH = SPEC_DIR / "bundle-format.md"
EPOCH = "1767225600"  # 2026-01-01T00:00:00Z


def example() -> dict[str, Any]:
    return json.loads(EXAMPLE_PATH.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def manifest_of(bundle: Path) -> dict[str, Any]:
    """The manifest exactly as stored in ``bundle``, read through the public API."""
    return json.loads(kbundle.inspect(bundle).manifest_bytes)  # type: ignore[no-any-return]


def frames_of(bundle: Path) -> list[bytes]:
    """The bundle's frames (the trailer last), split where FrameTracker sees each one end."""
    data = bundle.read_bytes()
    frames, start, tracker = [], 0, FrameTracker()
    for end in range(1, len(data) + 1):
        tracker.feed(data[end - 1 : end])
        if tracker.at_frame_boundary:
            frames.append(data[start:end])
            start = end
    assert start == len(data) and tracker.at_end, "the bundle does not end with its trailer"
    return frames


def forge_bundle(
    path: Path, manifest: dict[str, Any], entries: list[tuple[tarfile.TarInfo, bytes]]
) -> Path:
    """A bundle laid out as the spec says, with tar entries chosen by the test."""
    payload = b"".join(
        info.tobuf(tarfile.PAX_FORMAT, "utf-8", "strict") + data + padding(len(data))
        for info, data in entries
    )
    compressed = zstandard.ZstdCompressor(write_checksum=True).compress(payload + END_OF_ARCHIVE)
    path.write_bytes(assemble(serialize_manifest(Manifest.from_dict(manifest)), compressed))
    return path


def file_entry(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def file_member(name: str, data: bytes) -> dict[str, Any]:
    return {
        "path": name,
        "type": "file",
        "size": len(data),
        "digest": "sha256:" + hashlib.sha256(data).hexdigest(),
    }


def with_members(members: list[dict[str, Any]]) -> dict[str, Any]:
    """The example manifest listing ``members`` instead (the model first), with the assets
    among them."""
    manifest = example()
    manifest["members"] = members
    manifest["model"]["path"] = members[0]["path"]
    manifest["assets"] = [
        {"path": m["path"]}
        for m in members
        if m["path"].count("/") == 1 and m["path"].startswith("assets/")
    ]
    return manifest


def keras_dir(saved_keras_file: Path, target: Path) -> Path:
    """The saved .keras model in its directory form (what ``keras-dir`` bundles hold)."""
    with zipfile.ZipFile(saved_keras_file) as archive:
        archive.extractall(target)
    return target


# --------------------------------------------------------------------------------------------
# (a) every manifest the code writes validates against the schema


def test_live_model_packed_in_process_matches_the_schema(
    tmp_path: Path, sequential_model: Any
) -> None:
    result = kbundle.pack(sequential_model, tmp_path / "live.kbundle")
    manifest = manifest_of(result.path)
    assert manifest["model"]["parameter_count"] == 193
    assert_valid_manifest(manifest)
    assert_valid_manifest(result.manifest.to_dict())


def test_keras_file_packed_by_the_cli_matches_the_schema(
    tmp_path: Path, saved_keras_file: Path
) -> None:
    bundle = tmp_path / "file.kbundle"
    packed = run_cli("pack", saved_keras_file, "-o", bundle, "--quiet")
    assert packed.returncode == 0, packed.stderr
    assert_valid_manifest(manifest_of(bundle))
    shown = run_cli("inspect", bundle, "--json")
    assert shown.returncode == 0, shown.stderr
    assert_valid_manifest(json.loads(shown.stdout)["manifest"])


def test_directory_model_packed_by_the_cli_matches_the_schema(
    tmp_path: Path, saved_keras_file: Path
) -> None:
    model = keras_dir(saved_keras_file, tmp_path / "model_dir")
    (model / "assets").mkdir()  # an empty directory travels as a "dir" member
    bundle = tmp_path / "dir.kbundle"
    packed = run_cli("pack", model, "-o", bundle, "--level", "none", "--quiet")
    assert packed.returncode == 0, packed.stderr
    manifest = manifest_of(bundle)
    assert manifest["model"]["format"] == "keras-dir"
    assert {
        "path": "model/keras_model/assets",
        "type": "dir",
        "size": None,
        "digest": None,
    } in manifest["members"]
    assert_valid_manifest(manifest)


# --------------------------------------------------------------------------------------------
# (b) the spec's example manifest round-trips and validates, (c) and is the one in the spec


def test_example_manifest_round_trips_byte_for_byte() -> None:
    data = EXAMPLE_PATH.read_bytes()
    manifest = Manifest.from_dict(example())
    assert manifest.to_dict() == example()
    assert parse_manifest(data) == manifest
    # The example is written exactly as a writer writes a manifest.
    assert serialize_manifest(manifest) == data


def test_example_manifest_matches_the_schema() -> None:
    assert_valid_manifest(example())


def test_example_in_the_spec_is_the_example_file() -> None:
    text = SPEC_PATH.read_text(encoding="utf-8")
    section = text.split("\n## Example manifest\n", 1)[1]
    block = re.search(r"```json\n(.*?\n)```\n", section, re.DOTALL)
    assert block is not None, "no ```json block under '## Example manifest'"
    assert block.group(1) == EXAMPLE_PATH.read_text(encoding="utf-8")


# --------------------------------------------------------------------------------------------
# (d) what the schema refuses, the reader refuses


def refused_by_schema_and_reader(
    manifest: dict[str, Any], error: type[KbundleError]
) -> KbundleError:
    """Check that both refuse ``manifest``; return the reader's error for its message."""
    assert schema_errors(manifest) != []
    with pytest.raises(error) as caught:
        parse_manifest(json.dumps(manifest).encode())
    return caught.value


@pytest.mark.parametrize(
    "digest",
    [
        "md5:" + "0" * 32,
        "sha1:" + "0" * 40,
        "sha512:" + "0" * 128,
        "sha256:" + "A" * 64,
        "0" * 64,
    ],
)
def test_digest_other_than_sha256_is_refused_by_schema_and_reader(digest: str) -> None:
    manifest = example()
    manifest["members"][0]["digest"] = digest
    refused = refused_by_schema_and_reader(manifest, BundleFormatError)
    assert isinstance(refused, IntegrityError)
    assert refused.message == (
        "the manifest breaks 1 format rule(s): members[0].digest: must be 'sha256:' and 64 "
        f"lowercase hex digits: {digest!r}"
    )


@pytest.mark.parametrize(
    ("version", "error", "message"),
    [
        *[
            (
                v,
                UnsupportedFormatVersionError,
                f"bundle format {v} is not readable by this kbundle (reads 1.x)",
            )
            for v in ("2.0", "0.9", "10.0")
        ],
        *[
            (v, BundleFormatError, f"format_version must be 'MAJOR.MINOR': {v!r}")
            for v in ("1", "1.0.0", "v1.0", "\u0661.\u0660", "1.x")
        ],
    ],
)
def test_unknown_major_or_malformed_version_is_refused(
    version: str, error: type[KbundleError], message: str
) -> None:
    manifest = example()
    manifest["format_version"] = version
    assert refused_by_schema_and_reader(manifest, error).message == message


def test_newer_minor_version_warns_and_ignores_unknown_fields() -> None:
    manifest = example()
    manifest["format_version"] = "1.7"
    manifest["signed_by"] = "someone"  # fields a later 1.x may add, at any depth
    manifest["model"]["quantized"] = True
    with pytest.warns(
        NewerFormatWarning,
        match=r"^bundle format 1\.7 is newer than 1\.1; unknown fields are ignored$",
    ):
        parsed = parse_manifest(json.dumps(manifest).encode())
    assert parsed.to_dict() == {**example(), "format_version": "1.7"}
    # The schema describes what a 1.1 writer emits, so it refuses these fields.
    assert "$: Additional properties are not allowed ('signed_by' was unexpected)" in schema_errors(
        manifest
    )


def test_traversal_member_path_is_refused_by_schema_and_reader() -> None:
    manifest = example()
    manifest["members"].append(file_member("../x", b"x"))
    assert any(error.startswith("$.members[2].path:") for error in schema_errors(manifest))
    refused = refused_by_schema_and_reader(manifest, BundleFormatError)
    assert refused.message == (
        "the manifest breaks 1 format rule(s): members[2].path: component '..' is not allowed "
        "(names must be normalised and relative): '../x'"
    )


# Names whose verdict a schema pattern can decide (ASCII, short): it must equal names.py's.
NAMES = [
    "model/model.keras",
    "model/saved_model/variables/variables.data-00000-of-00001",
    "code/my_layers.py",
    "objects/0.pkl",
    "env/requirements.txt",
    "probe/inputs.npz",
    "model/.hidden",
    "model/console",
    "model/a.b.c",
    "../x",
    "model/../x",
    "model/./x",
    "model//x",
    "model/x/",
    "/model/x",
    "model",
    "modelx/a",
    "kbundle.json",
    "kbundle.sig",
    "model\\x",
    "model/c:x",
    "model/a\nb",
    "model/a\x00b",
    "model/a\x7fb",
    "model/trailing.",
    "model/trailing ",
    "model/aux.txt",
    "model/AUX",
    "model/Com1",
    "model/lpt9.log",
    "model/nul/x",
    "model/" + "a" * 255,
    "model/" + "a" * 256,
]


@pytest.mark.parametrize("name", NAMES)
def test_schema_member_path_pattern_agrees_with_names_module(name: str) -> None:
    # The name rules alone: in a whole manifest, a member outside model/ must also be
    # referenced, which the example's empty fields would refuse.
    assert definition_accepts("memberPath", name) == (name_problem(name) is None)


# --------------------------------------------------------------------------------------------
# (e) the container rules the spec states, on real bundles


def test_bundle_is_a_raw_header_frame_then_one_payload_frame(
    tmp_path: Path, saved_keras_file: Path
) -> None:
    for level in ("3", "none"):
        bundle = kbundle.pack(saved_keras_file, tmp_path / f"{level}.kbundle", level=level).path
        header, *payload, trailer = frames_of(bundle)
        assert trailer == trailer_frame(hashlib.sha256(b"".join(payload)).digest())
        # Magic, then Single_Segment + 8-byte Frame_Content_Size + Content_Checksum.
        assert header[:5] == b"\x28\xb5\x2f\xfd\xe4"
        assert header == header_region(kbundle.inspect(bundle).manifest_bytes)
        assert len(payload) == 1, f"level {level}: {len(payload)} payload frames"
        has_checksum = bool(payload[0][4] & 0b100)
        # Compressed frames carry zstd's checksum; the stored frame of level none does not
        # (the spec's Notes: member digests and the tar rules cover its bytes instead).
        assert has_checksum == (level != "none")


def test_standard_tools_read_a_bundle(tmp_path: Path, saved_keras_file: Path) -> None:
    if shutil.which("tar") is None or shutil.which("zstd") is None:
        pytest.skip("GNU tar and zstd are not installed")
    bundle = kbundle.pack(saved_keras_file, tmp_path / "m.kbundle").path
    subprocess.run(["zstd", "-q", "-t", str(bundle)], check=True)
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["tar", "--zstd", "-xf", str(bundle), "-C", str(out)], check=True)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        "env",
        "env/requirements.txt",
        "kbundle.json",
        "model",
        "model/model.keras",
        "probe",
        "probe/inputs.npz",
        "probe/outputs.npz",
    ]
    assert (out / "kbundle.json").read_bytes() == kbundle.inspect(bundle).manifest_bytes
    assert (out / "model/model.keras").read_bytes() == saved_keras_file.read_bytes()


def test_identity_is_independent_of_compression_and_reproducible(
    tmp_path: Path, saved_keras_file: Path
) -> None:
    env = child_env(SOURCE_DATE_EPOCH=EPOCH)
    digests = {}
    for name, level in (("a", "3"), ("b", "3"), ("c", "none"), ("d", "19")):
        result = run_cli(
            "pack",
            saved_keras_file,
            "-o",
            tmp_path / f"{name}.kbundle",
            "--level",
            level,
            "--quiet",
            env=env,
        )
        assert result.returncode == 0, result.stderr
        digests[name] = result.stdout.split()[0]
    assert len(set(digests.values())) == 1, digests
    assert (tmp_path / "a.kbundle").read_bytes() == (tmp_path / "b.kbundle").read_bytes()
    assert (tmp_path / "a.kbundle").read_bytes() != (tmp_path / "c.kbundle").read_bytes()
    assert manifest_of(tmp_path / "c.kbundle")["created"] == "2026-01-01T00:00:00Z"


def test_directory_names_that_need_pax_records_round_trip(
    tmp_path: Path, saved_keras_file: Path
) -> None:
    model = keras_dir(saved_keras_file, tmp_path / "model_dir")
    long_name = "d" * 120  # past the 100-byte ustar name field
    for name in (long_name, "modèle"):
        (model / name).mkdir()
        (model / name / "f.txt").write_text("x", encoding="utf-8")
    bundle = kbundle.pack(model, tmp_path / "names.kbundle").path
    report = kbundle.verify(bundle)
    assert report.findings == []
    listed = {m.path for m in report.head.manifest.members if m.type == "dir"}
    assert listed == {
        "model/keras_model",
        f"model/keras_model/{long_name}",
        "model/keras_model/modèle",
    }
    assert_valid_manifest(manifest_of(bundle))


def test_pack_refuses_a_name_the_format_forbids_and_leaves_nothing(
    tmp_path: Path, saved_keras_file: Path
) -> None:
    model = keras_dir(saved_keras_file, tmp_path / "model_dir")
    (model / "aux.txt").write_text("x", encoding="utf-8")
    output = tmp_path / "out" / "bad.kbundle"
    output.parent.mkdir()
    with pytest.raises(BundleFormatError) as caught:
        kbundle.pack(model, output)
    assert caught.value.message == (
        "the manifest breaks 1 format rule(s): members[1].path: component 'aux.txt' cannot be "
        "created on every file system: 'model/keras_model/aux.txt'"
    )
    assert list(output.parent.iterdir()) == []


def test_directory_member_carrying_data_is_refused(tmp_path: Path) -> None:
    weights = b"not a model, but the container does not care"
    manifest = with_members(
        [
            file_member("model/model.keras", weights),
            {"path": "model/extra", "type": "dir", "size": None, "digest": None},
        ]
    )
    hidden = tarfile.TarInfo("model/extra")
    hidden.type = tarfile.DIRTYPE
    hidden.size = 5
    bundle = forge_bundle(
        tmp_path / "dirdata.kbundle",
        manifest,
        [file_entry("model/model.keras", weights), (hidden, b"hello")],
    )
    with pytest.raises(IntegrityError) as caught:
        kbundle.verify(bundle)
    assert caught.value.message == (
        f"{bundle} failed verification: model/extra: a directory member carries data "
        "(expected 0 bytes, found 5 bytes)"
    )


@pytest.mark.parametrize("size", ["²", "٣", "-1", "1e3", ""])
def test_pax_size_must_be_ascii_decimal(tmp_path: Path, size: str) -> None:
    weights = b"0123456789"
    info, data = file_entry("model/model.keras", weights)
    info.pax_headers = {"size": size}
    bundle = forge_bundle(
        tmp_path / "pax.kbundle",
        with_members([file_member("model/model.keras", weights)]),
        [(info, data)],
    )
    with pytest.raises(IntegrityError) as caught:
        kbundle.verify(bundle)
    assert f"pax size is not a number: {size!r}" in caught.value.message


def test_non_finite_numbers_are_refused() -> None:
    text = EXAMPLE_PATH.read_text(encoding="utf-8").replace(
        '"is_cuda_build": false', '"is_cuda_build": 1e999'
    )
    assert "1e999" in text
    with pytest.raises(BundleFormatError) as caught:
        parse_manifest(text.encode())
    assert caught.value.message == "manifest is not valid JSON: number out of range 1e999"


def test_member_name_must_be_valid_unicode() -> None:
    manifest = example()
    manifest["members"].append(file_member("model/\ud800", b""))
    with pytest.raises(BundleFormatError) as caught:
        parse_manifest(json.dumps(manifest).encode())  # ensure_ascii spells it \ud800
    assert caught.value.message == (
        "the manifest breaks 1 format rule(s): members[2].path: name is not valid Unicode "
        "(lone surrogate): 'model/\\ud800'"
    )


@pytest.mark.timeout(60)  # a hang guard, not a speed test: the old scan took hours here
def test_unterminated_string_is_refused_without_a_quadratic_scan() -> None:
    hostile = b'{"format_version": "1.0", "a": "' + b'\\"' * (1 << 20)
    with pytest.raises(BundleFormatError) as caught:
        parse_manifest(hostile)
    assert caught.value.message.startswith(
        "manifest is not valid JSON: Unterminated string starting at"
    )


def test_source_date_epoch_that_is_not_ascii_digits_is_ignored(
    tmp_path: Path, saved_keras_file: Path
) -> None:
    bundle = tmp_path / "m.kbundle"
    result = run_cli(
        "pack", saved_keras_file, "-o", bundle, "--quiet", env=child_env(SOURCE_DATE_EPOCH="²")
    )
    assert result.returncode == 0, result.stderr
    assert not manifest_of(bundle)["created"].startswith("1970-")


def test_a_bundle_recompressed_by_general_tools_is_refused(
    tmp_path: Path, saved_keras_file: Path
) -> None:
    """Recompressing drops the trailer, so the result is not a bundle (spec 4.1, 4.4)."""
    original = kbundle.pack(saved_keras_file, tmp_path / "m.kbundle")
    reader = zstandard.ZstdDecompressor().stream_reader(
        original.path.read_bytes(), read_across_frames=True
    )
    recompressed = tmp_path / "re.kbundle"
    recompressed.write_bytes(
        zstandard.ZstdCompressor(level=19, write_checksum=True).compress(reader.read())
    )
    with pytest.raises(IntegrityError) as recompressed_error:
        kbundle.verify(recompressed)
    assert [f.problem for f in recompressed_error.value.findings] == [
        "truncated: the stream ends before its trailer"
    ]
    stored_header = tmp_path / "cut.kbundle"
    stored_header.write_bytes(original.path.read_bytes()[:-TRAILER_SIZE])
    with pytest.raises(IntegrityError) as caught:
        kbundle.verify(stored_header)
    assert [f.problem for f in caught.value.findings] == [
        "truncated: the stream ends before its trailer"
    ]
