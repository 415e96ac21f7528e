"""The container: round trips, every byte flip and truncation caught, hostile archives refused.

These run on bundles of plain files (no Keras needed: the container does not care what the
model bytes are) so that exhaustive sweeps stay fast; tests/test_roundtrip.py covers models.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from pathlib import Path
from typing import Any

import pytest
import zstandard
from bundle_factory import Entry, assemble, digest, forge, manifest_for, real_manifest, tar_entry
from conftest import assert_clean_failure, run_cli

import kbundle
from kbundle.container import limits, reader, rewrite, writer, zstdframes
from kbundle.container.manifest import (
    FORMAT_VERSION,
    Manifest,
    Member,
    ModelInfo,
    serialize_manifest,
)
from kbundle.container.reader import scan_bundle
from kbundle.container.writer import PayloadFile, write_bundle
from kbundle.env.capture import capture_environment
from kbundle.errors import (
    BundleFormatError,
    IntegrityError,
    KbundleError,
    LimitExceededError,
    NotABundleError,
    UnsupportedFormatVersionError,
)


def _manifest_bytes(payload: list[PayloadFile], digests: dict[str, str]) -> bytes:
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        generator="kbundle test",
        created="2026-01-01T00:00:00Z",
        model=ModelInfo(format="savedmodel", path="model/saved_model"),
        members=[
            Member(path=p.path, type="dir")
            if p.source is None
            else Member(path=p.path, size=p.size, digest=digests[p.path])
            for p in payload
        ],
        environment=capture_environment(),
    )
    return serialize_manifest(manifest)


@pytest.fixture
def payload_files(tmp_path: Path) -> list[PayloadFile]:
    src = tmp_path / "src"
    src.mkdir()
    (src / "saved_model.pb").write_bytes(os.urandom(3000))
    (src / "variables.data").write_bytes(os.urandom(7_000) + bytes(5_000))
    (src / "empty").write_bytes(b"")
    return [
        PayloadFile("model/saved_model", None),
        PayloadFile("model/saved_model/saved_model.pb", src / "saved_model.pb", 3000),
        PayloadFile("model/saved_model/variables", None),
        PayloadFile("model/saved_model/variables/variables.data", src / "variables.data", 12_000),
        PayloadFile("model/saved_model/assets", None),
        PayloadFile("model/saved_model/assets/empty", src / "empty", 0),
    ]


def _write(path: Path, payload: list[PayloadFile], level: int | None) -> bytes:
    with path.open("w+b") as handle:
        return write_bundle(
            handle,
            payload,
            lambda d: _manifest_bytes(payload, dict(d)),
            level=level,
            threads=0,
            mtime=0,
        )


@pytest.fixture(params=[3, None], ids=["zstd3", "stored"])
def bundle(
    request: pytest.FixtureRequest, tmp_path: Path, payload_files: list[PayloadFile]
) -> Path:
    path = tmp_path / f"b-{request.param}.kbundle"
    _write(path, payload_files, request.param)
    return path


# ---------------------------------------------------------------------------------------------
# Round trips


def test_round_trip_extracts_identical_files(
    bundle: Path, payload_files: list[PayloadFile], tmp_path: Path
) -> None:
    result = kbundle.unpack(bundle, tmp_path / "out")
    assert result.report.findings == []
    for item in payload_files:
        target = tmp_path / "out" / item.path
        if item.source is None:
            assert target.is_dir()
        else:
            assert target.read_bytes() == item.source.read_bytes()
            assert target.stat().st_mode & 0o777 == 0o644 & ~_umask()
    assert (tmp_path / "out" / "kbundle.json").read_bytes() == kbundle.inspect(
        bundle
    ).manifest_bytes


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_bundle_opens_with_standard_tools(bundle: Path, tmp_path: Path) -> None:
    import subprocess

    out = tmp_path / "tar-out"
    out.mkdir()
    subprocess.run(["tar", "--zstd", "-xf", str(bundle), "-C", str(out)], check=True)
    assert json.loads((out / "kbundle.json").read_bytes())["format_version"] == FORMAT_VERSION
    subprocess.run(["zstd", "-q", "-t", str(bundle)], check=True)
    raw = (
        zstandard.ZstdDecompressor()
        .stream_reader(io.BytesIO(bundle.read_bytes()), read_across_frames=True)
        .read()
    )
    with tarfile.open(fileobj=io.BytesIO(raw)) as archive_file:
        assert archive_file.getnames()[0] == "kbundle.json"


def test_digest_does_not_depend_on_compression(
    tmp_path: Path, payload_files: list[PayloadFile], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    stored, fast = tmp_path / "s.kbundle", tmp_path / "f.kbundle"
    assert _write(stored, payload_files, None) == _write(fast, payload_files, 19)
    assert kbundle.verify(stored).head.digest == kbundle.verify(fast).head.digest
    assert stored.read_bytes() != fast.read_bytes()


def test_expect_pins_the_digest(bundle: Path) -> None:
    good = kbundle.inspect(bundle).digest
    assert kbundle.verify(bundle, expect=good).head.digest == good
    with pytest.raises(IntegrityError) as caught:
        kbundle.verify(bundle, expect="sha256:" + "0" * 64)
    assert caught.value.findings[0].problem == "bundle digest differs from --expect"
    assert caught.value.findings[0].actual == good


# ---------------------------------------------------------------------------------------------
# Corruption: every byte flip, truncation, appended garbage


def _flip(data: bytes, offset: int) -> bytes:
    changed = bytearray(data)
    changed[offset] ^= 0x5A
    return bytes(changed)


def _verify_bytes(tmp_path: Path, data: bytes) -> KbundleError | None:
    path = tmp_path / "probe.kbundle"
    path.write_bytes(data)
    try:
        kbundle.verify(path)
    except KbundleError as exc:
        return exc
    return None


def _content_ranges(data: bytes, payload: list[PayloadFile]) -> list[range]:
    ranges = []
    for item in payload:
        if item.source is not None and item.size:
            start = data.index(item.source.read_bytes())
            ranges.append(range(start, start + item.size))
    return ranges


def test_every_byte_flip_is_caught(
    bundle: Path, tmp_path: Path, payload_files: list[PayloadFile]
) -> None:
    """No flipped byte verifies. In the stored bundle every byte outside member contents is
    flipped (headers, padding, frames, trailer), and every 61st inside them and inside the
    manifest (a flip in a member is a digest mismatch, see the next test; in the manifest, a
    mismatch of its frame's checksum, whichever byte it is); in the compressed one every 5th
    byte."""
    data = bundle.read_bytes()
    if "None" in bundle.name:
        manifest = kbundle.inspect(bundle).manifest_bytes
        start = data.index(manifest)
        contents = [*_content_ranges(data, payload_files), range(start, start + len(manifest))]
        offsets = [o for o in range(len(data)) if not any(o in r for r in contents) or o % 61 == 0]
    else:
        offsets = list(range(0, len(data), 5))
    missed = [offset for offset in offsets if _verify_bytes(tmp_path, _flip(data, offset)) is None]
    assert missed == []


def test_flip_in_member_names_the_member(tmp_path: Path, payload_files: list[PayloadFile]) -> None:
    path = tmp_path / "stored.kbundle"
    _write(path, payload_files, None)
    data = path.read_bytes()
    for item in payload_files:
        if item.source is None or item.size == 0:
            continue
        content = item.source.read_bytes()
        offset = data.index(content[:64]) + item.size // 2
        error = _verify_bytes(tmp_path, _flip(data, offset))
        assert isinstance(error, IntegrityError)
        assert [f.location for f in error.findings] == [item.path]
        assert error.findings[0].problem == "digest mismatch (content corrupted or altered)"
        assert error.findings[0].expected == digest(content)


def test_flip_in_manifest_is_caught_by_frame_checksum(bundle: Path, tmp_path: Path) -> None:
    data = bundle.read_bytes()
    offset = data.index(b'"generator"') + 3
    error = _verify_bytes(tmp_path, _flip(data, offset))
    assert isinstance(error, IntegrityError)
    assert "checksum" in str(error).lower() or "corrupt" in str(error).lower()


def test_every_truncation_is_caught(bundle: Path, tmp_path: Path) -> None:
    data = bundle.read_bytes()
    offsets = sorted(
        {
            *range(1, len(data), max(1, len(data) // 97)),
            len(data) - 1,
            len(data) - 4,
            len(data) - 5,
            13,
        }
    )
    for offset in offsets:
        error = _verify_bytes(tmp_path, data[:offset])
        assert isinstance(error, (IntegrityError, NotABundleError)), (offset, error)


@pytest.mark.parametrize(
    "garbage",
    [b"x", b"garbage!", os.urandom(4096), b"\0" * 7, zstdframes.raw_frame(b"evil data")],
    ids=["1 byte", "text", "random", "zeros", "zstd frame"],
)
def test_appended_garbage_is_caught(bundle: Path, tmp_path: Path, garbage: bytes) -> None:
    error = _verify_bytes(tmp_path, bundle.read_bytes() + garbage)
    assert isinstance(error, IntegrityError), error


def test_cli_corruption_exit_code_and_one_line(bundle: Path, tmp_path: Path) -> None:
    data = bundle.read_bytes()
    broken = tmp_path / "broken.kbundle"
    broken.write_bytes(data[: len(data) // 2])
    result = run_cli("verify", broken)
    assert_clean_failure(result, 1)
    assert result.stderr.startswith(f"kbundle: error: {broken} failed verification: ")
    report = json.loads(run_cli("verify", broken, "--json").stdout)
    assert report["ok"] is False and report["exit_code"] == 1 and report["findings"]


def test_a_truncated_bundle_is_blamed_on_the_file_not_on_a_member(
    bundle: Path, tmp_path: Path
) -> None:
    data = bundle.read_bytes()
    broken = tmp_path / "cut.kbundle"
    broken.write_bytes(data[:100])  # inside the manifest, the first member
    early = run_cli("verify", broken)
    assert_clean_failure(early, 1)
    assert early.stderr == (
        f"kbundle: error: {broken} is truncated: it ends inside the manifest, its first member; "
        "the file was cut short; fetch an intact copy\n"
    )
    broken.write_bytes(data[: len(data) - 100])  # past every member's header
    late = run_cli("verify", broken)
    assert_clean_failure(late, 1)
    assert late.stderr.startswith(
        f"kbundle: error: {broken} failed verification: (bundle file): truncated: the stream "
        f"ends before its trailer (found {len(data) - 100} bytes read)"
    )
    assert "kbundle.json" not in early.stderr + late.stderr


# ---------------------------------------------------------------------------------------------
# Hostile archives (THREATS rows 3-8, 14)


@pytest.fixture
def base_manifest(tmp_path: Path, payload_files: list[PayloadFile]) -> dict[str, Any]:
    path = tmp_path / "base.kbundle"
    _write(path, payload_files, 3)
    return real_manifest(path)


MODEL = Entry("model/saved_model/saved_model.pb", b"model bytes")


def _forged_findings(
    tmp_path: Path, manifest: dict[str, Any] | bytes, entries: list[Entry], **kwargs: Any
) -> list[tuple[str, str]]:
    path = forge(tmp_path / "forged.kbundle", manifest, entries, **kwargs)
    with pytest.raises(IntegrityError) as caught:
        kbundle.verify(path)
    return [(f.location, f.problem) for f in caught.value.findings]


def _honest(base: dict[str, Any], entries: list[Entry]) -> dict[str, Any]:
    """``base`` listing ``entries``, with MODEL as the model: one file, so the format is a
    one-file format (the reader refuses a savedmodel whose path is a file)."""
    model = {**base["model"], "format": "h5", "path": MODEL.name}
    return manifest_for(entries, {**base, "model": model})


def test_forged_honest_bundle_verifies(tmp_path: Path, base_manifest: dict[str, Any]) -> None:
    entries = [Entry("model/saved_model", type=tarfile.DIRTYPE), MODEL]
    path = forge(tmp_path / "ok.kbundle", _honest(base_manifest, entries), entries)
    assert kbundle.verify(path).files_checked == 1


def test_extra_member_refused(tmp_path: Path, base_manifest: dict[str, Any]) -> None:
    manifest = _honest(base_manifest, [MODEL])
    findings = _forged_findings(tmp_path, manifest, [MODEL, Entry("code/extra.py", b"import os")])
    assert findings == [("code/extra.py", "member is not listed in the manifest")]


def test_missing_member_refused(tmp_path: Path, base_manifest: dict[str, Any]) -> None:
    second = Entry("model/saved_model/variables.data", b"weights")
    manifest = _honest(base_manifest, [MODEL, second])
    findings = _forged_findings(tmp_path, manifest, [MODEL])
    assert findings == [
        ("model/saved_model/variables.data", "member listed in the manifest is missing")
    ]


@pytest.mark.parametrize(
    "second",
    [
        "model/saved_model/saved_model.pb",
        "model/saved_model/SAVED_MODEL.pb",
        "model/saved_model/saved_model.pb".replace("a", "a", 1),
    ],
    ids=["exact", "case-folded", "same"],
)
def test_duplicate_member_refused(
    tmp_path: Path, base_manifest: dict[str, Any], second: str
) -> None:
    manifest = _honest(base_manifest, [MODEL])
    findings = _forged_findings(tmp_path, manifest, [MODEL, Entry(second, b"evil twin")])
    assert len(findings) == 1
    assert findings[0][0] == second
    assert findings[0][1].startswith("duplicate member")


def test_nfc_duplicate_in_manifest_refused(tmp_path: Path, base_manifest: dict[str, Any]) -> None:
    composed, decomposed = "model/caf\u00e9.bin", "model/cafe\u0301.bin"
    manifest = _honest(base_manifest, [MODEL, Entry(composed, b"a")])
    manifest["members"].append(
        {"path": decomposed, "type": "file", "size": 1, "digest": digest(b"b")}
    )
    with pytest.raises(BundleFormatError, match="not NFC-normalised"):
        kbundle.verify(forge(tmp_path / "nfc.kbundle", manifest, [MODEL]))


HOSTILE_NAMES = [
    "../evil",
    "model/../../evil",
    "/etc/passwd",
    "C:/evil",
    "model\\evil",
    "",
    "model//x",
    "model/./x",
    "evil/top",
    "model/con",
    "model/x ",
    "model/new\nline",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_tar_name_refused_not_stripped(
    tmp_path: Path, base_manifest: dict[str, Any], name: str
) -> None:
    manifest = _honest(base_manifest, [MODEL])
    try:
        findings = _forged_findings(tmp_path, manifest, [MODEL, Entry(name, b"x")])
    except ValueError:  # tarfile itself cannot encode a NUL in a name; the manifest test covers it
        return
    assert len(findings) == 1 and findings[0][1].startswith("unsafe member name refused: "), (
        findings
    )
    assert not (tmp_path / "evil").exists()


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_manifest_name_refused(
    tmp_path: Path, base_manifest: dict[str, Any], name: str
) -> None:
    manifest = _honest(base_manifest, [MODEL])
    manifest["members"].append({"path": name, "type": "file", "size": 1, "digest": digest(b"x")})
    with pytest.raises(BundleFormatError, match=r"manifest breaks \d+ format rule"):
        kbundle.verify(forge(tmp_path / "m.kbundle", manifest, [MODEL]))


@pytest.mark.parametrize(
    ("kind", "label"),
    [
        (tarfile.SYMTYPE, "symbolic link"),
        (tarfile.LNKTYPE, "hard link"),
        (tarfile.CHRTYPE, "character device"),
        (tarfile.FIFOTYPE, "FIFO"),
        (tarfile.GNUTYPE_SPARSE, "GNU sparse file"),
    ],
)
def test_link_and_device_members_refused(
    tmp_path: Path, base_manifest: dict[str, Any], kind: bytes, label: str
) -> None:
    manifest = _honest(base_manifest, [MODEL])
    manifest["members"].append(
        {"path": "model/link", "type": "file", "size": 0, "digest": digest(b"")}
    )
    entries = [MODEL, Entry("model/link", type=kind, linkname="/etc/passwd")]
    findings = _forged_findings(tmp_path, manifest, entries)
    assert (
        "model/link",
        f"{label} members are not allowed; only regular files and directories",
    ) in findings
    destination = tmp_path / "dest"
    with pytest.raises(IntegrityError):
        kbundle.unpack(forge(tmp_path / "l.kbundle", manifest, entries), destination)
    assert not destination.exists()
    assert not list(tmp_path.glob(".dest.*"))


def test_weak_hash_algorithm_refused(tmp_path: Path, base_manifest: dict[str, Any]) -> None:
    manifest = _honest(base_manifest, [MODEL])
    manifest["members"][0]["digest"] = "md5:" + "0" * 32
    with pytest.raises(
        BundleFormatError,
        match=r"members\[0\]\.digest: must be 'sha256:' and 64 lowercase hex digits: 'md5:0+'",
    ):
        kbundle.verify(forge(tmp_path / "md5.kbundle", manifest, [MODEL]))


def test_unknown_major_version_refused(tmp_path: Path, base_manifest: dict[str, Any]) -> None:
    manifest = {**_honest(base_manifest, [MODEL]), "format_version": "2.0"}
    with pytest.raises(
        UnsupportedFormatVersionError,
        match=r"bundle format 2\.0 is not readable by this kbundle \(reads 1\.x\)",
    ):
        kbundle.verify(forge(tmp_path / "v2.kbundle", manifest, [MODEL]))


def test_manifest_must_come_first(tmp_path: Path, base_manifest: dict[str, Any]) -> None:
    """kbundle's frame layout, but the first tar member is not the manifest."""
    path = tmp_path / "late.kbundle"
    manifest = json.dumps(_honest(base_manifest, [MODEL])).encode()
    rest = zstandard.ZstdCompressor(write_checksum=True).compress(
        tar_entry(Entry("kbundle.json", manifest)) + b"\0" * 1024
    )
    path.write_bytes(zstdframes.raw_frame(tar_entry(MODEL)) + rest)
    with pytest.raises(
        NotABundleError,
        match=re.escape(
            "its first member is 'model/saved_model/saved_model.pb', not 'kbundle.json'"
        ),
    ):
        kbundle.verify(path)


def test_tar_zst_from_another_tool_is_refused(
    tmp_path: Path, base_manifest: dict[str, Any]
) -> None:
    path = tmp_path / "other.tar.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(tar_entry(MODEL) + b"\0" * 1024))
    with pytest.raises(
        IntegrityError,
        match="the first frame is not single-segment with a content size and checksum",
    ):
        kbundle.verify(path)


def test_oversized_manifest_refused_before_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, base_manifest: dict[str, Any]
) -> None:
    monkeypatch.setattr(reader, "MAX_MANIFEST_BYTES", 4096)
    manifest = _honest(base_manifest, [MODEL])
    manifest["padding"] = "x" * 5000
    with pytest.raises(
        LimitExceededError, match=r"manifest is \d+ bytes, more than the limit of 4096"
    ):
        kbundle.inspect(forge(tmp_path / "big.kbundle", manifest, [MODEL]))


