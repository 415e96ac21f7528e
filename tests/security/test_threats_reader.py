"""THREATS.md rows 21, 22, 24 and 26 (container part): the reader refuses what a standard
tool, a later step or the manifest's own fields would read differently.

* Row 24, parser differentials: every tar construct on which kbundle, Python's ``tarfile``
  and GNU tar could disagree is refused, and nothing ``verify`` accepts extracts outside its
  target with those tools.
* Row 26, hostile numbers: digit strings too long for ``int()`` are findings, never a crash.
* Row 21, manifest fields naming files: each names a listed member of the right type under
  its own area.
* Row 22, members nobody references: every payload member outside ``model/`` is named by a
  manifest field.

Every forgery is honest where it can be (digests match what the old reader hashed), so only
the construct under test can refuse it. No Keras: the container does not care what the model
bytes are.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import re
import shutil
import subprocess
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zstandard
from bundle_factory import Entry, assemble, forge, manifest_for
from conftest import assert_clean_failure, run_cli
from hostile import MODEL_PATH, base_manifest, tree, verify_error
from schema_support import assert_valid_manifest, schema_errors

import kbundle
from kbundle.container import manifest as manifest_module
from kbundle.container import tarstream
from kbundle.container.manifest import parse_manifest
from kbundle.container.tarstream import BLOCK, END_OF_ARCHIVE, TarReader, member_header, padding
from kbundle.container.zstdframes import raw_frame, trailer_frame
from kbundle.errors import BundleFormatError, IntegrityError

MODEL = Entry(MODEL_PATH, b"PK model bytes")
DATA = Entry("model/data.bin", b"weights the manifest lists")
POSIX_MAGIC = b"ustar\x0000"
GNU_MAGIC = b"ustar  \x00"
# A file a standard tool would write one level above its target if it read the bundle the
# way the forgery intends.
ESCAPE = b"../escaped"


# --------------------------------------------------------------------------------------------
# Raw tar pieces: headers with any field, pax headers with any records


def header(
    name: bytes,
    size: int = 0,
    *,
    typeflag: bytes = b"0",
    magic: bytes = POSIX_MAGIC,
    prefix: bytes = b"",
    fields: dict[int, bytes] | None = None,
    checksum: Callable[[int], bytes] = lambda total: b"%06o\x00 " % total,
) -> bytes:
    """One 512-byte tar header with a correct checksum (spelt by ``checksum``); ``fields``
    overwrites bytes at the given offsets (POSIX ustar layout) before it is computed."""
    block = bytearray(BLOCK)
    block[0 : len(name)] = name
    block[100:108] = b"0000644\x00"
    block[108:116] = block[116:124] = b"0000000\x00"
    block[124:136] = b"%011o\x00" % size
    block[136:148] = b"%011o\x00" % 1767225600
    block[156:157] = typeflag
    block[257:265] = magic
    block[345 : 345 + len(prefix)] = prefix
    for offset, data in (fields or {}).items():
        block[offset : offset + len(data)] = data
    block[148:156] = b" " * 8
    block[148:156] = checksum(sum(block))
    return bytes(block)


def member(name: bytes, data: bytes, **options: Any) -> bytes:
    """A header for ``data`` (its size unless ``fields`` says otherwise), the data, padding."""
    return header(name, len(data), **options) + data + padding(len(data))


def record(key: bytes, value: bytes, *, length: bytes | None = None) -> bytes:
    """One pax record, ``LENGTH KEY=VALUE\\n``; ``length`` replaces the decimal length
    verbatim (the caller spells the true length its own way)."""
    body = b" " + key + b"=" + value + b"\n"
    size = len(body) + len(str(len(body)))
    size = len(body) + len(str(size))  # the length counts its own digits
    return (length if length is not None else str(size).encode()) + body


def pax(*records: bytes, typeflag: bytes = b"x") -> bytes:
    """A pax extended (``x``) or global (``g``) header carrying ``records``."""
    data = b"".join(records)
    return header(b"././@PaxHeader", len(data), typeflag=typeflag) + data + padding(len(data))


def bundle(path: Path, payload: bytes, listed: Sequence[Entry], base: dict[str, Any]) -> Path:
    """A bundle whose tar stream after the manifest is ``payload`` and the end-of-archive
    marker, and whose manifest (``base``) lists ``listed`` with their true sizes and
    digests."""
    frames = zstandard.ZstdCompressor(write_checksum=True).compress(payload + END_OF_ARCHIVE)
    path.write_bytes(assemble(manifest_for(listed, base), frames))
    return path


def tar_stream(path: Path) -> bytes:
    """The decompressed tar stream of a bundle, as any zstd reader sees it."""
    reader = zstandard.ZstdDecompressor().stream_reader(
        io.BytesIO(path.read_bytes()), read_across_frames=True
    )
    return reader.read()


def refusal(path: Path) -> IntegrityError:
    """``kbundle.verify``'s error for ``path``, which must be an IntegrityError."""
    error = verify_error(path)
    assert isinstance(error, IntegrityError), error
    return error


