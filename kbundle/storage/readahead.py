"""Reading ahead of the reader: a background thread pulls a download's chunks into a bounded
queue while the verifier works on the previous ones, so the network and the CPU overlap and
memory stays at :data:`PREFETCH_CHUNKS` chunks. Stable: internal.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator

__all__ = ["PREFETCH_CHUNKS", "Prefetcher"]

# Chunks read ahead of the verifier: 8 MiB of 1 MiB chunks, as for local files' writers.
PREFETCH_CHUNKS = 8


class Prefetcher:
    """A readable stream over the chunks ``produce(stop)`` yields, which a background thread
    reads ahead into a bounded queue (:data:`PREFETCH_CHUNKS`); a failure there is raised by
    the next read. ``on_chunk`` is told the size of each chunk as the reader takes it.
    :meth:`close` sets ``stop`` and ends the thread, whatever it was doing."""

    def __init__(
        self,
        produce: Callable[[threading.Event], Iterator[bytes]],
        on_chunk: Callable[[int], None] | None = None,
    ) -> None:
        self._queue: queue.Queue[bytes | BaseException | None] = queue.Queue(PREFETCH_CHUNKS)
        self._stop = threading.Event()
        self._on_chunk = on_chunk
        self._item = b""  # the chunk being read, from self._position on
        self._position = 0
        self._done = False
        self._thread = threading.Thread(
            target=self._run, args=(produce,), name="kbundle-download", daemon=True
        )
        self._thread.start()

    def _run(self, produce: Callable[[threading.Event], Iterator[bytes]]) -> None:
        item: bytes | BaseException | None = None
        try:
            for chunk in produce(self._stop):
                if not self._put(chunk):
                    return
        except BaseException as exc:  # handed to the reader, raised there
            item = exc
        self._put(item)

    def _put(self, item: bytes | BaseException | None) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read(self, size: int = -1) -> bytes:
        if self._position == len(self._item):
            if self._done:
                return b""
            item = self._queue.get()
            if item is None:
                self._done = True
                return b""
            if isinstance(item, BaseException):
                self._done = True
                raise item
            self._item, self._position = item, 0
            if self._on_chunk is not None:
                self._on_chunk(len(item))
        start = self._position
        end = len(self._item) if size < 0 else min(len(self._item), start + size)
        self._position = end
        if start == 0 and end == len(self._item):
            return self._item  # the usual case: a whole chunk, not copied
        return self._item[start:end]

    def close(self) -> None:
        self._stop.set()
        while True:  # unblock a producer waiting to put
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=30)
