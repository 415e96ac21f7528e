"""THREATS.md rows 1, 3-8 and 14: hostile containers, refused before anything is trusted.

tests/test_archive.py sweeps these through ``kbundle.verify``; the tests here take the other
angles a user meets: the CLI's exit codes and JSON findings, ``unpack`` leaving nothing at
the destination or anywhere else, names smuggled in pax records, and bombs built from raw
zstd blocks. No Keras: the container does not care what the model bytes are.
"""

from __future__ import annotations

import io
import json
import os
import random
import tarfile
from pathlib import Path

import pytest
import zstandard
from bundle_factory import Entry, assemble, digest, forge, manifest_for, tar_entry
from conftest import assert_clean_failure, run_cli
from hostile import MODEL_PATH, base_manifest, flip, pax_entry, stored_bundle, tree

import kbundle
from kbundle.container import reader
from kbundle.container.limits import MAX_MANIFEST_BYTES
from kbundle.container.tarstream import END_OF_ARCHIVE, member_header
from kbundle.container.zstdframes import ZSTD_MAGIC, raw_frame
from kbundle.errors import IntegrityError, LimitExceededError

MODEL = Entry(MODEL_PATH, b"PK model bytes")


def _unpack_refused(bundle: Path, destination: Path) -> IntegrityError:
    """Unpack must raise IntegrityError and leave neither the destination nor a staging
    directory behind."""
    before = tree(destination.parent)
    with pytest.raises(IntegrityError) as caught:
        kbundle.unpack(bundle, destination)
    assert not destination.exists()
    assert tree(destination.parent) == before
    return caught.value


# --------------------------------------------------------------------------------------------
# Row 1: a flipped byte in any member, a truncated file, garbage appended


def test_row01_byte_flip_truncation_garbage(tmp_path: Path) -> None:
    rng = random.Random(1)
    files = {
        MODEL_PATH: rng.randbytes(5000),
        "model/assets/vocab.txt": rng.randbytes(700),
        "env/requirements.txt": rng.randbytes(90),
    }
    original = stored_bundle(tmp_path / "good.kbundle", files).read_bytes()
    damaged = tmp_path / "damaged.kbundle"

    # Each member in turn: the CLI names it with the digest it should have and the one it has.
    for name, content in files.items():
        offset = rng.randrange(len(content))
        damaged.write_bytes(flip(original, original.index(content) + offset))
        result = run_cli("verify", damaged, "--json")
        assert result.returncode == 1, result.stderr
        report = json.loads(result.stdout)
        assert report["findings"] == [
            {
                "location": name,
                "problem": "digest mismatch (content corrupted or altered)",
                "severity": "error",
                "expected": digest(content),
                "actual": digest(flip(content, offset)),
                "fix": "the bundle is corrupt or was altered; fetch an intact copy",
            }
        ]

    # Truncated anywhere after the zstd magic (random points, and just before the trailer and
    # its last byte): unpack refuses and leaves nothing.
    for cut in sorted(
        {*rng.sample(range(5, len(original)), 3), len(original) - 48, len(original) - 1}
    ):
        damaged.write_bytes(original[:cut])
        result = run_cli("unpack", damaged, "-d", tmp_path / "out", "--no-load")
        assert_clean_failure(result, 1)
        assert result.stderr.startswith(f"kbundle: error: {damaged} failed verification: "), cut
        assert not (tmp_path / "out").exists()
        assert not list(tmp_path.glob(".out.*"))

    for garbage in (b"\0", b"kbundle", raw_frame(b"evil")):
        damaged.write_bytes(original + garbage)
        result = run_cli("verify", damaged)
        assert_clean_failure(result, 1)
        assert f"unexpected data at byte {len(original)} after the trailer frame" in result.stderr


# --------------------------------------------------------------------------------------------
# Row 3: extra and missing members


