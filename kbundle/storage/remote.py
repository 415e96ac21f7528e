"""Bundles in fsspec filesystems: the filesystem for a URL, and one object in it read by byte
ranges or streamed whole, once.

fsspec is imported only here, on first use of a URL, so ``import kbundle`` and everything on
local files never pays for it; the filesystem package itself (s3fs, gcsfs, aiohttp) comes
with an extra, and a missing one is named in the error (``pip install 'kbundle[s3]'``).
Every request goes through kbundle.storage.failures (retries, and one clear line when they
do not help); s3fs's and botocore's own retries are turned off for the filesystems opened
here, unless the caller configures botocore's.

**Streaming.** A whole-object read is one streamed GET (``open_async`` where the filesystem
has it: s3fs, HTTP), read chunk by chunk (kbundle.storage.readahead reads ahead of the
verifier). When the connection breaks mid-object the read resumes from the byte reached with
range requests; the bytes are checked by the reader anyway (every member digest and the
trailer), so a resumed read of an object replaced meanwhile fails verification instead of
mixing unnoticed. Stable: internal.
"""

from __future__ import annotations

import contextlib
import errno
import threading
from collections.abc import Iterator
from typing import Any

from kbundle.container.limits import CHUNK_SIZE
from kbundle.errors import StorageError, UsageError, exception_summary
from kbundle.storage.failures import NotFound, retrying
from kbundle.storage.locations import Location

__all__ = ["EXTRAS", "RESUME_RANGE", "RemoteFile"]

# After a broken stream, the rest is read in ranges of this size: one request per 8 MiB keeps
# the per-request overhead small while a range that fails again costs little to repeat.
RESUME_RANGE = 8 * 1024 * 1024

# The package behind each scheme, and the kbundle extra that installs it.
EXTRAS = {
    "s3": "s3",
    "s3a": "s3",
    "gs": "gcs",
    "gcs": "gcs",
    "az": "azure",
    "abfs": "azure",
    "abfss": "azure",
    "http": "http",
    "https": "http",
}


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
        except NotFound:
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
