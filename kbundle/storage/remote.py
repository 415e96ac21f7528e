"""Bundles in fsspec filesystems: the filesystem for a URL, reads (byte ranges, or the whole
object streamed once) with retries, and the store's failures as one clear line.

fsspec is imported only here, on first use of a URL, so ``import kbundle`` and everything on
local files never pays for it; the filesystem package itself (s3fs, gcsfs, aiohttp) comes
with an extra, and a missing one is named in the error (``pip install 'kbundle[s3]'``).

**Retries.** Every request kbundle makes is retried on transient failures (a 5xx, throttling
such as S3's ``503 SlowDown`` or HTTP 429, a reset or timed-out connection) with
exponential backoff and full jitter, :data:`ATTEMPTS` attempts in all; then the failure is
reported by kind (throttled, server error, connection) with the attempts made. Access denied
and not found are reported at once. s3fs and botocore would retry too, each with its own
count and delays, multiplying the attempts and the wait; kbundle turns theirs off for the
filesystems it opens (unless the caller configures botocore's retries) so that one policy
applies to every store.

**Streaming.** A whole-object read is one streamed GET (``open_async`` where the filesystem
has it: s3fs, HTTP), read ahead on a background thread into a bounded queue, so the network
and the verification overlap and memory stays at :data:`PREFETCH_CHUNKS` chunks. When the
connection breaks mid-object the read resumes from the byte reached with range requests;
the bytes are checked by the reader anyway (every member digest and the trailer), so a
resumed read of an object replaced meanwhile fails verification instead of mixing unnoticed.

Messages quote the URL without credentials (:meth:`Location.scrub`). Stable: internal.
"""

from __future__ import annotations

import contextlib
import errno
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from kbundle.container.limits import CHUNK_SIZE
from kbundle.errors import OutputExistsError, StorageError, UsageError, exception_summary
from kbundle.storage.locations import Location

__all__ = [
    "ATTEMPTS",
    "Prefetcher",
    "RemoteFile",
    "backoff_delay",
    "retrying",
    "storage_error",
]

T = TypeVar("T")

# One try and four retries. With the delays below a transient fault costs well under a second
# on average and a persistent one about four seconds before it is reported.
ATTEMPTS = 5
# Full-jitter exponential backoff (AWS architecture blog, "Exponential Backoff And Jitter"):
# a random wait up to BASE * 2**attempt, never more than CAP, so many clients retrying at
# once spread out instead of hitting the store again together.
BACKOFF_BASE_SECONDS = 0.25
BACKOFF_CAP_SECONDS = 8.0
# Chunks read ahead of the verifier: 8 MiB of 1 MiB chunks, as for local files' writers.
PREFETCH_CHUNKS = 8
# After a broken stream, the rest is read in ranges of this size: one request per 8 MiB keeps
# the per-request overhead small while a range that fails again costs little to repeat.
RESUME_RANGE = 8 * 1024 * 1024

# The package behind each scheme, and the kbundle extra that installs it.
EXTRAS = {
    "s3": "s3",
    "s3a": "s3",
    "gs": "gcs",
    "gcs": "gcs",
    "http": "http",
    "https": "http",
}
# Error codes stores use for "slow down" (S3, GCS, Azure).
_THROTTLE_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestLimitExceeded",
    "TooManyRequests",
    "TooManyRequestsException",
    "RequestThrottled",
    "ServerBusy",
}
_NETWORK_ERRNOS = {
    errno.ECONNRESET,
    errno.ECONNABORTED,
    errno.ECONNREFUSED,
    errno.EPIPE,
    errno.ETIMEDOUT,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
}
# Exception class names (anywhere in the class hierarchy) that mean the connection failed:
# aiohttp's ClientConnectionError, ServerDisconnectedError, ClientPayloadError; botocore's
# HTTPClientError, EndpointConnectionError, ReadTimeoutError; fsspec's FSTimeoutError.
_NETWORK_CLASS_WORDS = ("Connection", "Disconnected", "Payload", "Timeout", "HTTPClientError")


def backoff_delay(attempt: int) -> float:
    """The wait before retry number ``attempt`` (0 for the first)."""
    return random.uniform(0, min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2**attempt))


class _NotFound(StorageError):
    """The object (or its bucket) does not exist."""


