"""Every limit a reader enforces, patched small: the bundle just inside it is read, the one just
past it is refused with the error that names the limit.

Each constant is patched where it is used (the module that imported it), because that is the
name the check reads. Two limits are already tested this way in tests/test_archive.py and
are not repeated here: ``MAX_MANIFEST_BYTES`` as the archive reader applies it to the tar
header (``test_oversized_manifest_refused_before_reading``) and ``MAX_WINDOW_SIZE`` as the
frame tracker applies it (``test_zstd_window_bomb_refused``).
"""

from __future__ import annotations

import json
import random
import tarfile
from pathlib import Path

import pytest
import zstandard
from bundle_factory import Entry, assemble, forge, manifest_for, tar_entry
from hostile import (
    MODEL_PATH,
    base_manifest,
    empty_trusted_keys,
    flip,
    model_bundle,
    stored_bundle,
    verify_error,
)

import kbundle
from kbundle.container import limits, manifest, names, tarstream
from kbundle.container import reader as reader_module
from kbundle.container import signature_member as signing
from kbundle.container.tarstream import END_OF_ARCHIVE
from kbundle.errors import (
    BundleFormatError,
    IntegrityError,
    LimitExceededError,
    SignatureError,
    UsageError,
)
from kbundle.pipelines.sign import sign_bundle
from kbundle.signing import keys

MODEL = Entry(MODEL_PATH, b"model bytes")


@pytest.fixture
def trusted_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return empty_trusted_keys(tmp_path, monkeypatch)


def _manifest_size(bundle: Path) -> int:
    """The manifest's length as forge wrote it (without reading it through kbundle)."""
    with bundle.open("rb") as handle:
        raw = zstandard.ZstdDecompressor().stream_reader(handle, read_across_frames=True).read(512)
    return int(raw[124:136].strip(b"\0 "), 8)


def test_every_limit_has_a_test_here() -> None:
    source = Path(__file__).read_text()
    untested = [name for name in limits.__all__ if f'"{name}"' not in source]
    assert untested == []


