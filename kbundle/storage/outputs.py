"""Where a bundle is written: a local file, standard output, or a URL; complete or not at all.

* A local file is written atomically (kbundle.storage.atomic) and is seekable.
* Standard output (``-o -``) is written strictly in order (kbundle.container.writer's
  :class:`BundleOutput`): pack hashes the payload first, then streams the bundle. A failed
  pack cannot take back what a pipe has already passed on, but a bundle ends with its
  trailer frame, written last, so what a failed pack leaves in a pipe never verifies.
* ``s3://`` is a multipart upload whose first part is sent last (kbundle.storage.s3).
* Any other fsspec filesystem is written in order through its own transactional upload
  (fsspec's ``autocommit=False``: ``commit`` on success, ``discard`` on failure), which
  object stores complete only then (GCS resumable uploads, Azure block lists).

An existing bundle is replaced only with ``force``, and, as for local files, only a bundle
(its first bytes are the zstd magic), never the input. For a URL the check is made before
any work and repeated where the store can: S3's completion carries ``If-None-Match: *``;
GCS's upload carries ``ifGenerationMatch=0`` and Azure's block list ``If-None-Match: *``
(gcsfs's and adlfs's exclusive mode ``xb``). What stays open is the race the store cannot
close: with ``force``, or on stores without conditional writes, an object written by someone
else between the check and the completion is replaced. Stable: internal.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, BinaryIO

from kbundle.container.writer import BundleOutput
from kbundle.container.zstdframes import ZSTD_MAGIC
from kbundle.errors import OutputExistsError, UsageError
from kbundle.storage.atomic import atomic_file, check_destination
from kbundle.storage.failures import storage_error
from kbundle.storage.locations import Location
from kbundle.storage.remote import EXTRAS, RemoteFile
from kbundle.storage.s3 import S3Upload

__all__ = ["check_output", "open_output"]


def check_output(
    location: Location, *, force: bool, what: str = "bundle", inputs: Sequence[Location] = ()
) -> None:
    """Refuse early (before any work) an output that exists without ``force``, or that
    ``force`` must not replace (kbundle.storage.atomic's rules, for URLs too)."""
    if location.path is not None:
        paths = [i.path for i in inputs if i.path is not None]
        check_destination(location.path, force=force, what=what, inputs=paths)
        return
    if location.url is None:
        if getattr(sys.stdout, "buffer", None) is None:  # none at all, or text only (Jupyter)
            raise UsageError(
                f"standard output takes no {what} here (it is not a byte stream)",
                hint="write the bundle to a file or a URL",
            )
        if sys.stdout.isatty():
            raise UsageError(
                f"will not write a {what} to a terminal",
                hint="redirect standard output: -o - > model.kbundle, or pipe it on",
            )
        return
    for source in inputs:
        if location.same_as(source):
            raise UsageError(
                f"will not replace {what} {location.display}: it is the input",
                hint="choose another -o; an input is never replaced",
            )
    remote = RemoteFile(location)
    if not remote.exists():
        return
    if not force:
        raise OutputExistsError(
            f"{what} {location.display} already exists", hint="pass --force to replace it"
        )
    start = remote.read_range(0, len(ZSTD_MAGIC))
    if what == "bundle" and start != ZSTD_MAGIC:
        raise UsageError(
            f"will not replace {what} {location.display}: it is not a kbundle bundle "
            f"(it starts with {start.hex() or 'nothing'})",
            hint="--force replaces only a bundle; choose another -o, or move it away yourself",
        )


@contextmanager
def open_output(
    location: Location, *, force: bool, what: str = "bundle"
) -> Iterator[BinaryIO | BundleOutput]:
    """An output for ``location`` (the module docstring): a seekable local file or a
    :class:`BundleOutput`. It is completed when the block ends without an error, and
    abandoned (nothing left under the name, the upload aborted) when it raises, even on
    ``KeyboardInterrupt``. Call :func:`check_output` first."""
    if location.path is not None:
        with atomic_file(location.path, force=force, what=what) as handle:
            yield handle
        return
    if location.url is None:
        stdout = _StandardOutput()
        yield stdout
        stdout.flush()
        return
    remote = RemoteFile(location)
    upload: S3Upload | _FsspecUpload = (
        S3Upload(remote, replace=force) if remote.is_s3 else _FsspecUpload(remote, replace=force)
    )
    try:
        yield upload
        upload.commit()
    except BaseException:
        upload.abort()
        raise


class _StandardOutput(BundleOutput):
    """Standard output, written in order."""

    def __init__(self) -> None:
        self._stream = sys.stdout.buffer
        self.size = 0

    def write(self, data: bytes, /) -> int:
        self._stream.write(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        self._stream.flush()


# The schemes whose filesystems (those of the gcs and azure extras) keep the upload
# transactional in exclusive mode ("xb") and make the store refuse to replace an object at
# completion: gcsfs (ifGenerationMatch=0) and adlfs (If-None-Match: * on the block list).
# fsspec leaves "xb" to each filesystem; its local one, for one, writes in place in that mode.
_EXCLUSIVE_UPLOADS = {scheme for scheme, extra in EXTRAS.items() if extra in ("gcs", "azure")}


class _FsspecUpload(BundleOutput):
    """Any fsspec filesystem's file, written in order and committed only when complete;
    without ``replace``, exclusive where the store can check it (the module docstring)."""

    def __init__(self, remote: RemoteFile, *, replace: bool) -> None:
        self._remote = remote
        self.size = 0
        exclusive = not replace and remote.location.scheme in _EXCLUSIVE_UPLOADS
        try:
            self._file: Any = remote.fs.open(
                remote.path, "xb" if exclusive else "wb", autocommit=False
            )
        except Exception as exc:  # every filesystem raises its own kinds
            raise storage_error(exc, remote.location, "starting the upload of") from None

    def write(self, data: bytes, /) -> int:
        try:
            self._file.write(data)
        except Exception as exc:  # every filesystem raises its own kinds
            raise storage_error(exc, self._remote.location, "uploading") from None
        self.size += len(data)
        return len(data)

    def commit(self) -> None:
        try:
            self._file.close()
            self._file.commit()
        except Exception as exc:  # every filesystem raises its own kinds
            raise storage_error(exc, self._remote.location, "completing the upload of") from None

    def abort(self) -> None:
        with contextlib.suppress(Exception):  # the error being raised explains more
            self._file.discard()
