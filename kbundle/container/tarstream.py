"""Strict tar: writing member headers, and reading a tar stream that must be exactly as written.

kbundle writes POSIX pax tar (headers from the standard library's ``tarfile``), so any tar
tool reads a bundle. It reads with this module rather than ``tarfile`` because a verifier
must account for every byte: header checksums are checked, padding and the end-of-archive
trailer must be zeros, and only the entry kinds the format allows (regular files,
directories, and pax extended headers carrying ``path``/``size``) are accepted. Everything
else (links, devices, FIFOs, GNU long names, sparse files, global headers) is reported as a
disallowed kind and its data skipped, never written.

It also refuses, as :class:`BundleFormatError`, every construct that kbundle's writer never
emits and on which standard readers (Python's ``tarfile``, GNU tar) disagree with each other
or with this reader: a header that is not POSIX ustar, a numeric field that is not plain
octal, a pax header not followed by the file or directory it describes, pax keys other than
``path`` and ``size``, and a typeflag-NUL entry whose name ends in ``/``. Otherwise a bundle
that verifies could extract differently with another tool (spec section 7, with a table of
what each tool does). Stable: internal.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from kbundle.errors import BundleFormatError, IntegrityError, LimitExceededError

__all__ = ["BLOCK", "END_OF_ARCHIVE", "TarEntry", "TarReader", "member_header", "padding"]

BLOCK = 512
END_OF_ARCHIVE = b"\0" * (2 * BLOCK)
_ZERO_BLOCK = b"\0" * BLOCK
# A pax header for our own names is under 2 KiB; refuse larger ones before reading them.
_MAX_PAX_HEADER = 64 * 1024
# 2**64 has 20 decimal digits: no size or record length needs more, and int() of longer text
# is refused by CPython itself past 4300 digits (a ValueError, not a finding).
_MAX_DECIMAL_DIGITS = 20
# The largest mtime a ustar header holds (11 octal digits). tarfile writes a pax ``mtime``
# record beyond it, which this reader refuses; the writer clamps instead (readers ignore mtime).
_MAX_USTAR_MTIME = 8**11 - 1

# Magic ``ustar\0`` and version ``00``: POSIX ustar, what tarfile's PAX_FORMAT writes. GNU
# (``ustar  \0``) and pre-POSIX headers are refused: tarfile prepends their ``prefix`` bytes
# to the name, GNU tar does not.
_POSIX_MAGIC = b"ustar\x0000"
# The only pax keys kbundle writes. Others change what other tools extract (``linkpath``,
# ``uid``, ``mtime``, ``hdrcharset``, ``SCHILY.xattr.*``, ``GNU.sparse.*``, ...) while this
# reader would ignore them, so they are refused.
_PAX_KEYS = ("path", "size")
# tarfile looks for "<digits> hdrcharset=" anywhere in a pax header, even inside another
# record's value, and then decodes ``path`` with another encoding. Any mention is refused: a
# plain substring test, where the regex would backtrack quadratically over a run of digits.
_HDRCHARSET = b"hdrcharset="
# A record's length: bare ASCII digits then a space, as tarfile's own record regex wants
# (int() also takes "+", "_" and surrounding whitespace, which tarfile and GNU tar do not).
_PAX_LENGTH = re.compile(rb"([0-9]+) ")
# Leading spaces, octal digits, then only spaces and NULs: every tar reader agrees on such a
# field. tarfile stops at the first NUL and GNU tar skips one leading NUL, so "\0" + "1000"
# is 0 to one and 512 to the other; int() also takes "+", "_" and tabs that others do not.
_OCTAL_FIELD = re.compile(rb" *[0-7]+[ \0]*")
# Numeric ustar fields this reader ignores but others parse (tarfile stops reading at a
# malformed one): they must still be plain octal, or all NULs as tarfile writes the device
# numbers of files and directories. Offsets per POSIX ustar.
_IGNORED_NUMBERS = {
    "mode": (100, 108),
    "uid": (108, 116),
    "gid": (116, 124),
    "mtime": (136, 148),
    "devmajor": (329, 337),
    "devminor": (337, 345),
}

_KINDS = {
    b"0": "file",
    b"\0": "file",
    b"5": "dir",
    b"1": "hard link",
    b"2": "symbolic link",
    b"3": "character device",
    b"4": "block device",
    b"6": "FIFO",
    b"7": "contiguous file",
    b"g": "global pax header",
    b"L": "GNU long name",
    b"K": "GNU long link name",
    b"S": "GNU sparse file",
}


def member_header(name: str, size: int, *, is_dir: bool, mtime: int) -> bytes:
    """The pax tar header for one member, with fixed owner and mode. Its pax header, when
    there is one, carries only ``path`` (long or non-ASCII names) and ``size`` (8 GiB and
    more): the two keys the reader accepts."""
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if is_dir else tarfile.REGTYPE
    info.size = 0 if is_dir else size
    info.mode = 0o755 if is_dir else 0o644
    info.mtime = min(max(mtime, 0), _MAX_USTAR_MTIME)
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "strict")


def padding(size: int) -> bytes:
    """Zero bytes that bring ``size`` bytes of data to a whole block."""
    return b"\0" * (-size % BLOCK)


@dataclass(frozen=True, slots=True)
class TarEntry:
    """One tar member as the stream declares it; ``kind`` is ``file``, ``dir`` or what else."""

    name: str
    kind: str
    size: int
    offset: int  # of its first header (its pax header, if any) in the decompressed stream


class TarReader:
    """Reads tar entries from ``read_exact(n)``, which returns exactly n bytes or raises."""

    def __init__(self, read_exact: Callable[[int], bytes]) -> None:
        self._read_exact = read_exact
        self.offset = 0
        self._pending = 0  # data + padding of the current entry not yet consumed

    def _read(self, size: int) -> bytes:
        data = self._read_exact(size)
        self.offset += size
        return data

    def next_entry(self) -> TarEntry | None:
        """The next entry, or ``None`` at the end-of-archive marker."""
        if self._pending:
            self.skip()
        start = self.offset
        header = self._read(BLOCK)
        if header == _ZERO_BLOCK:
            if self._read(BLOCK) != _ZERO_BLOCK:
                raise _corrupt(start, "a zero block is followed by data (damaged archive)")
            return None
        kind, name, size = _parse_header(header, start)
        overrides: dict[str, str] = {}
        if kind == "pax":
            overrides = self._read_pax(size, start)
            kind, name, size = self._described_header(start)
        if "path" in overrides:
            name = overrides["path"]
        if "size" in overrides:
            size = _pax_size(overrides["size"], start)
        if kind == "dir":  # tar spells directories with one trailing slash, pax paths too
            name = name.removesuffix("/")
        self._pending = size
        return TarEntry(name=name, kind=kind, size=size, offset=start)

    def _read_pax(self, size: int, start: int) -> dict[str, str]:
        if size > _MAX_PAX_HEADER:
            raise LimitExceededError(
                f"tar pax header at byte {start} is {size} bytes, more than the limit of "
                f"{_MAX_PAX_HEADER}",
                hint="kbundle never writes such headers; refuse the bundle",
            )
        records = self._read(size)
        self._check_padding(size, start)
        return _parse_pax(records, start)

    def _described_header(self, pax_start: int) -> tuple[str, str, int]:
        """The header a pax header describes: it must come next and be a file or directory.
        Readers disagree on anything else (tarfile lets the first of two pax headers win,
        this reader the last; a global header mixes into both)."""
        start = self.offset
        header = self._read(BLOCK)
        if header == _ZERO_BLOCK:
            raise _differential(
                pax_start, "a pax extended header is followed by the end-of-archive marker"
            )
        kind, name, size = _parse_header(header, start)
        if kind == "pax":
            raise _differential(
                pax_start,
                "two pax extended headers in a row (Python's tarfile applies the first, "
                "other readers the second)",
            )
        if kind not in ("file", "dir"):
            raise _differential(
                pax_start,
                f"a pax extended header is followed by no file or directory header (found: {kind})",
            )
        return kind, name, size

    def read_data(self, chunk_size: int) -> Iterator[bytes]:
        """The current entry's data in chunks, then its padding is checked to be zeros."""
        size = remaining = self._pending
        while remaining:
            chunk = self._read(min(chunk_size, remaining))
            remaining -= len(chunk)
            self._pending = remaining
            yield chunk
        self._check_padding(size, self.offset - size)

    def skip(self) -> None:
        """Pass over the current entry's data without keeping it."""
        for _ in self.read_data(1 << 20):
            pass

    def _check_padding(self, size: int, data_offset: int) -> None:
        pad = -size % BLOCK
        if pad and self._read(pad).count(0) != pad:
            raise _corrupt(data_offset + size, "non-zero padding after member data")


