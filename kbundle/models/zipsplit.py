"""Taking a ``.keras`` zip's large stored members out of the bundle stream as it is extracted.

``kbundle.load`` hands Keras 3 the unzipped form of a ``.keras`` file (from a zip, Keras copies
the weights into memory first). Extracting the zip and then unzipping it wrote the weights
twice into load's private directory and read them once more. Instead, as the verified stream
passes, a :class:`ZipSplitter` reads each local file header: the data of a stored member of at
least :data:`MIN_SPLIT_BYTES` goes straight to its own file in the unzip directory (its
CRC-32 computed on the way), and the zip itself is written with a hole where that data was.

A split is only a claim about the zip. Before anything is loaded, the pre-load checks hold
every split member against the central directory (the same name, the same byte range, the
CRC-32 it declares) and refuse the model when they disagree, exactly as for a member they
unzip themselves. Anything the splitter does not expect (a data descriptor, an encrypted or
oddly named member, the central directory itself) ends splitting, and the rest of the zip is
written as it is. Stable: internal.
"""

from __future__ import annotations

import contextlib
import shutil
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kbundle._io.writers import QueuedWriter
from kbundle.container.limits import CHUNK_SIZE
from kbundle.models.zipmember import zip_name_problem

__all__ = ["MIN_SPLIT_BYTES", "SplitMember", "ZipSplit", "ZipSplitter"]

# Smaller members (config.json, metadata.json) are left in the zip: unzipping them later costs
# nothing, and the fewer claims to check the better.
MIN_SPLIT_BYTES = 1024 * 1024

_LOCAL_HEADER = b"PK\x03\x04"
_FIXED = 30  # bytes of a local file header before its name and extra field
_ZIP64_EXTRA = 0x0001
_ENCRYPTED, _DATA_DESCRIPTOR, _UTF8 = 0x0001, 0x0008, 0x0800


@dataclass(frozen=True, slots=True)
class SplitMember:
    """A member written to its own file: its data's byte range in the zip and actual CRC-32."""

    name: str
    start: int
    size: int
    crc: int


@dataclass(frozen=True, slots=True)
class _Header:
    name: str | None  # None: not a name this splitter writes a file for
    flags: int
    method: int
    compressed: int
    uncompressed: int


class ZipSplitter:
    """Write a zip's bytes, given in order, to ``zip_out``, with large stored members' data
    written under ``directory`` instead. :meth:`close` returns what was split."""

    def __init__(
        self, zip_out: QueuedWriter, directory: Path, *, min_size: int = MIN_SPLIT_BYTES
    ) -> None:
        self._out, self._directory, self._min_size = zip_out, directory, min_size
        self._offset = 0  # zip bytes consumed so far
        self._header = bytearray()
        self._state = "header"  # header | data | pass
        self._left = 0  # data bytes of the current member still to come
        self._current: tuple[QueuedWriter, Path, SplitMember] | None = None
        self._crc = 0
        self._split: dict[str, SplitMember] = {}

    def write(self, chunk: bytes | memoryview) -> None:
        view = memoryview(chunk)
        while view:
            if self._state == "pass":
                self._emit(view)
                return
            view = self._data(view) if self._state == "data" else self._collect_header(view)

    def _emit(self, data: bytes | bytearray | memoryview) -> None:
        self._out.write(data)
        self._offset += len(data)

    def _data(self, view: memoryview) -> memoryview:
        count = min(len(view), self._left)
        part = view[:count]
        if self._current is None:
            self._emit(part)
        else:
            self._current[0].write(part)
            self._crc = zlib.crc32(part, self._crc)
            self._out.skip(count)
            self._offset += count
        self._left -= count
        if self._left == 0:
            self._end_member()
        return view[count:]

    def _collect_header(self, view: memoryview) -> memoryview:
        take = min(len(view), self._header_size() - len(self._header))
        self._header += view[:take]
        view = view[take:]
        if len(self._header) >= 4 and self._header[:4] != _LOCAL_HEADER:
            self._pass_through()  # the central directory, or something unexpected
        elif len(self._header) == self._header_size():
            self._start_member(_parse(bytes(self._header)))
        return view

    def _header_size(self) -> int:
        """The fixed part until it is in, then the whole header with name and extra field."""
        if len(self._header) < _FIXED:
            return _FIXED
        name_len, extra_len = struct.unpack_from("<HH", self._header, 26)
        return _FIXED + int(name_len) + int(extra_len)

    def _pass_through(self) -> None:
        self._emit(self._header)
        self._header = bytearray()
        self._state = "pass"

    def _start_member(self, header: _Header | None) -> None:
        if header is None or header.flags & _DATA_DESCRIPTOR:
            self._pass_through()  # the data's length is not known from the header
            return
        self._emit(self._header)
        self._header = bytearray()
        self._state, self._left = "data", header.compressed
        if (
            header.name is not None
            and header.method == 0
            and not header.flags & _ENCRYPTED
            and header.compressed == header.uncompressed >= self._min_size
            and header.name not in self._split
        ):
            self._open_split(SplitMember(header.name, self._offset, header.compressed, 0))
        if self._left == 0:
            self._end_member()

    def _open_split(self, member: SplitMember) -> None:
        target = self._directory / member.name
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            writer = QueuedWriter.create(target)
        except OSError:
            # The name clashes with a file or directory already written (a duplicate, or one
            # that differs only in case on such a file system): the data stays in the zip,
            # where the pre-load checks judge the member like any other.
            return
        self._current, self._crc = (writer, target, member), 0

    def _end_member(self) -> None:
        self._state = "header"
        if self._current is None:
            return
        writer, _target, member = self._current
        self._current = None
        writer.close()
        self._split[member.name] = SplitMember(member.name, member.start, member.size, self._crc)

    def close(self) -> dict[str, SplitMember]:
        """Finish the zip (and any member cut short: its file is removed) and return the
        members split, by name."""
        self._discard_current()
        if self._header:
            self._emit(self._header)
            self._header = bytearray()
        self._out.close()
        return dict(self._split)

    def abort(self) -> None:
        """Stop after a failure: close every file, keep no claims."""
        self._discard_current()
        with contextlib.suppress(OSError):
            self._out.close()
        self._split.clear()

    def _discard_current(self) -> None:
        if self._current is None:
            return
        writer, target, _member = self._current
        self._current = None
        with contextlib.suppress(OSError):
            writer.close()
        target.unlink(missing_ok=True)


