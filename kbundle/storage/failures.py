"""How kbundle meets a store's failures: which are transient (retried, with exponential
backoff and full jitter, :data:`ATTEMPTS` attempts in all) and what the user is told about
the rest: one line by kind (missing, access denied, throttled, server error, connection),
with the URL and any text from another library stripped of credentials.

s3fs and botocore would retry too, each with its own count and delays, multiplying the
attempts and the wait; kbundle turns theirs off for the filesystems it opens
(kbundle.storage.remote) so that this one policy applies to every store. Stable: internal.
"""

from __future__ import annotations

import errno
import random
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from kbundle.errors import OutputExistsError, StorageError, UsageError, exception_summary
from kbundle.storage.locations import Location

__all__ = ["ATTEMPTS", "NotFound", "backoff_delay", "retrying", "storage_error"]

T = TypeVar("T")

# One try and four retries. With the delays below a transient fault costs well under a second
# on average and a persistent one about four seconds before it is reported.
ATTEMPTS = 5
# Full-jitter exponential backoff (AWS architecture blog, "Exponential Backoff And Jitter"):
# a random wait up to BASE * 2**attempt, never more than CAP, so many clients retrying at
# once spread out instead of hitting the store again together.
BACKOFF_BASE_SECONDS = 0.25
BACKOFF_CAP_SECONDS = 8.0

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


_DENIED_HTTP_HINT = (
    "a presigned URL may have expired or been signed for another object: sign a new one; a "
    "server that wants a header takes --storage-option 'client_kwargs={\"headers\": {...}}'"
)


def backoff_delay(attempt: int) -> float:
    """The wait before retry number ``attempt`` (0 for the first)."""
    return random.uniform(0, min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2**attempt))


class NotFound(StorageError):
    """The object (or its bucket) does not exist."""


class _Failure:
    """What kind of failure an exception from a filesystem is, from what it carries: an HTTP
    status (aiohttp, gcsfs, azure-core), a botocore error response (s3fs keeps it as the
    cause), an errno."""

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
        # aiohttp: status; gcsfs's HttpError: code; azure-core's HttpResponseError: status_code
        for name in ("status", "code", "status_code"):
            status = getattr(exc, name, None)
            if isinstance(status, int) and 100 <= status < 600:
                self.status = self.status or status
        if type(exc) is OSError and str(exc).startswith("Forbidden: "):  # gcsfs: a 403
            self.status = self.status or 403
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
        # fsspec's HTTP filesystem raises FileNotFoundError for any failed lookup; the status
        # it carries as the cause (403 for an expired presigned URL) says what happened.
        return self.status == 404 or (
            isinstance(self.exc, FileNotFoundError) and self.status is None
        )

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
        return NotFound(
            f"{where} does not exist", hint="check the URL: bucket, path and object name"
        )
    if failure.denied:
        return StorageError(
            f"access to {where} was denied while {doing} ({failure.what() or summary})",
            hint=_DENIED_HTTP_HINT
            if location.scheme in ("http", "https")
            else "check the credentials: the environment, the profile, or --storage-option "
            "(storage_options=); kbundle uses the filesystem's usual sources",
        )
    if failure.throttled:
        return StorageError(
            f"the store is throttling requests for {where} ({failure.what()}) while {doing}{tried}",
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