def _corrupt(offset: int, what: str) -> IntegrityError:
    return IntegrityError(
        f"tar stream is corrupt at byte {offset}: {what}",
        hint="the bundle is damaged; fetch an intact copy",
    )


def _differential(offset: int, what: str) -> BundleFormatError:
    """A construct kbundle never writes and tar readers do not agree on (spec section 7)."""
    return BundleFormatError(
        f"tar header at byte {offset} is refused: {what}",
        hint="kbundle never writes this and other tar tools may extract it differently; "
        "the bundle was crafted or rewritten, so get one written by 'kbundle pack'",
    )


def _parse_header(header: bytes, offset: int) -> tuple[str, str, int]:
    stored = header[148:156]
    if not _OCTAL_FIELD.fullmatch(stored):
        raise _corrupt(offset, f"unreadable header checksum {stored!r}")
    expected = int(stored.replace(b"\0", b" "), 8)
    blanked = header[:148] + b" " * 8 + header[156:]
    unsigned = sum(blanked)
    signed = unsigned - 256 * sum(1 for byte in blanked if byte > 127)
    if expected not in (unsigned, signed):
        raise _corrupt(offset, "header checksum mismatch")
    if header[257:265] != _POSIX_MAGIC:
        raise _differential(
            offset,
            f"not a POSIX ustar header (magic and version {header[257:265]!r}, expected "
            f"{_POSIX_MAGIC!r})",
        )
    for field, (begin, end) in _IGNORED_NUMBERS.items():
        if header[begin:end].count(0) != end - begin and not _OCTAL_FIELD.fullmatch(
            header[begin:end]
        ):
            raise _differential(
                offset, f"{field} field {header[begin:end]!r} is not a plain octal number"
            )
    typeflag = header[156:157]
    kind = "pax" if typeflag == b"x" else _KINDS.get(typeflag, f"unknown type {typeflag!r}")
    name = _cstring(header[0:100], offset)
    prefix = _cstring(header[345:500], offset)
    if prefix:
        name = f"{prefix}/{name}"
    if typeflag == b"\0" and name.endswith("/"):
        raise _differential(
            offset,
            f"typeflag NUL with a name ending in '/' ({name!r}): Python's tarfile makes it a "
            "directory",
        )
    return kind, name, _size_field(header[124:136], offset)