def _parse(header: bytes) -> _Header | None:
    flags, method = struct.unpack_from("<HH", header, 6)
    compressed, uncompressed, name_len, extra_len = struct.unpack_from("<IIHH", header, 18)
    raw_name = header[_FIXED : _FIXED + name_len]
    extra = header[_FIXED + name_len : _FIXED + name_len + extra_len]
    if 0xFFFFFFFF in (compressed, uncompressed):
        sizes = _zip64_sizes(extra, uncompressed == 0xFFFFFFFF, compressed == 0xFFFFFFFF)
        if sizes is None:
            return None
        uncompressed = sizes[0] if uncompressed == 0xFFFFFFFF else uncompressed
        compressed = sizes[1] if compressed == 0xFFFFFFFF else compressed
    return _Header(_split_name(raw_name, flags), flags, method, compressed, uncompressed)


def _zip64_sizes(
    extra: bytes, has_uncompressed: bool, has_compressed: bool
) -> tuple[int, int] | None:
    """The 64-bit sizes from a local header's zip64 extra field (in the order the format
    gives them: uncompressed, then compressed, each only when its 32-bit field is 0xFFFFFFFF)."""
    position = 0
    while position + 4 <= len(extra):
        kind, size = struct.unpack_from("<HH", extra, position)
        body = extra[position + 4 : position + 4 + size]
        position += 4 + size
        if kind != _ZIP64_EXTRA:
            continue
        values = [int.from_bytes(body[i : i + 8], "little") for i in range(0, len(body) - 7, 8)]
        uncompressed = values.pop(0) if has_uncompressed and values else 0
        compressed = values.pop(0) if has_compressed and values else 0
        return uncompressed, compressed
    return None


def _split_name(raw: bytes, flags: int) -> str | None:
    """The member's name when it is one to write a file under (a plain relative path)."""
    try:
        name = raw.decode("utf-8" if flags & _UTF8 else "ascii")
    except UnicodeDecodeError:
        return None
    if name.endswith("/") or zip_name_problem(name):
        return None
    return name


class ZipSplit:
    """The plan for one bundle member (a ``.keras`` zip, by its path in the bundle): split it
    into ``directory`` while it is extracted; afterwards :attr:`members` says what was split."""

    def __init__(self, member: str, directory: Path, *, min_size: int = MIN_SPLIT_BYTES) -> None:
        self.member = member
        self.directory = directory
        self.min_size = min_size
        self.members: dict[str, SplitMember] = {}

    @contextlib.contextmanager
    def writer(self, target: Path) -> Iterator[ZipSplitter]:
        """The sink for the member's bytes, written to ``target`` with the split members'
        data left out."""
        self.directory.mkdir(parents=True, exist_ok=True)
        splitter = ZipSplitter(QueuedWriter.create(target), self.directory, min_size=self.min_size)
        try:
            yield splitter
        except BaseException:
            splitter.abort()
            raise
        self.members = splitter.close()

    def restore(self, zip_path: Path) -> None:
        """Put the split members' data back into the holes of ``zip_path`` (for a Keras
        that reads only the zip), and forget the split."""
        with zip_path.open("r+b") as out:
            for member in self.members.values():
                out.seek(member.start)
                with (self.directory / member.name).open("rb") as data:
                    shutil.copyfileobj(data, out, CHUNK_SIZE)
        shutil.rmtree(self.directory)
        self.members = {}