def test_deeply_nested_manifest_refused(tmp_path: Path) -> None:
    nested = b'{"format_version": "1.0", "x": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    with pytest.raises(LimitExceededError, match="nested deeper than 64 levels"):
        kbundle.inspect(forge(tmp_path / "deep.kbundle", nested, [MODEL]))


def test_duplicate_json_keys_refused(tmp_path: Path, base_manifest: dict[str, Any]) -> None:
    text = json.dumps(_honest(base_manifest, [MODEL]))
    doubled = text[:-1] + ', "members": []}'
    with pytest.raises(BundleFormatError, match="duplicate key 'members'"):
        kbundle.inspect(forge(tmp_path / "dup.kbundle", doubled.encode(), [MODEL]))


def test_size_bomb_stops_at_the_declared_total(
    tmp_path: Path, base_manifest: dict[str, Any]
) -> None:
    """A member declared small in the manifest whose tar header claims 256 MiB of zeros (a
    ~10 KB compressed frame): reading stops at the manifest's total, not after 256 MiB."""
    small = Entry("model/saved_model/saved_model.pb", b"tiny")
    manifest = _honest(base_manifest, [small])
    bomb_size = 256 * 1024 * 1024
    header = tar_entry(Entry(small.name, b"", size=bomb_size))
    compressor = zstandard.ZstdCompressor(level=3, write_checksum=True)
    body = compressor.compressobj()
    frame = body.compress(header)
    zeros = bytes(1 << 20)
    for _ in range(bomb_size >> 20):
        frame += body.compress(zeros)
    frame += body.compress(b"\0" * 1024) + body.flush()
    path = tmp_path / "bomb.kbundle"
    path.write_bytes(assemble(manifest, frame))
    assert path.stat().st_size < 100_000
    with path.open("rb") as source:
        report = scan_bundle(source, str(path))
    problems = [f.problem for f in report.findings]
    assert "size differs from the manifest" in problems
    assert any(
        p.startswith("the archive holds more data than its manifest declares") for p in problems
    )