def _cstring(field: bytes, offset: int) -> str:
    try:
        return field.split(b"\0", 1)[0].decode("utf-8")
    except UnicodeDecodeError:
        raise _corrupt(offset, "member name is not UTF-8") from None


def _size_field(field: bytes, offset: int) -> int:
    if field[0] & 0x80:  # GNU base-256 for sizes of 8 GiB and more
        if field[0] != 0x80:
            raise _corrupt(offset, "negative member size")
        return int.from_bytes(field[1:], "big")
    if not _OCTAL_FIELD.fullmatch(field):
        raise _differential(offset, f"size field {field!r} is not a plain octal number")
    return int(field.replace(b"\0", b" "), 8)


def _parse_pax(records: bytes, offset: int) -> dict[str, str]:
    if _HDRCHARSET in records:
        raise _differential(
            offset, "the pax header mentions hdrcharset (tarfile then decodes names differently)"
        )
    result: dict[str, str] = {}
    position = 0
    while position < len(records):
        match = _PAX_LENGTH.match(records, position)
        digits = match.group(1) if match else b""
        length = int(digits) if 0 < len(digits) <= _MAX_DECIMAL_DIGITS else 0
        end = position + length
        if not match or end <= match.end() or end > len(records) or records[end - 1] != 0x0A:
            raise _corrupt(offset, "malformed pax header record")
        key, sep, value = records[match.end() : end - 1].partition(b"=")
        if not sep:
            raise _corrupt(offset, "malformed pax header record")
        try:
            key_text, value_text = key.decode("utf-8"), value.decode("utf-8")
        except UnicodeDecodeError:
            raise _corrupt(offset, "pax header record is not UTF-8") from None
        if key_text not in _PAX_KEYS:
            raise _differential(
                offset,
                f"pax header key {key_text!r} is not allowed (only 'path' and 'size'; other "
                "tar tools act on it)",
            )
        if key_text in result:
            raise _corrupt(offset, f"pax header repeats {key_text!r}")
        result[key_text] = value_text
        position = end
    return result


def _pax_size(text: str, offset: int) -> int:
    if not (text.isascii() and text.isdigit()):  # str.isdigit alone accepts '²' and '٣'
        raise _corrupt(offset, f"pax size is not a number: {text!r}")
    if len(text) > _MAX_DECIMAL_DIGITS:
        raise _corrupt(offset, f"pax size has {len(text)} digits, more than {_MAX_DECIMAL_DIGITS}")
    return int(text)