def test_max_manifest_bytes_in_the_parser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The parser's own check, behind the archive reader's (which reads the tar header)."""
    bundle = model_bundle(tmp_path / "b.kbundle", {MODEL_PATH: b"x"})
    size = _manifest_size(bundle)
    monkeypatch.setattr(manifest, "MAX_MANIFEST_BYTES", size)
    assert kbundle.inspect(bundle).manifest.members[0].path == MODEL_PATH
    monkeypatch.setattr(manifest, "MAX_MANIFEST_BYTES", size - 1)
    with pytest.raises(LimitExceededError) as caught:
        kbundle.inspect(bundle)
    assert caught.value.message == f"manifest is {size} bytes, more than the limit of {size - 1}"


def test_max_json_depth(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # {"members": [{...}]} is three levels deep; environment.tensorflow.build_info four.
    bundle = model_bundle(tmp_path / "b.kbundle", {MODEL_PATH: b"x"})
    depth = _nesting(json.loads(kbundle.inspect(bundle).manifest_bytes))
    monkeypatch.setattr(manifest, "MAX_JSON_DEPTH", depth)
    kbundle.inspect(bundle)
    monkeypatch.setattr(manifest, "MAX_JSON_DEPTH", depth - 1)
    with pytest.raises(LimitExceededError) as caught:
        kbundle.inspect(bundle)
    assert caught.value.message == f"manifest JSON is nested deeper than {depth - 1} levels"


def _nesting(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max((_nesting(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_nesting(v) for v in value), default=0)
    return 0


def test_max_members(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manifest, "MAX_MEMBERS", 3)
    three = {MODEL_PATH: b"m", "env/a": b"a", "env/b": b"b"}
    kbundle.verify(model_bundle(tmp_path / "three.kbundle", three))
    with pytest.raises(LimitExceededError) as caught:
        kbundle.inspect(model_bundle(tmp_path / "four.kbundle", {**three, "env/c": b"c"}))
    assert caught.value.message == "manifest lists 4 members, more than the limit of 3"


@pytest.mark.parametrize(
    ("limit", "inside", "outside", "problem"),
    [
        (
            "MAX_MEMBER_NAME_BYTES",
            "model/dir/" + "a" * 14,
            "model/d\u00e9/" + "a" * 15,
            "name longer than 24 bytes",
        ),
        (
            "MAX_NAME_COMPONENT_BYTES",
            "model/" + "b" * 24,
            "model/" + "\u00e9" * 12 + "b",
            "component longer than 24 bytes",
        ),
    ],
)
def test_member_name_limits_count_bytes(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    limit: str,
    inside: str,
    outside: str,
    problem: str,
) -> None:
    """The limits are in UTF-8 bytes, not characters: 'é' counts twice."""
    monkeypatch.setattr(names, limit, 24)
    measured = (
        (lambda name: name)
        if limit == "MAX_MEMBER_NAME_BYTES"
        else (lambda name: name.rsplit("/", 1)[1])
    )
    assert len(measured(inside).encode()) == 24 and len(measured(outside).encode()) == 25
    assert len(measured(outside)) < 25
    kbundle.verify(model_bundle(tmp_path / "in.kbundle", {MODEL_PATH: b"m", inside: b"x"}))
    with pytest.raises(BundleFormatError) as caught:
        kbundle.verify(model_bundle(tmp_path / "out.kbundle", {MODEL_PATH: b"m", outside: b"x"}))
    assert (
        caught.value.message
        == f"the manifest breaks 1 format rule(s): members[1].path: {problem}: {outside!r}"
    )


def test_max_window_size_in_the_decompressor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decompressor's own window limit, behind the frame tracker's header check (which is
    left at its value here, so the frame gets past it)."""
    monkeypatch.setattr(reader_module, "MAX_WINDOW_SIZE", 1 << 20)
    params = zstandard.ZstdCompressionParameters.from_level(
        19, window_log=24, write_content_size=0, write_checksum=1
    )
    stream = zstandard.ZstdCompressor(compression_params=params).compressobj()
    frame = stream.compress(tar_entry(MODEL) + END_OF_ARCHIVE) + stream.flush()
    bundle = tmp_path / "window.kbundle"
    bundle.write_bytes(assemble(manifest_for([MODEL], base_manifest()), frame))
    error = verify_error(bundle)
    assert isinstance(error, IntegrityError)
    assert [(f.location, f.problem) for f in error.findings] == [
        (
            "kbundle.json",
            "compressed stream is corrupt: zstd decompress error: "
            "Frame requires too much memory for decoding",
        ),
        (MODEL_PATH, "not checked: the stream broke before reaching them"),
    ]


@pytest.mark.parametrize(
    "reader", ["archive", "signing"], ids=["archive-reader", "signature-parser"]
)
def test_max_signature_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trusted_dir: Path, reader: str
) -> None:
    """The archive reader checks the member's declared size; the signature parser, which
    also reads signatures from elsewhere, checks the bytes it is given."""
    signature = json.dumps({"version": 1, "signatures": []}).encode()
    manifest = manifest_for([MODEL], base_manifest())
    bundle = forge(tmp_path / "sig.kbundle", manifest, [MODEL], signature=signature)
    monkeypatch.setattr(
        reader_module if reader == "archive" else signing, "MAX_SIGNATURE_BYTES", len(signature) - 1
    )
    message = f"kbundle.sig is {len(signature)} bytes, more than the limit of {len(signature) - 1}"
    error = verify_error(bundle)
    assert isinstance(error, IntegrityError)
    assert error.findings[0].location == "kbundle.sig"
    if reader == "archive":
        assert error.findings[0].problem == message
        with pytest.raises(LimitExceededError) as caught:
            kbundle.inspect(bundle)
        assert caught.value.message == message
    else:
        assert isinstance(error, SignatureError)
        assert message in error.findings[0].problem