# --------------------------------------------------------------------------------------------
# Row 24: parser differentials. Each forgery: what the stream is, what it lists, and what the
# reader must say. The "escapes" ones make a standard tool write outside its target.

HIDDEN = member(ESCAPE, b"pwned")  # a whole tar entry, hidden as another member's data
ESCAPE_HEADER = header(ESCAPE)  # one block: an empty file one level up
PAX_KEYS = {
    b"linkpath": b"/etc/passwd",
    b"uid": b"1000",
    b"gid": b"1000",
    b"uname": b"root",
    b"gname": b"wheel",
    b"mtime": b"1.5",
    b"atime": b"1",
    b"ctime": b"1",
    b"charset": b"ISO-IR 10646 2000 UTF-8",
    b"comment": b"hello",
    b"SCHILY.xattr.security.capability": b"\x01\x00\x00\x02",
    b"LIBARCHIVE.xattr.user.evil": b"ZXZpbA",
    b"GNU.sparse.name": ESCAPE,
    b"GNU.sparse.major": b"1",
    b"SCHILY.devmajor": b"1",
}


def _forgeries() -> dict[str, tuple[bytes, list[Entry], str]]:
    """name -> (payload after the manifest, members the manifest lists, decisive message)."""
    plain = member(MODEL.name.encode(), MODEL.data)
    data_path = record(b"path", DATA.name.encode())
    hidden_data = Entry(DATA.name, HIDDEN)
    one_block = Entry(DATA.name, ESCAPE_HEADER)
    not_octal = "field {!r} is not a plain octal number"
    forged: dict[str, tuple[bytes, list[Entry], str]] = {
        # tarfile applies the first pax header, kbundle (until now) the second.
        "pax-then-pax": (
            plain + pax(record(b"path", ESCAPE)) + pax(data_path) + member(b"x", DATA.data),
            [MODEL, DATA],
            "two pax extended headers in a row (Python's tarfile applies the first, other "
            "readers the second)",
        ),
        "pax-then-end": (
            plain + pax(data_path),
            [MODEL],
            "a pax extended header is followed by the end-of-archive marker",
        ),
        "pax-then-global": (
            plain
            + pax(data_path)
            + pax(record(b"path", ESCAPE), typeflag=b"g")
            + member(b"x", DATA.data),
            [MODEL, DATA],
            "a pax extended header is followed by no file or directory header (found: global "
            "pax header)",
        ),
        # tarfile scans the whole pax block for hdrcharset, even inside a path's value.
        "hdrcharset-inside-a-path": (
            plain + pax(record(b"path", b"model/a 9 hdrcharset=BINARY")) + member(b"x", DATA.data),
            [MODEL, Entry("model/a 9 hdrcharset=BINARY", DATA.data)],
            "the pax header mentions hdrcharset (tarfile then decodes names differently)",
        ),
        # tarfile and GNU tar want bare digits; int() took "+" and "_", so the pax path
        # applied for kbundle and the ustar name for both of them.
        "pax-length-with-plus": (
            plain
            + pax(record(b"path", DATA.name.encode(), length=b"+24"))  # 3 + 21 bytes
            + member(ESCAPE, DATA.data),
            [MODEL, DATA],
            "malformed pax header record",
        ),
        "pax-length-with-underscore": (
            plain
            + pax(record(b"path", DATA.name.encode(), length=b"2_4"))
            + member(ESCAPE, DATA.data),
            [MODEL, DATA],
            "malformed pax header record",
        ),
        # tarfile prepends the prefix field for any non-GNU typeflag whatever the magic;
        # GNU tar and kbundle use it only in POSIX ustar headers.
        "gnu-magic-with-prefix": (
            plain + member(DATA.name.encode(), DATA.data, magic=GNU_MAGIC, prefix=b".."),
            [MODEL, DATA],
            f"not a POSIX ustar header (magic and version {GNU_MAGIC!r}, expected {POSIX_MAGIC!r})",
        ),
        "v7-header-with-prefix": (
            plain + member(DATA.name.encode(), DATA.data, magic=bytes(8), prefix=b".."),
            [MODEL, DATA],
            f"not a POSIX ustar header (magic and version {bytes(8)!r}, expected {POSIX_MAGIC!r})",
        ),
        "ustar-version-not-00": (
            plain + member(DATA.name.encode(), DATA.data, magic=b"ustar\x00  "),
            [MODEL, DATA],
            "not a POSIX ustar header (magic and version b'ustar\\x00  ', expected "
            f"{POSIX_MAGIC!r})",
        ),
        # Typeflag NUL and a name ending in "/": a directory to tarfile, which then reads the
        # member's data as the next headers.
        "nul-typeflag-directory": (
            plain + pax(data_path) + member(b"model/data.bin/", HIDDEN, typeflag=b"\x00"),
            [MODEL, hidden_data],
            "typeflag NUL with a name ending in '/' ('model/data.bin/'): Python's tarfile "
            "makes it a directory",
        ),
        # Numbers: tarfile stops at the first NUL, GNU tar skips one leading NUL, int() takes
        # "+" and "_". Each reads another size, so another header comes next.
        "size-led-by-nul": (
            plain + member(DATA.name.encode(), ESCAPE_HEADER, fields={124: b"\x000000001000\x00"}),
            [MODEL, one_block],
            "size " + not_octal.format(b"\x000000001000\x00"),
        ),
        "size-with-plus": (
            plain + member(DATA.name.encode(), ESCAPE_HEADER, fields={124: b"+0000001000\x00"}),
            [MODEL, one_block],
            "size " + not_octal.format(b"+0000001000\x00"),
        ),
        "size-with-underscore": (
            plain + member(DATA.name.encode(), ESCAPE_HEADER, fields={124: b"0000_001000\x00"}),
            [MODEL, one_block],
            "size " + not_octal.format(b"0000_001000\x00"),
        ),
        "size-with-nul-inside": (
            plain + member(DATA.name.encode(), ESCAPE_HEADER, fields={124: b"00000\x00001000"}),
            [MODEL, one_block],
            "size " + not_octal.format(b"00000\x00001000"),
        ),
        # Fields kbundle ignores but tarfile parses (and stops reading at a bad one).
        "mode-not-octal": (
            plain + member(DATA.name.encode(), DATA.data, fields={100: b"zzzzzzz\x00"}),
            [MODEL, DATA],
            "mode " + not_octal.format(b"zzzzzzz\x00"),
        ),
        "uid-base-256": (
            plain
            + member(DATA.name.encode(), DATA.data, fields={108: b"\x80" + bytes(6) + b"\x01"}),
            [MODEL, DATA],
            "uid " + not_octal.format(b"\x80" + bytes(6) + b"\x01"),
        ),
        "checksum-led-by-nul": (
            plain + member(DATA.name.encode(), DATA.data, checksum=lambda t: b"\x00%06o " % t),
            [MODEL, DATA],
            "unreadable header checksum b'\\x00",
        ),
    }
    for key, value in PAX_KEYS.items():
        forged[f"pax-key-{key.decode()}"] = (
            plain + pax(data_path, record(key, value)) + member(b"x", DATA.data),
            [MODEL, DATA],
            f"pax header key {key.decode()!r} is not allowed (only 'path' and 'size'; other tar "
            "tools act on it)",
        )
    return forged