def test_row03_extra_and_missing_member_reported_together(tmp_path: Path) -> None:
    weights = Entry("model/weights.bin", b"weights")
    manifest = manifest_for([MODEL, weights], base_manifest())
    bundle = forge(
        tmp_path / "b.kbundle",
        manifest,
        [MODEL, Entry("code/extra.py", b"import os\nos.system('evil')\n")],
    )

    result = run_cli("unpack", bundle, "-d", tmp_path / "out", "--no-load", "--json")

    assert result.returncode == 1, result.stderr
    findings = [(f["location"], f["problem"]) for f in json.loads(result.stdout)["findings"]]
    assert findings == [
        ("code/extra.py", "member is not listed in the manifest"),
        ("model/weights.bin", "member listed in the manifest is missing"),
    ]
    assert sorted(tree(tmp_path)) == ["b.kbundle"]


# --------------------------------------------------------------------------------------------
# Row 4: duplicate names, also after Unicode normalisation and case folding


@pytest.mark.parametrize(
    ("honest", "twin", "problem"),
    [
        (
            MODEL_PATH,
            MODEL_PATH,
            "duplicate member (same name as 'model/model.keras' after case folding)",
        ),
        (
            MODEL_PATH,
            "model/MODEL.keras",
            "duplicate member (same name as 'model/model.keras' after case folding)",
        ),
        (
            "model/caf\u00e9.keras",
            "model/cafe\u0301.keras",
            "unsafe member name refused: name is not NFC-normalised",
        ),
    ],
    ids=["exact", "case-folded", "nfd-twin"],
)
def test_row04_duplicate_member_never_lets_the_last_one_win(
    tmp_path: Path, honest: str, twin: str, problem: str
) -> None:
    first = Entry(honest, b"the model that was packed")
    manifest = manifest_for([first], base_manifest(model_path=honest))
    bundle = forge(tmp_path / "dup.kbundle", manifest, [first, Entry(twin, b"the evil twin")])

    # The threat is real: Python's own tar reader lets the last member with a name win.
    raw = _tar_stream(bundle)
    with tarfile.open(fileobj=io.BytesIO(raw)) as archive_file:
        assert archive_file.extractfile(archive_file.getmember(twin)).read() == b"the evil twin"  # type: ignore[union-attr]

    error = _unpack_refused(bundle, tmp_path / "out")
    assert [(f.location, f.problem) for f in error.findings] == [(twin, problem)]


def _tar_stream(bundle: Path) -> bytes:
    reader = zstandard.ZstdDecompressor().stream_reader(
        io.BytesIO(bundle.read_bytes()), read_across_frames=True
    )
    return reader.read()


# --------------------------------------------------------------------------------------------
# Row 5: traversal names, also smuggled in a pax record behind a harmless ustar name


TRAVERSAL = {
    "dotdot": (
        b"model/../../evil",
        "component '..' is not allowed (names must be normalised and relative)",
    ),
    "leading-dotdot": (
        b"../evil",
        "component '..' is not allowed (names must be normalised and relative)",
    ),
    "absolute": (b"/tmp/evil", "absolute name"),
    "drive": (b"C:/evil", "colon in name (drive letter or alternate stream)"),
    "backslash": (b"model\\..\\..\\evil", "backslash in name"),
    "nul": (b"model/evil\0.keras", "control character (NUL, newline, ...) in name"),
    "empty": (b"", "empty name"),
    "not-normalised": (
        b"model/./evil",
        "component '.' is not allowed (names must be normalised and relative)",
    ),
    "double-slash": (
        b"model//evil",
        "component '' is not allowed (names must be normalised and relative)",
    ),
    "nfd": ("model/cafe\u0301".encode(), "name is not NFC-normalised"),
}


@pytest.mark.parametrize("case", sorted(TRAVERSAL))
def test_row05_traversal_names_refused_never_stripped(tmp_path: Path, case: str) -> None:
    name, problem = TRAVERSAL[case]
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    payload = tar_entry(MODEL) + pax_entry(name, b"evil payload") + END_OF_ARCHIVE
    frames = zstandard.ZstdCompressor(write_checksum=True).compress(payload)
    bundle = sandbox / "b.kbundle"
    bundle.write_bytes(assemble(manifest_for([MODEL], base_manifest()), frames))

    (sandbox / "dest").mkdir()
    error = _unpack_refused(bundle, sandbox / "dest" / "out")

    location = name.decode() or "(empty name)"
    assert [(f.location, f.problem) for f in error.findings] == [
        (location, f"unsafe member name refused: {problem}")
    ]
    assert tree(tmp_path) == {
        "sandbox": "dir",
        "sandbox/b.kbundle": f"file {bundle.stat().st_size} bytes",
        "sandbox/dest": "dir",
    }


