"""Reading one member of a zip archive (a ``.keras`` file) quickly and with seeks.

h5py reads an HDF5 member by seeking back and forth. Python's ``ZipExtFile`` answers a backward
seek by reading the member again from its start, so reading a large stored weights file that
way costs a full read per backward seek. A *stored* member is a plain byte range of the
archive: it is served through a seekable window on the file itself. Compressed members go
through ``zipfile`` as usual. Stable: internal.
"""

from __future__ import annotations

import contextlib
import io
import re
import struct
import zipfile
from pathlib import Path
from typing import IO, Any, cast

__all__ = ["data_offset", "open_zip_member", "zip_name_problem"]

_LOCAL_HEADER = b"PK\x03\x04"


def data_offset(handle: IO[bytes], info: zipfile.ZipInfo) -> int | None:
    """Where a member's data starts: after its local header, whose name and extra field
    lengths may differ from the central directory's (``None`` if there is no such header)."""
    handle.seek(info.header_offset)
    header = handle.read(30)
    if len(header) < 30 or header[:4] != _LOCAL_HEADER:
        return None
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return int(info.header_offset) + 30 + int(name_len) + int(extra_len)


def zip_name_problem(member: str) -> str | None:
    """Why a member name must not be written under a directory (``None``: it may)."""
    if not member or "\x00" in member:
        return "empty name or NUL byte"
    if member.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", member):
        return "absolute path"
    if "\\" in member:
        return "backslash in name"
    if ".." in member.split("/"):
        return "'..' component (path traversal)"
    return None


def open_zip_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> IO[bytes]:
    """The member for reading: a seekable window for a stored member, else ``zipfile``'s."""
    if info.compress_type == zipfile.ZIP_STORED and archive.filename:
        with contextlib.ExitStack() as stack:
            raw = stack.enter_context(Path(archive.filename).open("rb"))
            start = data_offset(raw, info)
            if start is not None:
                stack.pop_all()  # the window owns the handle now and closes it
                return cast(IO[bytes], _Window(raw, start, info.file_size))
    return archive.open(info)


class _Window(io.RawIOBase):
    """A read-only, seekable view of ``size`` bytes of ``raw`` from ``start``."""

    def __init__(self, raw: IO[bytes], start: int, size: int) -> None:
        super().__init__()
        self._raw, self._start, self._size, self._pos = raw, start, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        count = max(0, min(len(buffer), self._size - self._pos))
        if count == 0:
            return 0
        self._raw.seek(self._start + self._pos)
        data = self._raw.read(count)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def close(self) -> None:
        self._raw.close()
        super().close()