FORGERIES = _forgeries()
# The forgeries that make Python's tarfile (filter "fully_trusted") write outside its target.
ESCAPING = [
    "pax-then-pax",
    "pax-length-with-plus",
    "pax-length-with-underscore",
    "gnu-magic-with-prefix",
    "v7-header-with-prefix",
    "nul-typeflag-directory",
    "size-led-by-nul",
    "size-with-nul-inside",
    "pax-key-GNU.sparse.name",
]


@pytest.mark.parametrize("case", sorted(FORGERIES))
def test_row24_differential_construct_is_refused(tmp_path: Path, case: str) -> None:
    payload, listed, problem = FORGERIES[case]
    forged = bundle(tmp_path / "forged.kbundle", payload, listed, base_manifest())

    error = refusal(forged)

    assert problem in error.findings[0].problem, error.findings
    assert problem in error.message
    if "is refused" in error.message:  # the constructs, as opposed to malformed headers
        assert re.search(r"tar header at byte \d+ is refused: ", error.message)
        assert error.hint == (
            "kbundle never writes this and other tar tools may extract it differently; "
            "the bundle was crafted or rewritten, so get one written by 'kbundle pack'"
        )


def test_row24_directory_name_loses_exactly_one_trailing_slash(tmp_path: Path) -> None:
    """Spec section 7: one trailing ``/`` is removed from a directory's name, never more, so
    ``model/d//`` is refused as a name with an empty component rather than repaired."""
    directory = Entry("model/d", type=tarfile.DIRTYPE)
    payload = member(MODEL.name.encode(), MODEL.data) + pax(record(b"path", b"model/d//"))
    payload += header(b"x", typeflag=b"5")
    forged = bundle(tmp_path / "slashes.kbundle", payload, [MODEL, directory], base_manifest())

    error = refusal(forged)

    assert [(f.location, f.problem) for f in error.findings] == [
        (
            "model/d/",
            "unsafe member name refused: component '' is not allowed (names must be "
            "normalised and relative)",
        ),
        ("model/d", "member listed in the manifest is missing"),
    ]