def test_max_signatures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trusted_dir: Path) -> None:
    pytest.importorskip("cryptography")
    bundle = model_bundle(tmp_path / "b.kbundle", {MODEL_PATH: b"m"})
    for name in ("one", "two"):
        sign_bundle(bundle, keys.load_signing_key(keys.generate_key(tmp_path / name).private_path))
    monkeypatch.setattr(signing, "MAX_SIGNATURES", 1)
    error = verify_error(bundle)
    assert isinstance(error, SignatureError)
    assert error.findings[0].problem.endswith("signatures: must be a list of 1 to 1 signatures: 2")


def test_max_key_file_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trusted_dir: Path
) -> None:
    pytest.importorskip("cryptography")
    public = keys.generate_key(tmp_path / "release").public_path
    bundle = model_bundle(tmp_path / "b.kbundle", {MODEL_PATH: b"m"})
    monkeypatch.setattr(keys, "_MAX_KEY_FILE_BYTES", public.stat().st_size - 1)
    with pytest.raises(UsageError) as caught:
        kbundle.verify(bundle, trusted_keys=[public])
    assert (
        caught.value.message
        == f"public key {public} is larger than {public.stat().st_size - 1} bytes; it is not a key"
    )


def test_max_archive_overhead_per_member(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Data hidden in an unlisted member counts against the total: with the slack for
    headers and a signature patched small, it is cut off where the manifest's sizes end."""
    hidden = Entry("model/hidden.bin", random.Random(7).randbytes(64 * 1024))
    bundle = forge(
        tmp_path / "hidden.kbundle", manifest_for([MODEL], base_manifest()), [MODEL, hidden]
    )
    unpatched = verify_error(bundle)
    assert unpatched is not None and [f.problem for f in unpatched.findings] == [
        "member is not listed in the manifest"
    ]

    monkeypatch.setattr(reader_module, "MAX_ARCHIVE_OVERHEAD_PER_MEMBER", 1024)
    monkeypatch.setattr(reader_module, "MAX_SIGNATURE_BYTES", 0)
    error = verify_error(bundle)
    assert error is not None
    problems = [f.problem for f in error.findings]
    assert problems[0] == "member is not listed in the manifest"
    assert problems[1].startswith("the archive holds more data than its manifest declares (over ")


def test_max_pax_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    long_name = "model/" + "n" * 120  # longer than the ustar name field: a pax header carries it
    bundle = model_bundle(tmp_path / "pax.kbundle", {MODEL_PATH: b"m", long_name: b"x"})
    kbundle.verify(bundle)
    monkeypatch.setattr(tarstream, "_MAX_PAX_HEADER", 100)
    error = verify_error(bundle)
    assert error is not None
    problem = error.findings[0].problem
    assert problem.startswith("tar pax header at byte ") and problem.endswith(
        " bytes, more than the limit of 100"
    )
    assert isinstance(error, IntegrityError)


def test_chunk_size_does_not_change_what_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Streaming granularity is not a limit on input: with 7-byte chunks every member still
    unpacks byte for byte, and a flipped byte is still caught."""
    rng = random.Random(8)
    files = {MODEL_PATH: rng.randbytes(3000), "model/assets/vocab.txt": b"a\nb\n" * 100}
    stored = stored_bundle(tmp_path / "stored.kbundle", files)
    entries = [
        Entry("model/assets", type=tarfile.DIRTYPE),
        *(Entry(n, d) for n, d in files.items()),
    ]
    compressed = forge(
        tmp_path / "compressed.kbundle", manifest_for(entries, base_manifest()), entries
    )
    monkeypatch.setattr(reader_module, "CHUNK_SIZE", 7)
    for bundle in (stored, compressed):
        out = kbundle.unpack(bundle, tmp_path / f"{bundle.stem}-out").path
        assert {name: (out / name).read_bytes() for name in files} == files
    data = stored.read_bytes()
    stored.write_bytes(flip(data, data.index(files[MODEL_PATH]) + 1500))
    assert isinstance(verify_error(stored), IntegrityError)
