"""Replacing a bundle's header region: a new signature member beside the same manifest.

The manifest bytes, and so the bundle digest, do not change; the payload frames are copied
byte for byte when the bundle is in kbundle's own layout. Stable: internal.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import BinaryIO

from kbundle.container.hashing import PipelinedHasher, digest_bytes
from kbundle.container.limits import CHUNK_SIZE
from kbundle.container.reader import (
    BundleHead,
    Truncated,
    is_signature,
    open_stream,
    read_manifest_member,
    stream_limit,
)
from kbundle.container.tarstream import END_OF_ARCHIVE
from kbundle.container.writer import (
    TeeSink,
    header_region,
    header_region_size,
    payload_stream,
)
from kbundle.container.zstdframes import trailer_frame
from kbundle.errors import IntegrityError

__all__ = ["rewrite_header"]


def rewrite_header(
    source: Path,
    out: BinaryIO,
    head: BundleHead,
    signature_bytes: bytes | None,
    *,
    level: int,
    threads: int = 0,
) -> bool:
    """Write the bundle ``source`` to ``out`` with a new header region: ``head``'s manifest
    bytes (unchanged, so the digest is too) and ``signature_bytes``.

    Returns True when the payload frames were copied byte for byte, which they are whenever
    ``source`` is in kbundle's layout (its first frame is exactly the header region for
    ``head``). A bundle re-compressed by another tool has its payload's tar stream
    decompressed and compressed again at zstd ``level`` instead. ``source`` must have been
    verified first: this copies structure, it does not check digests.
    """
    out.write(header_region(head.manifest_bytes, signature_bytes))
    with source.open("rb") as handle:
        size = header_region_size(handle)
        handle.seek(0)
        if size is not None and handle.read(size) == header_region(
            head.manifest_bytes, head.signature
        ):
            shutil.copyfileobj(handle, out, CHUNK_SIZE)
            return True
    # The re-compressed payload is framed exactly as write_bundle frames it, trailer included.
    try:
        start = _payload_offset(source, head)
        with (
            open_stream(source) as (_tar, bounded, _tracker, _handle),
            PipelinedHasher() as frame_hasher,
        ):
            bounded.limit = stream_limit(0, head.manifest)
            bounded.read_exact(start)
            stream = payload_stream(TeeSink(out, frame_hasher), level, threads)
            for chunk in bounded.chunks():
                stream.write(chunk)
            stream.close()
            out.write(trailer_frame(digest_bytes(frame_hasher.digest())))
    except Truncated:
        raise IntegrityError(
            f"{source} is truncated", hint="the file was cut short; fetch an intact copy"
        ) from None
    return False


def _payload_offset(source: Path, head: BundleHead) -> int:
    """Where the first payload entry (or the end-of-archive marker) starts in the tar stream."""
    with open_stream(source) as (tar, bounded, _tracker, _handle):
        read_manifest_member(tar, source)
        bounded.limit = stream_limit(bounded.total, head.manifest)
        entry = tar.next_entry()
        if entry is not None and is_signature(entry):
            tar.skip()
            entry = tar.next_entry()
        return entry.offset if entry is not None else tar.offset - len(END_OF_ARCHIVE)