WRITTEN = [
    ("model/" + "long/" * 30 + "x.bin", 5, False, 0),
    ("model/modèle/poids.bin", 5, False, 1767225600),
    ("model/big.bin", 9 * 2**30, False, 1767225600),  # past the 8 GiB ustar size field
    ("model/" + "d" * 120, 0, True, 1767225600),
    ("model/répertoire", 0, True, 0),
    ("model/far-future.bin", 5, False, 8**11),  # past the 11-digit ustar mtime field
]


def test_row24_writer_headers_carry_only_path_and_size() -> None:
    """The claim the pax-key rule rests on: kbundle's writer never emits a pax key but
    ``path`` and ``size`` (long, non-ASCII and > 8 GiB members, and an mtime past what ustar
    holds, which it clamps), and its headers read back through the strict reader unchanged."""
    for name, size, is_dir, mtime in WRITTEN:
        written = member_header(name, size, is_dir=is_dir, mtime=mtime)
        keys: set[bytes] = set()
        if written[156:157] == b"x":
            records = written[BLOCK : BLOCK + int(written[124:135], 8)]
            keys = set(re.findall(rb"[0-9]+ ([^=]+)=", records))
        assert keys <= {b"path", b"size"}, (name, keys)

        entry = TarReader(io.BytesIO(written).read).next_entry()

        assert entry is not None
        assert (entry.name, entry.kind, entry.size) == (name, "dir" if is_dir else "file", size)


def _gnu_tar_with_zstd() -> bool:
    if shutil.which("tar") is None or shutil.which("zstd") is None:
        return False
    usage = subprocess.run(["tar", "--help"], capture_output=True, text=True, check=False)
    return "--zstd" in usage.stdout


def _extract(tool: str, forged: Path, target: Path) -> None:
    """Extract ``forged`` into ``target`` with a standard tool, ignoring the tool's errors:
    what matters is only where files land."""
    target.mkdir(parents=True)
    if tool == "gnu-tar":
        subprocess.run(
            ["tar", "--zstd", "-xf", str(forged), "-C", str(target)],
            capture_output=True,
            check=False,
            timeout=60,
        )
        return
    extraction_filter = tool.removeprefix("tarfile-").replace("-", "_")
    try:
        with tarfile.open(fileobj=io.BytesIO(tar_stream(forged))) as archive:
            archive.extractall(target, filter=extraction_filter)
    except (tarfile.TarError, OSError):
        pass