def test_zstd_window_bomb_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, base_manifest: dict[str, Any]
) -> None:
    monkeypatch.setattr(zstdframes, "MAX_WINDOW_SIZE", 1 << 20)
    # No content size in the header, so the frame declares its window (not single-segment).
    params = zstandard.ZstdCompressionParameters.from_level(
        19, window_log=24, write_content_size=0, write_checksum=1
    )
    payload = tar_entry(MODEL) + b"\0" * 1024
    stream = zstandard.ZstdCompressor(compression_params=params).compressobj()  # size unknown
    frame = stream.compress(payload) + stream.flush()
    path = tmp_path / "window.kbundle"
    path.write_bytes(assemble(_honest(base_manifest, [MODEL]), frame))
    with pytest.raises(
        LimitExceededError,
        match="zstd frame 2 asks for a 16777216-byte window, more than the limit of 1048576",
    ):
        kbundle.verify(path)


def test_restreamed_payload_keeps_the_pax_header_of_its_first_member(
    tmp_path: Path, base_manifest: dict[str, Any]
) -> None:
    """rewrite_header re-streams a payload it cannot splice from the first payload entry's
    first header: for a long name that is its pax header, not the ustar header after it
    (which holds only the first 100 bytes of the name)."""
    long_model = Entry("model/" + "n" * 120 + ".h5", b"model bytes")
    manifest = {
        **manifest_for([long_model], base_manifest),
        "model": {**base_manifest["model"], "format": "h5", "path": long_model.name},
    }
    stored = forge(tmp_path / "stored.kbundle", manifest, [long_model]).read_bytes()
    with (tmp_path / "stored.kbundle").open("rb") as handle:
        header_size = writer.header_region_size(handle)
    assert header_size is not None
    content = zstandard.ZstdDecompressor().decompress(stored[:header_size])
    other_layout = tmp_path / "other-layout.kbundle"
    other_layout.write_bytes(
        zstandard.ZstdCompressor(level=9, write_checksum=True).compress(content)
        + stored[header_size:]
    )
    head = kbundle.inspect(other_layout)

    with (tmp_path / "out.kbundle").open("wb") as out:
        copied = rewrite.rewrite_header(
            lambda: other_layout.open("rb"), str(other_layout), out, head, None, level=3
        )

    assert not copied
    assert kbundle.verify(tmp_path / "out.kbundle").files_checked == 1


def test_limits_are_named_with_reasons() -> None:
    source = Path(limits.__file__).read_text()
    for name in limits.__all__:
        value_line = next(line for line in source.splitlines() if line.startswith(f"{name} ="))
        previous = source.splitlines()[source.splitlines().index(value_line) - 1]
        assert previous.startswith("#"), f"{name} has no comment giving its reason"


def test_not_a_bundle_inputs(tmp_path: Path, saved_keras_file: Path) -> None:
    cases = {
        saved_keras_file: "is not a kbundle bundle: it is a zip file (a .keras model?); make a bundle with 'kbundle pack', or diagnose the model with 'kbundle doctor'",
        tmp_path
        / "empty.kbundle": "is not a kbundle bundle: it is empty; pass a file written by 'kbundle pack'",
        tmp_path / "nothere.kbundle": "does not exist; check the path",
        tmp_path: "is a directory, not a bundle; pass a .kbundle file",
    }
    (tmp_path / "empty.kbundle").write_bytes(b"")
    for path, message in cases.items():
        result = run_cli("verify", path)
        assert_clean_failure(result, 2)
        assert result.stderr.strip() == f"kbundle: error: {path} {message}"
