"""Large output files written sequentially on a background thread, so that the kernel's copy
(or the disk) works while the caller produces the next chunk. Stable: internal.

:class:`QueuedWriter` hands each chunk as it is to a writer thread: extraction decompresses
the next megabyte while the last one is copied into the page cache (written inline, that
copy was most of an ``unpack --no-load``: benchmarks/README.md, "Why the code is shaped so").

:class:`DirectWriter` writes a bundle with ``O_DIRECT``. A bundle is written once and then
shipped; nothing in kbundle reads it back. Through the page cache, every byte is first copied
into freshly allocated cache pages (the largest single cost of a large pack, paid again as disk
writeback by the fsync that makes the output durable). With ``O_DIRECT`` the disk reads
kbundle's own two reusable buffers instead: one is filled while the other is written. Direct
I/O wants the offset, the length and the memory address aligned to the device's block size;
:data:`ALIGNMENT` (4 KiB) satisfies every common device. The stream is aligned because it
starts at offset 0 and is written in whole buffers; whatever does not fill a whole block at the
end (and any later ``seek`` and ``write``, such as patching the header) goes through the
ordinary buffered path after ``O_DIRECT`` is switched off again. Where the file system refuses
``O_DIRECT`` (or the platform has none), every write is simply buffered.

Errors of the background write (a full disk, say) are raised in the caller, from the next
``write`` or from ``close``/``finish``.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import queue
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

if sys.platform != "win32":  # no fcntl (and no O_DIRECT) on Windows: writes stay buffered
    import fcntl

__all__ = ["ALIGNMENT", "DirectWriter", "QueuedWriter", "direct_writes"]

ALIGNMENT = 4096
# Each of the two buffers. Large enough that a write is one efficient device request, small
# enough to keep pack's memory bounded (8 MiB in all).
BUFFER_SIZE = 4 * 1024 * 1024

_O_DIRECT = getattr(os, "O_DIRECT", 0)
# Chunks handed to a QueuedWriter's thread and not yet written: 8 MiB of 1 MiB chunks.
QUEUE_DEPTH = 8


class QueuedWriter:
    """Write chunks to the file descriptor ``fd`` (owned: closed by :meth:`close`) on a
    background thread, in order."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._queue: queue.Queue[bytes | memoryview | int | None] = queue.Queue(maxsize=QUEUE_DEPTH)
        self._end = 0  # the file's size once everything queued is written
        self._holes = False
        self._error: OSError | None = None
        self._thread = threading.Thread(target=self._run, name="kbundle-write", daemon=True)
        self._thread.start()

    @classmethod
    def create(cls, path: Path, mode: int = 0o644) -> QueuedWriter:
        """A writer for the new file ``path``: never an existing file, never through a link."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        return cls(os.open(path, flags, mode))

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None:  # after a failure, drain without writing
                try:
                    if isinstance(item, int):
                        os.lseek(self._fd, item, os.SEEK_CUR)
                    else:
                        _write_fully(self._fd, item)
                except OSError as exc:
                    self._error = exc

    def write(self, chunk: bytes | bytearray | memoryview) -> None:
        """Queue ``chunk``; one whose buffer can change (a bytearray, a view of one) is copied
        first, since its owner may reuse it at once. A view of ``bytes`` is queued as it is."""
        if self._error is not None:
            raise self._error
        if chunk:
            item: bytes | memoryview
            if isinstance(chunk, bytes):
                item = chunk
            elif isinstance(chunk, memoryview) and isinstance(chunk.obj, bytes):
                item = chunk  # the view keeps its bytes alive, and bytes never change
            else:
                item = bytes(chunk)
            self._queue.put(item)
            self._end += len(chunk)

    def skip(self, count: int) -> None:
        """Leave ``count`` bytes unwritten: a hole, read back as zeros, that takes no space
        on file systems with sparse files."""
        if self._error is not None:
            raise self._error
        if count > 0:
            self._queue.put(count)
            self._end += count
            self._holes = True

    def close(self) -> None:
        """Wait until everything is written, close the file, and raise a write error if any."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        fd, self._fd = self._fd, -1
        try:
            if fd >= 0 and self._holes and self._error is None:
                os.ftruncate(fd, self._end)  # a hole at the very end still counts
            if fd >= 0:
                os.close(fd)  # some file systems report a failed write only here
        finally:
            if self._error is not None:
                raise self._error

    def __enter__(self) -> QueuedWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
            return
        with contextlib.suppress(OSError):  # the error in flight explains more
            self.close()