def test_row24_nothing_verify_accepts_extracts_outside_its_target(tmp_path: Path) -> None:
    """End to end: each forgery is read by kbundle.verify, by Python's tarfile (filters
    ``data`` and ``fully_trusted``) and by GNU tar. The forgeries do make standard tools
    write outside their target; no bundle that verifies does."""
    tools = ["tarfile-data", "tarfile-fully-trusted"]
    if _gnu_tar_with_zstd():
        tools.append("gnu-tar")
    forgeries = dict(FORGERIES)
    forgeries["honest"] = (member(MODEL.name.encode(), MODEL.data), [MODEL], "")

    verified, escaped = [], []
    for case, (payload, listed, _) in forgeries.items():
        forged = bundle(tmp_path / f"{case}.kbundle", payload, listed, base_manifest())
        if verify_error(forged) is None:
            verified.append(case)
        for tool in tools:
            box = tmp_path / "boxes" / case / tool
            _extract(tool, forged, box / "parent" / "target")
            outside = sorted(p for p in tree(box) if not p.startswith("parent/target"))
            if outside != ["parent"]:
                escaped.append((case, tool, outside))

    assert [e for e in escaped if e[0] in verified] == []
    assert verified == ["honest"]
    # The forgeries are real: with the fully trusting filter, tarfile writes outside for
    # each of these (the others make readers disagree on names, sizes or kinds, not places).
    assert sorted(case for case, tool, _ in escaped if tool == "tarfile-fully-trusted") == sorted(
        ESCAPING
    )


# --------------------------------------------------------------------------------------------
# Row 26: digit strings too long for int() are refused as findings, never a crash


FIVE_THOUSAND = b"1" * 5000


def _hostile_manifest_entry(path: Path, pax_records: bytes) -> Path:
    """An honest bundle whose manifest member carries a pax header with ``pax_records``: the
    first thing every command reads (inspect included)."""
    manifest = manifest_for([MODEL], base_manifest())
    honest = forge(path.with_suffix(".honest"), manifest, [MODEL])
    manifest_bytes = kbundle.inspect(honest).manifest_bytes
    region = raw_frame(
        pax(pax_records)
        + header(b"kbundle.json", len(manifest_bytes))
        + manifest_bytes
        + padding(len(manifest_bytes))
    )
    payload = member(MODEL.name.encode(), MODEL.data) + END_OF_ARCHIVE
    frames = zstandard.ZstdCompressor(write_checksum=True).compress(payload)
    path.write_bytes(region + frames + trailer_frame(hashlib.sha256(frames).digest()))
    return path


DIGIT_BOMBS = {
    "pax-size": (record(b"size", FIVE_THOUSAND), "pax size has 5000 digits, more than 20"),
    "pax-record-length": (
        record(b"path", b"kbundle.json", length=FIVE_THOUSAND),
        "malformed pax header record",
    ),
}


def test_row26_five_thousand_digits_are_a_clean_error(tmp_path: Path) -> None:
    """A 5,000-digit pax size (or record length) on the manifest member, the first thing
    verify, inspect and unpack read: exit 1 with one error line from the CLI, an
    IntegrityError from the Python API, never CPython's 4300-digit ValueError."""
    for case, (records, problem) in DIGIT_BOMBS.items():
        hostile = _hostile_manifest_entry(tmp_path / f"{case}.kbundle", records)
        expected = f"tar stream is corrupt at byte 0: {problem}"
        out = tmp_path / f"{case}-out"

        for command in (("verify",), ("inspect",), ("unpack", "-d", out, "--no-load")):
            result = run_cli(command[0], hostile, *command[1:])
            assert_clean_failure(result, 1)
            errors = [line for line in result.stderr.splitlines() if "kbundle: error:" in line]
            assert len(errors) == 1 and expected in errors[0], (case, command, result.stderr)

        for call in (kbundle.verify, kbundle.inspect, functools.partial(unpack_to, out)):
            with pytest.raises(IntegrityError) as caught:
                call(hostile)
            assert caught.value.message == expected, case
        assert not out.exists()


def unpack_to(destination: Path, bundle: Path) -> object:
    return kbundle.unpack(bundle, destination)


def test_row26_five_thousand_digit_pax_size_on_a_payload_member_is_a_finding(
    tmp_path: Path,
) -> None:
    payload = member(MODEL.name.encode(), MODEL.data)
    payload += pax(record(b"size", FIVE_THOUSAND)) + member(DATA.name.encode(), DATA.data)
    forged = bundle(tmp_path / "digits.kbundle", payload, [MODEL, DATA], base_manifest())

    error = refusal(forged)

    first, *rest = [f.problem for f in error.findings]
    assert re.fullmatch(
        r"tar stream is corrupt at byte \d+: pax size has 5000 digits, more than 20", first
    )
    assert rest == ["not checked: the stream broke before reaching them"]


