"""Writing a large output sequentially without passing it through the page cache.

A bundle is written once and then shipped; nothing in kbundle reads it back. Through the page
cache, every byte is first copied into freshly allocated cache pages, and on the 2-CPU VM
kbundle is developed on that copy was the largest single cost of a 1 GiB pack (35% of its
CPU samples in the kernel's copy into the cache), paid again as disk writeback by the fsync
that makes the output durable. With ``O_DIRECT`` the disk reads kbundle's own two reusable
buffers instead: one is filled while the other is written on a background thread.

Direct I/O wants the offset, the length and the memory address aligned to the device's block
size; :data:`ALIGNMENT` (4 KiB) satisfies every common device. The stream is aligned because
it starts at offset 0 and is written in whole buffers; whatever does not fill a whole block
at the end (and any later ``seek`` and ``write``, such as patching the header) goes through
the ordinary buffered path after ``O_DIRECT`` is switched off again. Where the file system
refuses ``O_DIRECT`` (or the platform has none), every write is simply buffered.
Stable: internal.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO

__all__ = ["ALIGNMENT", "DirectWriter", "direct_writes"]

ALIGNMENT = 4096
# Each of the two buffers. Large enough that a write is one efficient device request, small
# enough to keep pack's memory bounded (8 MiB in all).
BUFFER_SIZE = 4 * 1024 * 1024

_O_DIRECT = getattr(os, "O_DIRECT", 0)


class DirectWriter:
    """A write-only stream over ``handle`` that bypasses the page cache while it is written
    sequentially from an aligned offset, and becomes an ordinary buffered file after the
    first :meth:`seek` (or :meth:`finish`).

    ``direct`` says whether ``O_DIRECT`` took effect. Errors from the background write (a
    full disk, say) are raised from the next :meth:`write` or from :meth:`finish`.
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
            _write_all, self._fd, self._buffers[index], self._fill, self._offset
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
        _write_all(self._fd, tail, self._fill, self._offset)
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
    if not _O_DIRECT:
        return False
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | _O_DIRECT)
    except OSError:
        return False  # the file system does not do direct I/O
    return True


def _write_all(fd: int, buffer: mmap.mmap, size: int, offset: int) -> None:
    done = 0
    with memoryview(buffer) as whole:
        while done < size:
            with whole[done:size] as part:
                written = os.pwrite(fd, part, offset + done)
            if written <= 0:  # nothing more fits
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            done += written


@contextlib.contextmanager
def direct_writes(handle: BinaryIO) -> Iterator[DirectWriter]:
    """A :class:`DirectWriter` over ``handle``, finished on success and closed either way."""
    writer = DirectWriter(handle)
    try:
        yield writer
        writer.finish()
    finally:
        writer.close()