def _write_fully(
    fd: int,
    data: bytes | memoryview | mmap.mmap,
    size: int | None = None,
    offset: int | None = None,
) -> None:
    """Write the first ``size`` bytes of ``data`` (all of it by default), at the file position
    or, given ``offset``, there (``pwrite``). Every view is released before returning, so an
    ``mmap`` passed in can be closed afterwards."""
    done = 0
    with memoryview(data) as whole:
        end = len(whole) if size is None else size
        while done < end:
            with whole[done:end] as part:
                if offset is None:
                    written = os.write(fd, part)
                else:
                    written = os.pwrite(fd, part, offset + done)
            if written <= 0:  # nothing more fits
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            done += written


class DirectWriter:
    """A write-only stream over ``handle`` that bypasses the page cache while it is written
    sequentially from an aligned offset, and becomes an ordinary buffered file after the
    first :meth:`seek` (or :meth:`finish`).

    ``direct`` says whether ``O_DIRECT`` took effect.
    """

    def __init__(self, handle: BinaryIO, *, buffer_size: int = BUFFER_SIZE) -> None:
        if buffer_size <= 0 or buffer_size % ALIGNMENT:
            raise ValueError(f"buffer_size must be a positive multiple of {ALIGNMENT}")
        self._handle = handle
        handle.flush()
        self._offset = handle.tell()
        self._fd = handle.fileno()
        self.direct = self._offset % ALIGNMENT == 0 and _enable_direct(self._fd)
        self._buffers: list[mmap.mmap] = []
        self._pending: list[Future[None] | None] = []
        self._executor: ThreadPoolExecutor | None = None
        if self.direct:
            self._buffers = [mmap.mmap(-1, buffer_size) for _ in range(2)]
            self._pending = [None, None]
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="kbundle-write")
        self._current = 0
        self._fill = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if not self.direct:
            return self._handle.write(data)
        with memoryview(data) as view, view.cast("B") as octets:
            size, done = len(octets), 0
            while done < size:
                buffer = self._buffers[self._current]
                count = min(size - done, len(buffer) - self._fill)
                buffer[self._fill : self._fill + count] = octets[done : done + count]
                self._fill += count
                done += count
                if self._fill == len(buffer):
                    self._submit()
        return size

    def flush(self) -> None:
        """Nothing to do: data is written in whole buffers, the rest by :meth:`finish`."""

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self.finish()
        return self._handle.seek(offset, whence)

    def tell(self) -> int:
        return self._offset + self._fill if self.direct else self._handle.tell()

    def _submit(self) -> None:
        assert self._executor is not None
        index = self._current
        self._pending[index] = self._executor.submit(
            _write_fully, self._fd, self._buffers[index], self._fill, self._offset
        )
        self._offset += self._fill
        self._fill = 0
        self._current = 1 - index
        self._wait(self._current)  # the buffer to fill next must be written out first

    def _wait(self, index: int) -> None:
        future = self._pending[index]
        self._pending[index] = None
        if future is not None:
            future.result()

    def finish(self) -> None:
        """Write what is buffered, switch ``O_DIRECT`` off, and leave ``handle`` positioned at
        the end of what was written. Later writes go straight to ``handle``."""
        if not self.direct:
            return
        self._wait(1 - self._current)
        self.direct = False
        flags = fcntl.fcntl(self._fd, fcntl.F_GETFL)
        fcntl.fcntl(self._fd, fcntl.F_SETFL, flags & ~_O_DIRECT)
        tail = self._buffers[self._current]
        _write_fully(self._fd, tail, self._fill, self._offset)
        self._handle.seek(self._offset + self._fill)
        self.close()

    def close(self) -> None:
        """Stop the background writer and free the buffers (after a failure: without writing
        what is buffered)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        for buffer in self._buffers:
            buffer.close()
        self._buffers = []
        self.direct = False


def _enable_direct(fd: int) -> bool:
    if not _O_DIRECT or sys.platform == "win32":
        return False
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | _O_DIRECT)
    except OSError:
        return False  # the file system does not do direct I/O
    return True


@contextlib.contextmanager
def direct_writes(handle: BinaryIO) -> Iterator[DirectWriter]:
    """A :class:`DirectWriter` over ``handle``, finished on success and closed either way."""
    writer = DirectWriter(handle)
    try:
        yield writer
        writer.finish()
    finally:
        writer.close()