def test_row26_five_thousand_digit_format_version_is_a_clean_error(tmp_path: Path) -> None:
    manifest = manifest_for([MODEL], base_manifest())
    manifest["format_version"] = "1." + "0" * 5000
    hostile = forge(tmp_path / "version.kbundle", manifest, [MODEL])
    expected = f"format_version has a number of more than 9 digits: '1.{'0' * 35}...'"

    with pytest.raises(BundleFormatError) as caught:
        parse_manifest(json.dumps(manifest).encode())
    assert caught.value.message == expected
    with pytest.raises(BundleFormatError) as caught:
        kbundle.inspect(hostile)
    assert caught.value.message == expected
    result = run_cli("inspect", hostile)
    assert_clean_failure(result, 1)
    assert f"kbundle: error: {expected}" in result.stderr


def test_row26_digit_limits_are_exact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The digit limits, patched small: a number just inside reads, one just past is refused
    (a pax size, a pax record length, a format_version part)."""
    weights = Entry(DATA.name, bytes(120))  # "12 size=120\n": a 2-digit length, 3-digit size
    payload = member(MODEL.name.encode(), MODEL.data)
    payload += pax(record(b"size", b"120")) + member(DATA.name.encode(), weights.data)
    forged = bundle(tmp_path / "digits.kbundle", payload, [MODEL, weights], base_manifest())
    problems = {}
    for limit in (3, 2, 1):
        monkeypatch.setattr(tarstream, "_MAX_DECIMAL_DIGITS", limit)
        error = verify_error(forged)
        problems[limit] = error.findings[0].problem if error else None
    assert problems[3] is None
    assert re.fullmatch(
        r"tar stream is corrupt at byte \d+: pax size has 3 digits, more than 2", problems[2] or ""
    )
    assert re.fullmatch(
        r"tar stream is corrupt at byte \d+: malformed pax header record", problems[1] or ""
    )

    manifest = manifest_for([MODEL], base_manifest())
    manifest["format_version"] = "1.00"
    monkeypatch.setattr(manifest_module, "_MAX_VERSION_DIGITS", 2)
    assert parse_manifest(json.dumps(manifest).encode()).format_version == "1.00"
    monkeypatch.setattr(manifest_module, "_MAX_VERSION_DIGITS", 1)
    with pytest.raises(BundleFormatError) as caught:
        parse_manifest(json.dumps(manifest).encode())
    assert caught.value.message == "format_version has a number of more than 1 digits: '1.00'"


# --------------------------------------------------------------------------------------------
# Rows 21 and 22: manifest fields name listed members of their own area; nothing is unnamed


def _npz(**arrays: Any) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


HONEST = [
    MODEL,
    Entry("model/assets", type=tarfile.DIRTYPE),
    Entry("env/pins", type=tarfile.DIRTYPE),
    Entry("env/pins/requirements.txt", b"keras==3.15.1\n"),
    Entry("env/pins/requirements.lock", b"keras==3.15.1 --hash=sha256:" + b"0" * 64 + b"\n"),
    Entry("probe/data", type=tarfile.DIRTYPE),
    Entry("probe/data/inputs.npz", _npz(input_0=np.zeros((1, 2), "float32"))),
    Entry("probe/data/outputs.npz", _npz(output_0=np.ones((1, 1), "float32"))),
]


def honest_manifest(entries: Sequence[Entry] = HONEST) -> dict[str, Any]:
    """A manifest listing ``entries`` whose fields reference every file outside ``model/``
    (the requirements and probe under subdirectories, which are then legitimate)."""
    manifest = manifest_for(entries, base_manifest())
    manifest["requirements"] = {
        "requirements": "env/pins/requirements.txt",
        "lock": "env/pins/requirements.lock",
        "lock_hashed": True,
        "note": None,
    }
    manifest["probe"] = {
        "inputs": "probe/data/inputs.npz",
        "outputs": "probe/data/outputs.npz",
        "rtol": 1e-5,
        "atol": 1e-6,
    }
    return manifest


# field -> (where it lives in the manifest, its area, a listed file of another area, a
# listed directory of its own area)
FIELDS = {
    "requirements.requirements": (("requirements", "requirements"), "env"),
    "requirements.lock": (("requirements", "lock"), "env"),
    "probe.inputs": (("probe", "inputs"), "probe"),
    "probe.outputs": (("probe", "outputs"), "probe"),
    "model.path": (("model", "path"), "model"),
}
OTHER_AREA = {"env": "probe/data/inputs.npz", "probe": "env/pins/requirements.txt"}
OWN_DIRECTORY = {"env": "env/pins", "probe": "probe/data", "model": "model/assets"}
NORMALISED = "component '..' is not allowed (names must be normalised and relative)"


def _bad_value(area: str, kind: str) -> tuple[str, str]:
    """(value, the reader's problem with it) for one kind of bad reference."""
    what = "a 'keras' model" if area == "model" else "it"
    return {
        "absolute": ("/etc/passwd", "absolute name: '/etc/passwd'"),
        "dotdot": (f"{area}/../../etc/passwd", f"{NORMALISED}: '{area}/../../etc/passwd'"),
        "unlisted": (f"{area}/unlisted.bin", f"not a listed member: '{area}/unlisted.bin'"),
        "wrong-area": (
            OTHER_AREA.get(area, "env/pins/requirements.txt"),
            f"must be under {area}/: {OTHER_AREA.get(area, 'env/pins/requirements.txt')!r}",
        ),
        "wrong-type": (
            OWN_DIRECTORY[area],
            f"{what} must be a file member, not a dir: {OWN_DIRECTORY[area]!r}",
        ),
    }[kind]


# What a JSON Schema can see in one value; whether it is listed, and as what, it cannot.
SCHEMA_REFUSES = {"absolute", "dotdot", "wrong-area"}


@pytest.mark.parametrize("field", sorted(FIELDS))
def test_row21_field_naming_a_file_must_be_a_listed_member_of_its_area(
    tmp_path: Path, field: str
) -> None:
    """An absolute, ``..``, unlisted, other-area and wrong-type value in the field: each is
    refused by parse_manifest and kbundle.verify, and by the schema where one value tells."""
    (record_name, key), area = FIELDS[field]
    for kind in ("absolute", "dotdot", "unlisted", "wrong-area", "wrong-type"):
        value, problem = _bad_value(area, kind)
        manifest = honest_manifest()
        manifest[record_name][key] = value
        forged = forge(tmp_path / f"{kind}.kbundle", manifest, HONEST)

        with pytest.raises(BundleFormatError) as parsed:
            parse_manifest(json.dumps(manifest).encode())
        error = verify_error(forged)

        # Other problems may follow: the file the field named before is now unreferenced.
        first = re.escape(f"{field}: {problem}")
        rule = rf"the manifest breaks \d+ format rule\(s\): {first}( \(and \d+ more\))?"
        assert re.fullmatch(rule, parsed.value.message), (kind, parsed.value.message)
        assert isinstance(error, BundleFormatError) and error.message == parsed.value.message
        location = f"$.{record_name}" + (".path" if record_name == "model" else "")
        schema_refuses = any(e.startswith(location) for e in schema_errors(manifest))
        assert schema_refuses == (kind in SCHEMA_REFUSES), kind


def test_row21_the_honest_layout_verifies_and_matches_the_schema(tmp_path: Path) -> None:
    manifest = honest_manifest()
    assert_valid_manifest(manifest)
    assert kbundle.verify(forge(tmp_path / "honest.kbundle", manifest, HONEST)).findings == []
    # ... and a directory-format model must name a directory, not a file.
    manifest["model"]["format"] = "savedmodel"
    error = verify_error(forge(tmp_path / "savedmodel.kbundle", manifest, HONEST))
    assert isinstance(error, BundleFormatError)
    assert error.message == (
        "the manifest breaks 1 format rule(s): model.path: a 'savedmodel' model must be a dir "
        "member, not a file: 'model/model.keras'"
    )


def test_row21_keras_model_that_is_a_directory_is_refused_before_loading(
    tmp_path: Path,
) -> None:
    """Once an IsADirectoryError from inside Keras at load time; now refused with the
    manifest, before anything is extracted or imported."""
    entries = [
        Entry(MODEL_PATH, type=tarfile.DIRTYPE),
        Entry(f"{MODEL_PATH}/config.json", b"{}"),
    ]
    forged = forge(tmp_path / "dir.kbundle", manifest_for(entries, base_manifest()), entries)
    expected = (
        "the manifest breaks 1 format rule(s): model.path: a 'keras' model must be a file "
        "member, not a dir: 'model/model.keras'"
    )

    with pytest.raises(BundleFormatError) as caught:
        kbundle.load(forged)
    assert caught.value.message == expected
    result = run_cli("unpack", forged, "-d", tmp_path / "out")  # unpack loads the model
    assert_clean_failure(result, 1)
    assert f"kbundle: error: {expected}" in result.stderr


UNREFERENCED = {
    "code/__init__.py": (b"import os\nos.system('id')\n", "any custom object"),
    "objects/x.pkl": (b"\x80\x05N.", "any custom object"),
    "env/extra.whl": (b"PK wheel", "requirements.requirements or requirements.lock"),
    "env/x.pth": (
        b"import os; os.system('id')\n",
        "requirements.requirements or requirements.lock",
    ),
    "probe/other.npz": (_npz(a=np.zeros(1)), "probe.inputs or probe.outputs"),
}


@pytest.mark.parametrize("name", sorted(UNREFERENCED))
def test_row22_member_no_field_references_is_refused_by_verify_and_unpack(
    tmp_path: Path, name: str
) -> None:
    data, field = UNREFERENCED[name]
    entries = [*HONEST, Entry(name, data)]
    manifest = honest_manifest(entries)
    forged = forge(tmp_path / "stray.kbundle", manifest, entries)
    expected = (
        f"the manifest breaks 1 format rule(s): members[{len(HONEST)}].path: {name!r} is not "
        f"referenced by {field}"
    )

    error = verify_error(forged)
    assert isinstance(error, BundleFormatError) and error.message == expected
    before = tree(tmp_path)
    with pytest.raises(BundleFormatError) as caught:
        kbundle.unpack(forged, tmp_path / "out")
    assert caught.value.message == expected
    assert tree(tmp_path) == before
    if name.startswith(("code/", "objects/")):  # the schema sees it: there are no objects
        assert any(e.startswith(f"$.members[{len(HONEST)}].path:") for e in schema_errors(manifest))


def test_row22_unreferenced_code_init_is_refused_by_the_cli_unpack(tmp_path: Path) -> None:
    entries = [*HONEST, Entry("code/__init__.py", b"open('marker', 'w')\n")]
    forged = forge(tmp_path / "stray.kbundle", honest_manifest(entries), entries)

    result = run_cli("unpack", forged, "-d", tmp_path / "out", "--no-load")

    assert_clean_failure(result, 1)
    assert (
        f"kbundle: error: the manifest breaks 1 format rule(s): members[{len(HONEST)}].path: "
        "'code/__init__.py' is not referenced by any custom object"
    ) in result.stderr
    assert sorted(tree(tmp_path)) == ["stray.kbundle"]


def test_row22_directory_outside_model_must_hold_a_referenced_file(tmp_path: Path) -> None:
    entries = [*HONEST, Entry("code/pkg", type=tarfile.DIRTYPE)]
    forged = forge(tmp_path / "dir.kbundle", honest_manifest(entries), entries)

    error = verify_error(forged)

    assert isinstance(error, BundleFormatError)
    assert error.message == (
        f"the manifest breaks 1 format rule(s): members[{len(HONEST)}].path: directory "
        "'code/pkg' holds no file that a manifest field references"
    )


def test_row22_referenced_code_and_its_package_directory_verify(tmp_path: Path) -> None:
    """The rule is not a blanket ban: a source object's files, and the directory above
    them, are referenced."""
    entries = [
        *HONEST,
        Entry("code/pkg", type=tarfile.DIRTYPE),
        Entry("code/pkg/__init__.py", b""),
        Entry("code/pkg/layers.py", b"class Scale: pass\n"),
    ]
    manifest = honest_manifest(entries)
    manifest["custom_objects"] = [
        {
            "name": "Scale",
            "kind": "layer",
            "module": "pkg.layers",
            "qualname": "Scale",
            "transport": "source",
            "source_digest": None,
            "sources": [
                {"module": "pkg", "path": "code/pkg/__init__.py"},
                {"module": "pkg.layers", "path": "code/pkg/layers.py"},
            ],
            "pickle": None,
            "review_source": None,
            "requirement": None,
            "imports": [],
            "distributions": {},
        }
    ]
    assert_valid_manifest(manifest)
    assert kbundle.verify(forge(tmp_path / "code.kbundle", manifest, entries)).files_checked == 7
    # One file fewer in sources: it is listed, but nobody names it.
    manifest["custom_objects"][0]["sources"].pop(0)
    error = verify_error(forge(tmp_path / "less.kbundle", manifest, entries))
    assert isinstance(error, BundleFormatError)
    assert error.message == (
        f"the manifest breaks 1 format rule(s): members[{len(HONEST) + 1}].path: "
        "'code/pkg/__init__.py' is not referenced by any custom object"
    )
