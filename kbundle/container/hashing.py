"""SHA-256 of streamed data, computed on a background thread.

hashlib and zstd both release the GIL on large buffers, so hashing a chunk on one thread
while the next chunk is compressed (or decompressed) on another overlaps the two costs. The
queue is bounded, so memory stays at a few chunks however large the member. Stable: internal.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from pathlib import Path
from types import TracebackType

from kbundle.container.limits import CHUNK_SIZE
from kbundle.container.manifest import format_digest

__all__ = ["PipelinedHasher", "digest_bytes", "file_digest"]

_QUEUE_DEPTH = 8  # chunks in flight: 8 MiB at most


class PipelinedHasher:
    """Hash a sequence of members on one worker thread.

    ``start()`` begins a member, ``update()`` queues a chunk, ``digest()`` waits for the
    member's digest (``sha256:<hex>``). Use as a context manager so the thread always ends.
    """

    def __init__(self) -> None:
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=_QUEUE_DEPTH)
        self._results: queue.Queue[str] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="kbundle-sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        hasher = hashlib.sha256()
        while True:
            chunk = self._queue.get()
            if chunk is None:
                self._results.put(format_digest(hasher.hexdigest()))
                hasher = hashlib.sha256()
            elif chunk is _STOP:
                return
            else:
                hasher.update(chunk)

    def update(self, chunk: bytes) -> None:
        if chunk:
            self._queue.put(chunk)

    def digest(self) -> str:
        """Finish the current member and return its digest; the next update starts a new one."""
        self._queue.put(None)
        return self._results.get()

    def close(self) -> None:
        self._queue.put(_STOP)
        self._thread.join()

    def __enter__(self) -> PipelinedHasher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


_STOP = b"\0stop"  # identity-compared sentinel; never a real chunk object


def file_digest(path: Path) -> str:
    """The digest of a whole file, read in chunks."""
    hasher = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK_SIZE), b""):
            hasher.update(chunk)
    return format_digest(hasher.hexdigest())


def digest_bytes(digest: str) -> bytes:
    """The raw bytes of a ``sha256:<hex>`` digest (what a trailer frame stores)."""
    return bytes.fromhex(digest.partition(":")[2])