# --------------------------------------------------------------------------------------------
# Row 6: links, devices, FIFOs, set-user-ID bits


@pytest.mark.parametrize(
    ("kind", "label"),
    [
        (tarfile.SYMTYPE, "symbolic link"),
        (tarfile.LNKTYPE, "hard link"),
        (tarfile.BLKTYPE, "block device"),
        (tarfile.FIFOTYPE, "FIFO"),
        (tarfile.CONTTYPE, "contiguous file"),
    ],
)
def test_row06_link_then_write_through_it_is_refused(
    tmp_path: Path, kind: bytes, label: str
) -> None:
    """The classic escape: ``model/link`` points outside, then ``model/link/evil`` is written
    through it. The link is refused and the file lands nowhere outside the destination."""
    outside = tmp_path / "outside"
    outside.mkdir()
    evil = Entry("model/link/evil.txt", b"written through the link")
    manifest = manifest_for([MODEL, evil], base_manifest())
    manifest["members"].append({"path": "model/link", "type": "dir", "size": None, "digest": None})
    link = Entry("model/link", type=kind, linkname=str(outside))
    bundle = forge(tmp_path / "link.kbundle", manifest, [MODEL, link, evil])

    error = _unpack_refused(bundle, tmp_path / "out")

    assert (
        "model/link",
        f"{label} members are not allowed; only regular files and directories",
    ) in [(f.location, f.problem) for f in error.findings]
    assert tree(outside) == {}


def test_row06_mode_bits_are_never_taken_from_the_archive(tmp_path: Path) -> None:
    """Set-user-ID, set-group-ID, sticky and world-writable bits in the tar headers are
    ignored: files get 0644 and directories 0755 (less the umask), whatever the bundle says."""
    entries = [
        Entry("model/bin", type=tarfile.DIRTYPE, mode=0o7777),
        Entry("model/bin/tool", b"#!/bin/sh\necho owned\n", mode=0o6777),
        Entry(MODEL_PATH, b"model", mode=0o4755),
    ]
    bundle = forge(tmp_path / "modes.kbundle", manifest_for(entries, base_manifest()), entries)

    out = kbundle.unpack(bundle, tmp_path / "out").path

    umask = os.umask(0)
    os.umask(umask)
    assert (out / "model/bin").stat().st_mode & 0o7777 == 0o755 & ~umask
    assert (out / "model/bin/tool").stat().st_mode & 0o7777 == 0o644 & ~umask
    assert (out / MODEL_PATH).stat().st_mode & 0o7777 == 0o644 & ~umask


# --------------------------------------------------------------------------------------------
# Row 7: a zstd/tar bomb, 32 KB that expands to 1 GiB


