"""Opening a bundle for reading: a local file, standard input, or a URL.

The container reads what this module opens as a stream, once, front to back (kbundle.container
.reader). For a URL that is either the whole object, streamed once with read-ahead
(kbundle.storage.remote), or, when only the header region is wanted (``inspect``,
``check``), the first frame alone by range requests: the first request asks for
:data:`FIRST_RANGE` bytes, whose first frame header gives the header region's exact size, so
a bundle of any size costs one request (two for a manifest over 64 KiB) and never a byte of
its payload. Stable: internal.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from kbundle.container.reader import ByteSource
from kbundle.container.writer import HEADER_PROBE_SIZE, header_region_size_of
from kbundle.errors import UsageError
from kbundle.storage.locations import Location
from kbundle.storage.readahead import Prefetcher
from kbundle.storage.remote import RemoteFile

__all__ = ["FIRST_RANGE", "BundleSource", "open_bundle"]

# The first range request of a header read: a manifest of a few hundred distributions is
# ~50 KiB, so one request usually holds the whole header region.
FIRST_RANGE = 64 * 1024
# When the first frame does not say its size (a bundle another tool re-compressed), ranges
# grow from FIRST_RANGE by doubling up to this, until the reader has the header.
_MAX_RANGE = 4 * 1024 * 1024

TransferProgress = Callable[[int, int], None]
"""Called with (bytes transferred, object size; 0 when unknown)."""


@dataclass(frozen=True, slots=True)
class BundleSource:
    """An open bundle: its bytes, and the name messages give it."""

    stream: ByteSource
    name: str


@contextmanager
def open_bundle(
    location: Location, *, head_only: bool = False, progress: TransferProgress | None = None
) -> Iterator[BundleSource]:
    """``location`` opened for reading. ``head_only``: only the header region will be read
    (for a URL, by range requests, see the module docstring). ``progress`` is told the bytes
    transferred of a URL's object (files and standard input report nothing here)."""
    name = location.display
    if location.path is not None:
        try:
            handle = location.path.open("rb")
        except IsADirectoryError:
            raise UsageError(
                f"{location.path} is a directory, not a bundle", hint="pass a .kbundle file"
            ) from None
        except FileNotFoundError:
            raise UsageError(f"{location.path} does not exist", hint="check the path") from None
        except OSError as exc:
            raise UsageError(
                f"cannot open {location.path}: {exc.strerror}", hint="check the path"
            ) from None
        with handle:
            yield BundleSource(handle, name)
        return
    if location.url is None:
        yield BundleSource(_standard_input(), "standard input")
        return
    remote = RemoteFile(location)
    if head_only:
        yield BundleSource(_HeadRanges(remote), name)
        return
    size = remote.size  # looked up first: a missing object fails before any download starts
    done = 0

    def transferred(count: int) -> None:
        nonlocal done
        done += count
        if progress is not None:
            progress(done, size or 0)

    prefetcher = Prefetcher(remote.chunks, transferred)
    try:
        yield BundleSource(prefetcher, name)
    finally:
        prefetcher.close()


def _standard_input() -> ByteSource:
    stream = sys.stdin
    if getattr(stream, "buffer", None) is None:  # none at all, or text only (Jupyter)
        raise UsageError(
            "standard input holds no bundle here (it is not a byte stream)",
            hint="pass a file or a URL",
        )
    if stream.isatty():
        raise UsageError(
            "standard input is a terminal, not a bundle",
            hint="pipe a bundle in: ... | kbundle verify -",
        )
    return stream.buffer


class _HeadRanges:
    """The header region of a remote bundle by range requests (the module docstring); the
    stream ends after it, which the reader takes as the head being complete."""

    def __init__(self, remote: RemoteFile) -> None:
        self._remote = remote
        self._fetched = 0  # bytes of the object requested so far
        self._end = remote.size  # where the stream ends: the header region once it is known
        self._range = FIRST_RANGE
        self._sized = False
        self._buffer = b""
        self._position = 0

    def read(self, size: int = -1) -> bytes:
        if self._position == len(self._buffer):
            self._buffer, self._position = self._fetch(), 0
        start = self._position
        end = len(self._buffer) if size < 0 else min(len(self._buffer), start + size)
        self._position = end
        return self._buffer[start:end]

    def _fetch(self) -> bytes:
        if self._end is not None and self._fetched >= self._end:
            return b""
        want = self._range
        if self._sized and self._end is not None:
            want = self._end - self._fetched  # the rest of the header region, at once
        stop = self._fetched + want if self._end is None else min(self._fetched + want, self._end)
        data = self._remote.read_range(self._fetched, stop)
        if self._fetched == 0:
            region = header_region_size_of(data[:HEADER_PROBE_SIZE])
            if region is not None:
                self._end = region if self._end is None else min(self._end, region)
                self._sized = True
                data = data[: self._end]
        self._range = min(self._range * 2, _MAX_RANGE)
        self._fetched += len(data)
        if not data:
            self._end = self._fetched  # the object ended early
        return data
