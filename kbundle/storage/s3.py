"""Writing a bundle to S3 in one pass: a multipart upload whose first part is sent last.

A bundle starts with its header region, whose digests are known only when the payload has
been hashed. S3 assembles a multipart upload by part number, not by arrival, and accepts the
parts in any order, so the payload is uploaded while it is packed as parts 2, 3, ..., and
part 1 is sent last: the header region followed by the first :data:`MIN_PART` bytes of the
payload, which are held back in memory for that purpose. Every part but the last must be at
least 5 MiB (S3's rule); the header region alone is far smaller and its size is fixed by the
format, so it cannot be padded; the held-back payload bytes make part 1 large enough. A
bundle smaller than :data:`MIN_PART` plus one part is sent with one ``PutObject`` instead.

Nothing appears under the name until ``CompleteMultipartUpload`` (or the ``PutObject``)
succeeds: a failed or interrupted pack aborts the upload, so no object and no stored parts
are left (a ``kill -9`` cannot abort it: a bucket lifecycle rule ``AbortIncompleteMultipart
Upload`` removes such parts; no object appears either way). Without ``--force`` the
completion carries ``If-None-Match: *``, so an object someone else created meanwhile is not
replaced: the store refuses, and the upload is aborted.

Memory: the held-back part 1, the part being filled, and :data:`MAX_IN_FLIGHT` parts being
uploaded: about 45 MiB however large the bundle. Part uploads run on their own threads while
packing continues, and each is retried as kbundle.storage.remote retries every request.
Stable: internal.
"""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from kbundle.container.writer import BundleOutput
from kbundle.errors import StorageError
from kbundle.storage.failures import retrying
from kbundle.storage.remote import RemoteFile

__all__ = ["MAX_IN_FLIGHT", "MIN_PART", "S3Upload", "part_size"]

# S3's smallest part (every part but the last): 5 MiB.
MIN_PART = 5 * 1024 * 1024
# Parts 2, 3, ... start at 8 MiB (the AWS CLI's default) and double every 1,000 parts, so the
# 10,000 parts S3 allows hold any bundle (the first 1,000 alone hold 8 GiB).
FIRST_PART_SIZE = 8 * 1024 * 1024
_PARTS_PER_SIZE = 1000
# Parts uploaded at once while packing goes on: enough to keep a connection busy while
# another part is being filled, few enough to keep memory bounded.
MAX_IN_FLIGHT = 4


def part_size(number: int) -> int:
    """The size of part ``number`` (2 and up; part 1 is the header region and held-back bytes)."""
    return FIRST_PART_SIZE << ((number - 2) // _PARTS_PER_SIZE)


class S3Upload(BundleOutput):
    """A bundle uploaded to ``remote`` as it is written (the module docstring). ``replace``
    lets the completion replace an existing object (``--force``, checked by the caller)."""

    header_last = True

    def __init__(self, remote: RemoteFile, *, replace: bool) -> None:
        self._remote = remote
        self._fs: Any = remote.fs
        bucket, key, _version = self._fs.split_path(remote.path)
        self._where = {"Bucket": bucket, "Key": key}
        self._condition: dict[str, Any] = {} if replace else {"IfNoneMatch": "*"}
        self._front = b""
        self._held = bytearray()  # the first MIN_PART bytes: part 1, behind the front
        self._filling = bytearray()
        self._next_part = 2
        self._upload_id: str | None = None
        self._pending: list[Future[dict[str, Any]]] = []  # parts being uploaded
        self._done: list[Future[dict[str, Any]]] = []  # parts uploaded
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(MAX_IN_FLIGHT, thread_name_prefix="kbundle-upload")
        self.size = 0

    def write(self, data: bytes, /) -> int:
        self.size += len(data)
        view = memoryview(data)
        if len(self._held) < MIN_PART:
            take = MIN_PART - len(self._held)
            self._held += view[:take]
            view = view[take:]
        if view:
            self._filling += view
            while len(self._filling) >= part_size(self._next_part):
                size = part_size(self._next_part)
                body = bytes(self._filling[:size])
                del self._filling[:size]
                self._send(body)
        return len(data)

    def place_header(self, region: bytes) -> None:
        self._front = region
        self.size += len(region)

    def _call(
        self, doing: str, method: str, *, stop: threading.Event | None = None, **kwargs: Any
    ) -> Any:
        return retrying(
            self._remote.location,
            doing,
            lambda: self._fs.call_s3(method, **self._where, **kwargs),
            stop=stop,
        )

    def _send(self, body: bytes) -> None:
        """Upload ``body`` as the next part, on a worker thread, after waiting for room."""
        if self._upload_id is None:
            started = self._call("starting the upload of", "create_multipart_upload")
            self._upload_id = started["UploadId"]
        while len(self._pending) >= MAX_IN_FLIGHT or any(f.done() for f in self._pending):
            # A finished part is collected at once, so a failed one stops the pack early.
            finished = next((f for f in self._pending if f.done()), self._pending[0])
            finished.result()
            self._pending.remove(finished)
            self._done.append(finished)
        number = self._next_part
        self._next_part += 1
        self._pending.append(self._pool.submit(self._upload_part, number, body))

    def _upload_part(self, number: int, body: bytes) -> dict[str, Any]:
        sent = self._call(
            "uploading",
            "upload_part",
            stop=self._stop,  # an aborted upload retries no part
            UploadId=self._upload_id,
            PartNumber=number,
            Body=body,
        )
        return {"PartNumber": number, "ETag": sent["ETag"]}

    def commit(self) -> None:
        """Complete the upload: the object appears, whole, under its name."""
        if self._upload_id is None:
            body = self._front + bytes(self._held) + bytes(self._filling)
            self._call("uploading", "put_object", Body=body, **self._condition)
            self._pool.shutdown()
            return
        if self._filling:
            self._send(bytes(self._filling))  # the last part may be smaller than MIN_PART
            self._filling.clear()
        parts = [f.result() for f in (*self._done, *self._pending)]
        self._pending.clear()
        # Part 1 goes once every other part is stored: the last request before completion.
        parts.append(self._upload_part(1, self._front + bytes(self._held)))
        self._call(
            "completing the upload of",
            "complete_multipart_upload",
            UploadId=self._upload_id,
            MultipartUpload={"Parts": sorted(parts, key=lambda p: int(p["PartNumber"]))},
            **self._condition,
        )
        self._pool.shutdown()

    def abort(self) -> None:
        """Stop uploading and abort the multipart upload, so no part stays stored."""
        self._stop.set()
        for future in self._pending:
            future.cancel()
        self._pool.shutdown(wait=True)
        if self._upload_id is not None:
            # The error being raised explains more; parts left behind expire by lifecycle.
            with contextlib.suppress(StorageError):
                self._call(
                    "aborting the upload of", "abort_multipart_upload", UploadId=self._upload_id
                )
            self._upload_id = None