class _Failure:
    """What kind of failure an exception from a filesystem is, from what it carries: an HTTP
    status (aiohttp), a botocore error response (s3fs keeps it as the cause), an errno."""

    def __init__(self, exc: BaseException) -> None:
        self.status: int | None = None
        self.code: str | None = None
        self.errno: int | None = None
        self.network = False
        seen: BaseException | None = exc
        for _ in range(6):  # the exception, its cause, their causes: never a long chain
            if seen is None:
                break
            self._learn(seen)
            seen = seen.__cause__ or seen.__context__
        self.exc = exc

    def _learn(self, exc: BaseException) -> None:
        response = getattr(exc, "response", None)
        if isinstance(response, dict):
            error = response.get("Error") or {}
            self.code = self.code or error.get("Code")
            status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
            self.status = self.status or (status if isinstance(status, int) else None)
        status = getattr(exc, "status", None)
        if isinstance(status, int) and 100 <= status < 600:
            self.status = self.status or status
        if isinstance(exc, OSError) and exc.errno is not None:
            self.errno = self.errno or exc.errno
        names = [cls.__name__ for cls in type(exc).__mro__]
        if isinstance(exc, ConnectionError | TimeoutError) or any(
            word in name for name in names for word in _NETWORK_CLASS_WORDS
        ):
            self.network = True

    @property
    def throttled(self) -> bool:
        return (
            self.code in _THROTTLE_CODES
            or self.status in (429, 503)
            or (self.errno == errno.EBUSY and self.status is None)  # s3fs: SlowDown, 503
        )

    @property
    def denied(self) -> bool:
        return self.status in (401, 403) or isinstance(self.exc, PermissionError)

    @property
    def missing(self) -> bool:
        return self.status == 404 or isinstance(self.exc, FileNotFoundError)

    @property
    def server(self) -> bool:
        return (self.status is not None and self.status >= 500) or self.errno == errno.EREMOTEIO

    @property
    def transient(self) -> bool:
        if self.denied or self.missing or isinstance(self.exc, FileExistsError):
            return False
        return (
            self.throttled
            or self.server
            or self.status == 408
            or self.network
            or self.errno in _NETWORK_ERRNOS
        )

    def what(self) -> str:
        """The status and code as the store gave them, for messages."""
        code = self.code if self.code != str(self.status) else None  # s3fs: Code "403"
        shown = " ".join(str(part) for part in (self.status, code) if part)
        return shown or (errno.errorcode.get(self.errno, "") if self.errno else "")


def storage_error(
    exc: BaseException, location: Location, doing: str, attempts: int = 1
) -> Exception:
    """The error to raise for ``exc``, met while ``doing`` something to ``location``."""
    failure = _Failure(exc)
    where = location.display
    summary = location.scrub(exception_summary(exc))
    tried = f" ({attempts} attempts)" if attempts > 1 else ""
    if isinstance(exc, FileExistsError) or failure.status == 412:
        return OutputExistsError(
            f"bundle {where} already exists (it appeared while {doing} it)",
            hint="pass --force to replace it",
        )
    if failure.missing:
        return _NotFound(
            f"{where} does not exist", hint="check the URL: bucket, path and object name"
        )
    if failure.denied:
        return StorageError(
            f"access to {where} was denied while {doing} ({failure.what() or summary})",
            hint="check the credentials: the environment, the profile, or --storage-option "
            "(storage_options=); kbundle uses the filesystem's usual sources",
        )
    if failure.throttled:
        return StorageError(
            f"the store is throttling requests for {where} ({failure.what()}) while {doing}"
            f"{tried}",
            hint="wait and run again, or lower the request rate on this bucket",
        )
    if failure.server:
        return StorageError(
            f"the store failed while {doing} {where} ({failure.what()}){tried}",
            hint="the store had an internal error; run again later",
        )
    if failure.transient:
        return StorageError(
            f"the connection failed while {doing} {where}{tried}: {summary}",
            hint="check the network and the endpoint (--storage-option endpoint_url=...)",
        )
    return StorageError(
        f"{doing} {where} failed: {summary}",
        hint="check the URL and the --storage-option values (storage_options=)",
    )


def retrying(
    location: Location,
    doing: str,
    call: Callable[[], T],
    *,
    stop: threading.Event | None = None,
) -> T:
    """``call()``, retried on transient failures (see the module docstring); any failure
    left is raised as :class:`StorageError`. A set ``stop`` ends the retries early."""
    for attempt in range(ATTEMPTS):
        try:
            return call()
        except Exception as exc:  # every filesystem raises its own kinds
            if isinstance(exc, StorageError | UsageError):
                raise
            last = attempt + 1 == ATTEMPTS or (stop is not None and stop.is_set())
            if last or not _Failure(exc).transient:
                raise storage_error(exc, location, doing, attempt + 1) from None
        time.sleep(backoff_delay(attempt))
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


