"""Replacing a bundle's header region: a new signature member beside the same manifest.

The manifest bytes, and so the bundle digest, do not change; the payload frames are copied
byte for byte when the bundle is in kbundle's own layout. The source is read as a stream
(kbundle.storage opens it: a file or a download), front to back. Stable: internal.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

from kbundle.container.hashing import PipelinedHasher, digest_bytes
from kbundle.container.limits import CHUNK_SIZE
from kbundle.container.reader import (
    BundleHead,
    BundleReader,
    ByteSource,
    Truncated,
    read_exactly,
    stream_limit,
)
from kbundle.container.writer import (
    HEADER_PROBE_SIZE,
    TeeSink,
    Writable,
    header_region,
    header_region_size_of,
    payload_stream,
)
from kbundle.container.zstdframes import trailer_frame
from kbundle.errors import IntegrityError

__all__ = ["SourceOpener", "rewrite_header"]

SourceOpener = Callable[[], AbstractContextManager[ByteSource]]
"""Opens the bundle being rewritten, from its start, each time it is called."""


def rewrite_header(
    open_source: SourceOpener,
    name: str,
    out: Writable,
    head: BundleHead,
    signature_bytes: bytes | None,
    *,
    level: int,
    threads: int = 0,
) -> bool:
    """Write the bundle that ``open_source`` opens (``name`` in messages) to ``out`` with a
    new header region: ``head``'s manifest bytes (unchanged, so the digest is too) and
    ``signature_bytes``.

    Returns True when the payload frames were copied byte for byte, which they are whenever
    the source is in kbundle's layout (its first frame is exactly the header region for
    ``head``): the source is read once. A bundle re-compressed by another tool has its
    payload's tar stream decompressed and compressed again at zstd ``level`` instead (the
    source is read twice more). The source must have been verified first: this copies
    structure, it does not check digests.
    """
    expected = header_region(head.manifest_bytes, head.signature)
    with open_source() as source:
        start = read_exactly(source, HEADER_PROBE_SIZE)
        size = header_region_size_of(start)
        if size is not None and start + read_exactly(source, size - len(start)) == expected:
            out.write(header_region(head.manifest_bytes, signature_bytes))
            while chunk := source.read(CHUNK_SIZE):
                out.write(chunk)
            return True
    out.write(header_region(head.manifest_bytes, signature_bytes))
    # The re-compressed payload is framed exactly as write_bundle frames it, trailer included.
    try:
        with open_source() as source, BundleReader(source, name, head_only=True) as reader:
            start_offset = reader.payload_offset()
        with (
            open_source() as source,
            BundleReader(source, name, head_only=True) as reader,
            PipelinedHasher() as frame_hasher,
        ):
            bounded = reader.decompressed()
            bounded.limit = stream_limit(0, head.manifest)
            bounded.read_exact(start_offset)
            stream = payload_stream(TeeSink(out, frame_hasher), level, threads)
            for chunk in bounded.chunks():
                stream.write(chunk)
            stream.close()
            out.write(trailer_frame(digest_bytes(frame_hasher.digest())))
    except Truncated:
        raise IntegrityError(
            f"{name} is truncated", hint="the file was cut short; fetch an intact copy"
        ) from None
    return False
