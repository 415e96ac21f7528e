"""Strict tar: writing member headers, and reading a tar stream that must be exactly as written.

kbundle writes POSIX pax tar (headers from the standard library's ``tarfile``), so any tar
tool reads a bundle. It reads with this module rather than ``tarfile`` because a verifier
must account for every byte: header checksums are checked, padding and the end-of-archive
trailer must be zeros, and only the entry kinds the format allows (regular files,
directories, and pax extended headers carrying ``path``/``size``) are accepted. Everything
else (links, devices, FIFOs, GNU long names, sparse files, global headers) is reported as a
disallowed kind and its data skipped, never written. Stable: internal.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from kbundle.errors import IntegrityError, LimitExceededError

__all__ = ["BLOCK", "END_OF_ARCHIVE", "TarEntry", "TarReader", "member_header", "padding"]

BLOCK = 512
END_OF_ARCHIVE = b"\0" * (2 * BLOCK)
# A pax header for our own names is under 2 KiB; refuse larger ones before reading them.
_MAX_PAX_HEADER = 64 * 1024

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
    """The pax tar header for one member, with fixed owner and mode."""
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if is_dir else tarfile.REGTYPE
    info.size = 0 if is_dir else size
    info.mode = 0o755 if is_dir else 0o644
    info.mtime = mtime
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
    offset: int  # of its header in the decompressed stream


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
        overrides: dict[str, str] = {}
        while True:
            start = self.offset
            header = self._read(BLOCK)
            if header == b"\0" * BLOCK:
                if self._read(BLOCK) != b"\0" * BLOCK:
                    raise _corrupt(start, "a zero block is followed by data (damaged archive)")
                return None
            kind, name, size = _parse_header(header, start)
            if kind == "pax":
                if size > _MAX_PAX_HEADER:
                    raise LimitExceededError(
                        f"tar pax header at byte {start} is {size} bytes, more than the limit of "
                        f"{_MAX_PAX_HEADER}",
                        hint="kbundle never writes such headers; refuse the bundle",
                    )
                records = self._read(size)
                self._check_padding(size, start)
                overrides = _parse_pax(records, start)
                continue
            if "path" in overrides:
                name = overrides["path"]
            if "size" in overrides:
                size = _pax_int(overrides["size"], start)
            if any(key.startswith("GNU.sparse") for key in overrides):
                kind = "GNU sparse file"
            if kind == "dir":  # tar spells directories with a trailing slash, pax paths too
                name = name.rstrip("/")
            self._pending = size
            return TarEntry(name=name, kind=kind, size=size, offset=start)

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


def _parse_header(header: bytes, offset: int) -> tuple[str, str, int]:
    stored = header[148:156]
    try:
        expected = int(stored.replace(b"\0", b" ").strip() or b"-1", 8)
    except ValueError:
        raise _corrupt(offset, f"unreadable header checksum {stored!r}") from None
    blanked = header[:148] + b" " * 8 + header[156:]
    unsigned = sum(blanked)
    signed = unsigned - 256 * sum(1 for byte in blanked if byte > 127)
    if expected not in (unsigned, signed):
        raise _corrupt(offset, "header checksum mismatch")
    typeflag = header[156:157]
    kind = "pax" if typeflag == b"x" else _KINDS.get(typeflag, f"unknown type {typeflag!r}")
    name = _cstring(header[0:100], offset)
    if header[257:263] == b"ustar\0":  # POSIX: a prefix field extends the name
        prefix = _cstring(header[345:500], offset)
        if prefix:
            name = f"{prefix}/{name}"
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
    text = field.replace(b"\0", b" ").strip()
    try:
        return int(text or b"0", 8)
    except ValueError:
        raise _corrupt(offset, f"unreadable member size {field!r}") from None


def _parse_pax(records: bytes, offset: int) -> dict[str, str]:
    result: dict[str, str] = {}
    position = 0
    while position < len(records):
        space = records.find(b" ", position)
        try:
            length = int(records[position:space]) if space > position else 0
        except ValueError:
            length = 0
        end = position + length
        if length <= 0 or end > len(records) or records[end - 1 : end] != b"\n":
            raise _corrupt(offset, "malformed pax header record")
        key, sep, value = records[space + 1 : end - 1].partition(b"=")
        if not sep:
            raise _corrupt(offset, "malformed pax header record")
        try:
            key_text, value_text = key.decode("utf-8"), value.decode("utf-8")
        except UnicodeDecodeError:
            raise _corrupt(offset, "pax header record is not UTF-8") from None
        if key_text in result:
            raise _corrupt(offset, f"pax header repeats {key_text!r}")
        result[key_text] = value_text
        position = end
    return result


def _pax_int(text: str, offset: int) -> int:
    if not (text.isascii() and text.isdigit()):  # str.isdigit alone accepts '²' and '٣'
        raise _corrupt(offset, f"pax size is not a number: {text!r}")
    return int(text)