def _import_fsspec(location: Location) -> Any:
    try:
        import fsspec.core
    except ImportError:
        raise StorageError(
            f"reading or writing {location.display} needs fsspec, which is not installed",
            hint=f"pip install {_install_hint(location.scheme)}",
        ) from None
    return fsspec.core


def _install_hint(scheme: str) -> str:
    extra = EXTRAS.get(scheme)
    return f"'kbundle[{extra}]'" if extra else "fsspec and the package for this URL scheme"


def _with_retry_defaults(scheme: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` for the filesystem, with its own retries off (kbundle retries, see the
    module docstring) unless the caller configured them; a private instance, so the change
    never reaches someone else's filesystem object."""
    if scheme not in ("s3", "s3a"):
        return options
    config = dict(options.get("config_kwargs") or {})
    config.setdefault("retries", {"mode": "standard", "total_max_attempts": 1})
    return {**options, "config_kwargs": config, "skip_instance_cache": True}


# Filesystems opened by this process, by protocol and options: one session (and connection
# pool, and credential lookup) for every request to the same store, instead of one per use.
_FILESYSTEMS: dict[str, Any] = {}
_FILESYSTEMS_LOCK = threading.Lock()


def _filesystem(core: Any, url: str, options: dict[str, Any]) -> tuple[Any, str]:
    """The filesystem for ``url`` and the path in it (as ``fsspec.core.url_to_fs``)."""
    if "::" in url:  # a chain of filesystems (caching, archives): fsspec builds it each time
        fs, path = core.url_to_fs(url, **options)
        return fs, str(path)
    protocol = url.split("://", 1)[0]
    cls = core.get_filesystem_class(protocol)
    merged = {**cls._get_kwargs_from_urls(url), **options}
    key = f"{protocol}\0{merged!r}"
    with _FILESYSTEMS_LOCK:
        fs = _FILESYSTEMS.get(key)
        if fs is None:
            fs = _FILESYSTEMS[key] = cls(**merged)
    return fs, str(fs._strip_protocol(url))


class RemoteFile:
    """One object in an fsspec filesystem, named by ``location``'s URL."""

    def __init__(self, location: Location) -> None:
        assert location.url is not None
        self.location = location
        core = _import_fsspec(location)
        options = _with_retry_defaults(location.scheme, dict(location.options))
        try:
            self.fs, self.path = _filesystem(core, location.url, options)
        except ImportError as exc:
            extra = EXTRAS.get(location.scheme)
            raise StorageError(
                f"{location.scheme}:// URLs need a package that is not installed "
                f"({location.scrub(exception_summary(exc))})",
                hint=f"pip install {_install_hint(location.scheme)}"
                if extra
                else "install the fsspec filesystem package for this scheme",
            ) from None
        except (ValueError, TypeError) as exc:
            raise UsageError(
                f"cannot open {location.display}: {location.scrub(exception_summary(exc))}",
                hint="check the URL scheme and the --storage-option names (storage_options=)",
            ) from None
        self.is_s3 = location.scheme in ("s3", "s3a") and hasattr(self.fs, "call_s3")
        if self.is_s3:
            self.fs.retries = 1  # s3fs's own retry loop; kbundle's applies instead
        self._info: dict[str, Any] | None = None

    def info(self) -> dict[str, Any]:
        """The object's details (size, ETag, ...); a missing object raises."""
        if self._info is None:
            found = retrying(self.location, "looking up", self._look_up)
            if found.get("type") == "directory":
                raise UsageError(
                    f"{self.location.display} is a directory, not a bundle",
                    hint="name the bundle object itself",
                )
            self._info = dict(found)
        return self._info

    def _look_up(self) -> dict[str, Any]:
        if not self.is_s3:
            return dict(self.fs.info(self.path))
        # One HEAD request: s3fs's info() would list the prefix too, to find a "directory",
        # which no bundle is.
        bucket, key, version = self.fs.split_path(self.path)
        if not key:
            return {"type": "directory"}
        extra = {"VersionId": version} if version else {}
        head = self.fs.call_s3("head_object", Bucket=bucket, Key=key, **extra)
        return {"type": "file", "size": head["ContentLength"], "ETag": head.get("ETag")}

    def exists(self) -> bool:
        try:
            self.info()
        except _NotFound:
            return False
        return True

    @property
    def size(self) -> int | None:
        size = self.info().get("size")
        return size if isinstance(size, int) else None

    def read_range(self, start: int, end: int, *, stop: threading.Event | None = None) -> bytes:
        """Bytes ``start`` to ``end`` (exclusive) of the object; fewer only at its end."""
        return bytes(
            retrying(
                self.location,
                "reading",
                lambda: self.fs.cat_file(self.path, start=start, end=end),
                stop=stop,
            )
        )

    def chunks(self, stop: threading.Event) -> Iterator[bytes]:
        """The whole object, chunk by chunk, from one streamed read (the module docstring);
        stops early when ``stop`` is set."""
        size = self.size
        offset = 0
        stream: _Stream | None = None
        resumed = False  # reading ranges from where a broken stream stopped

        def next_chunk() -> bytes:
            nonlocal stream, resumed
            try:
                if resumed:
                    end = offset + RESUME_RANGE
                    end = end if size is None else min(end, size)
                    return bytes(self.fs.cat_file(self.path, start=offset, end=end))
                if stream is None:
                    stream = _open_stream(self.fs, self.path, size)
                data = stream.read()
                if not data and size is not None and offset < size:
                    raise ConnectionResetError(
                        errno.ECONNRESET, f"the stream ended at byte {offset} of {size}"
                    )
                return data
            except BaseException:
                if stream is not None:
                    stream.close()
                    stream = None
                # A stream that broke midway is resumed with ranges from where it broke; one
                # that never started is opened again.
                resumed = offset > 0
                raise

        try:
            while (size is None or offset < size) and not stop.is_set():
                data = retrying(self.location, "reading", next_chunk, stop=stop)
                if not data:
                    break
                offset += len(data)
                yield data
        finally:
            if stream is not None:
                stream.close()


class _Stream:
    """One streamed read of an object: ``read()`` returns the next chunk, b"" at the end."""

    def read(self) -> bytes:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class _AsyncStream(_Stream):
    """An async filesystem's streamed file (s3fs, HTTP), read on the filesystem's own event
    loop a chunk at a time."""

    def __init__(self, fs: Any, path: str, size: int | None) -> None:
        from fsspec.asyn import sync

        self._sync = sync
        self._loop = fs.loop
        self._file = sync(self._loop, fs.open_async, path, "rb", size=size)

    def read(self) -> bytes:
        return bytes(self._sync(self._loop, self._fill))

    async def _fill(self) -> bytes:
        # A network read returns what has arrived; gather a whole chunk per hand-over, so the
        # cost of crossing threads is paid once per megabyte.
        parts: list[bytes] = []
        have = 0
        while have < CHUNK_SIZE:
            data = await self._file.read(CHUNK_SIZE - have)
            if not data:
                break
            parts.append(data)
            have += len(data)
        return b"".join(parts)

    def close(self) -> None:
        async def close() -> None:
            body = getattr(self._file, "r", None)  # the response body s3fs and HTTP keep
            if body is not None and hasattr(body, "close"):
                body.close()
            await self._file.close()

        with contextlib.suppress(Exception):  # closing a broken stream may fail again
            self._sync(self._loop, close)


class _SyncStream(_Stream):
    """Any other filesystem's file object, read in chunks."""

    def __init__(self, fs: Any, path: str) -> None:
        self._file = fs.open(path, "rb")

    def read(self) -> bytes:
        return bytes(self._file.read(CHUNK_SIZE))

    def close(self) -> None:
        with contextlib.suppress(Exception):  # closing a broken stream may fail again
            self._file.close()


def _open_stream(fs: Any, path: str, size: int | None) -> _Stream:
    from fsspec.asyn import AsyncFileSystem

    if isinstance(fs, AsyncFileSystem) and type(fs).open_async is not AsyncFileSystem.open_async:
        return _AsyncStream(fs, path, size)
    return _SyncStream(fs, path)


class Prefetcher:
    """A readable stream over ``chunks``, which a background thread reads ahead into a
    bounded queue (:data:`PREFETCH_CHUNKS`). ``on_chunk`` is told the size of each chunk as
    the reader takes it. :meth:`close` stops the thread, whatever it was doing."""

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