def _rle_bomb_frame(header: bytes, zeros: int) -> bytes:
    """One zstd frame: ``header`` in a raw block, then ``zeros`` zero bytes as RLE blocks of
    128 KiB (4 bytes each), then the end-of-archive marker. No content size, no checksum."""
    block = 128 * 1024
    out = bytearray(ZSTD_MAGIC + bytes([0, 7 << 3]))  # frame header: a 128 KiB window
    out += (len(header) << 3).to_bytes(3, "little") + header  # raw block
    rle = ((block << 3) | (1 << 1)).to_bytes(3, "little") + b"\0"
    out += rle * (zeros // block)
    out += ((len(END_OF_ARCHIVE) << 3) | 1).to_bytes(3, "little") + END_OF_ARCHIVE  # last, raw
    return bytes(out)


@pytest.mark.timeout(120)  # a hang guard: reading the whole gibibyte would still finish
def test_row07_zstd_bomb_stops_at_the_declared_total(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The limits that leave slack for a signature and headers, patched small so that the cap
    # is the manifest's own total.
    monkeypatch.setattr(reader, "MAX_SIGNATURE_BYTES", 1024)
    monkeypatch.setattr(reader, "MAX_ARCHIVE_OVERHEAD_PER_MEMBER", 2048)
    small = Entry(MODEL_PATH, b"tiny")
    manifest = manifest_for([small], base_manifest())
    gib = 1 << 30
    frame = _rle_bomb_frame(tar_entry(Entry(MODEL_PATH, size=gib)), gib)
    bundle = tmp_path / "bomb.kbundle"
    bundle.write_bytes(assemble(manifest, frame))
    # The bomb itself; the manifest beside it grows with the distributions installed here.
    assert len(frame) < 40_000

    error = _unpack_refused(bundle, tmp_path / "out")

    problems = [(f.location, f.problem, f.expected, f.actual) for f in error.findings]
    assert problems[0] == (MODEL_PATH, "size differs from the manifest", "4 bytes", f"{gib} bytes")
    limit = problems[1][1]
    assert limit.startswith("the archive holds more data than its manifest declares (over ")
    assert int(limit.split("(over ")[1].split()[0]) < 64 * 1024


# --------------------------------------------------------------------------------------------
# Row 8: an oversized or deeply nested manifest, refused first


def test_row08_manifest_declared_100mb_refused_before_it_is_read(tmp_path: Path) -> None:
    """The tar header declares a 100 MB manifest; the refusal comes from the header alone, so
    the test needs no 100 MB file. Its payload also hides a traversal name: the manifest is
    checked first, and unpack creates nothing."""
    declared = 100_000_000
    head = raw_frame(
        member_header("kbundle.json", declared, is_dir=False, mtime=0)
        + b'{"format_version": "1.0"'
        + b" " * 4000
    )
    payload = zstandard.ZstdCompressor().compress(pax_entry(b"../../evil", b"x") + END_OF_ARCHIVE)
    bundle = tmp_path / "big.kbundle"
    bundle.write_bytes(head + payload)
    message = (
        f"manifest is {declared} bytes, more than the limit of {MAX_MANIFEST_BYTES}; "
        "this is not a bundle kbundle wrote; refuse it"
    )

    for command in ("inspect", "verify"):
        result = run_cli(command, bundle)
        assert_clean_failure(result, 1)
        assert result.stderr == f"kbundle: error: {message}\n"
    with pytest.raises(LimitExceededError, match=r"^manifest is 100000000 bytes"):
        kbundle.unpack(bundle, tmp_path / "out")
    assert sorted(tree(tmp_path)) == ["big.kbundle"]


def test_row08_manifest_nested_10000_deep_refused_by_the_cli(tmp_path: Path) -> None:
    nested = b'{"format_version": "1.0", "x": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    bundle = forge(tmp_path / "deep.kbundle", nested, [MODEL])
    result = run_cli("inspect", bundle)
    assert_clean_failure(result, 1)
    assert (
        result.stderr == "kbundle: error: manifest JSON is nested deeper than 64 levels; "
        "this is not a bundle kbundle wrote; refuse it\n"
    )


# --------------------------------------------------------------------------------------------
# Row 14: a weak or unknown hash algorithm


@pytest.mark.parametrize(
    "claimed",
    [
        "md5:" + "0" * 32,
        "sha1:" + "0" * 40,
        "sha512:" + "0" * 128,
        "SHA256:" + "0" * 64,
        "sha256:" + "A" * 64,
        "sha256:" + "0" * 63,
        "crc32:00000000",
        None,
    ],
    ids=["md5", "sha1", "sha512", "upper-prefix", "upper-hex", "short", "crc32", "missing"],
)
def test_row14_weak_or_unknown_hash_algorithm_refused(tmp_path: Path, claimed: str | None) -> None:
    manifest = manifest_for([MODEL], base_manifest())
    manifest["members"][0]["digest"] = claimed
    bundle = forge(tmp_path / "weak.kbundle", manifest, [MODEL])

    result = run_cli("inspect", bundle)

    assert_clean_failure(result, 1)
    assert result.stderr == (
        "kbundle: error: the manifest breaks 1 format rule(s): members[0].digest: "
        f"must be 'sha256:' and 64 lowercase hex digits: {claimed!r}; "
        "the bundle was not written by a conforming kbundle or was tampered with\n"
    )
    _unpack_refused(bundle, tmp_path / "out")
