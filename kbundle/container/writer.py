"""Writing a bundle in one streaming pass.

Layout (normative text in spec/bundle-format.md): a pax tar stream split over zstd frames.
The first frame is a raw (stored, checksummed) frame holding the ``kbundle.json`` member and,
when signed, the ``kbundle.sig`` member: the *header region*. The payload members follow in
compressed frames (or raw frames when compression is off), then the end-of-archive marker;
a skippable *trailer* frame ends the file with the SHA-256 of every payload-frame byte, so
no byte of a bundle escapes a checksum.

Writing reserves the header region (its size depends only on the manifest's length, which is
known before hashing because digests have a fixed length), streams every payload file once
through SHA-256 (own thread) and zstd (own threads), then writes the header region over the
reserved bytes. Stable: internal; the layout is format 1.0.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import zstandard

from kbundle._io.writers import DirectWriter, direct_writes
from kbundle.container.hashing import PipelinedHasher, digest_bytes
from kbundle.container.limits import CHUNK_SIZE, MAX_MANIFEST_BYTES, MAX_SIGNATURE_BYTES
from kbundle.container.names import MANIFEST_NAME, SIGNATURE_NAME
from kbundle.container.tarstream import BLOCK, END_OF_ARCHIVE, member_header, padding
from kbundle.container.zstdframes import (
    ZSTD_MAGIC,
    RawFrameWriter,
    raw_frame,
    raw_frame_size,
    trailer_frame,
)
from kbundle.errors import PackError

__all__ = [
    "DEFAULT_LEVEL",
    "PayloadFile",
    "ProgressCallback",
    "header_region",
    "header_region_size",
    "write_bundle",
]

DEFAULT_LEVEL = 1

ProgressCallback = Callable[[int], None]
"""Called with the number of payload bytes just processed."""


@dataclass(frozen=True, slots=True)
class PayloadFile:
    """One payload member to write: a file (``source`` set) or a directory (``source`` None).

    ``watch``, when set, is given the file's bytes in order as they are packed (one read
    serves the digest, the compressor and, say, a CRC check of a zip's members)."""

    path: str
    source: Path | None
    size: int = 0
    watch: Callable[[bytes], object] | None = None


def header_region(manifest_bytes: bytes, signature_bytes: bytes | None = None) -> bytes:
    """The stored frame holding the manifest member (and the signature member when given)."""
    content = member_header(MANIFEST_NAME, len(manifest_bytes), is_dir=False, mtime=0)
    content += manifest_bytes + padding(len(manifest_bytes))
    if signature_bytes is not None:
        content += member_header(SIGNATURE_NAME, len(signature_bytes), is_dir=False, mtime=0)
        content += signature_bytes + padding(len(signature_bytes))
    return raw_frame(content)


def header_region_size(source: BinaryIO) -> int | None:
    """The size of a bundle's header region when its first frame is a stored frame with a
    declared size (as kbundle writes it), else ``None``. Used to splice a new header region
    in front of an existing payload without recompressing it."""
    head = source.read(13)
    if len(head) < 13 or head[:4] != ZSTD_MAGIC or head[4] & 0b1110_0000 != 0b1110_0000:
        return None
    (content_size,) = struct.unpack("<Q", head[5:13])
    if content_size > MAX_MANIFEST_BYTES + MAX_SIGNATURE_BYTES + 8 * BLOCK:
        return None
    return raw_frame_size(content_size)


def write_bundle(
    out: BinaryIO,
    payload: Sequence[PayloadFile],
    make_manifest: Callable[[Mapping[str, str]], bytes],
    *,
    level: int | None,
    threads: int,
    mtime: int,
    sign: Callable[[bytes], bytes] | None = None,
    signature_size: int = 0,
    progress: ProgressCallback | None = None,
) -> bytes:
    """Write a bundle to the seekable ``out`` and return the manifest bytes written.

    ``make_manifest(digests)`` builds the manifest bytes from a member-path -> digest map; it is
    called once with placeholder digests (to size the header region) and once with the real
    ones, and both results must have the same length. ``level`` None stores the payload.
    """
    placeholder = {p.path: "sha256:" + "0" * 64 for p in payload if p.source is not None}
    draft = make_manifest(placeholder)
    reserved = len(header_region(draft, b"\0" * signature_size if sign else None))
    digests: dict[str, str] = {}
    with (
        direct_writes(out) as sink,
        PipelinedHasher() as hasher,
        PipelinedHasher() as frame_hasher,
    ):
        sink.write(b"\0" * reserved)
        stream = payload_stream(TeeSink(sink, frame_hasher), level, threads)
        for item in payload:
            is_dir = item.source is None
            stream.write(member_header(item.path, item.size, is_dir=is_dir, mtime=mtime))
            if item.source is not None:
                _copy_member(item, stream, hasher, progress)
                digests[item.path] = hasher.digest()
                stream.write(padding(item.size))
        stream.write(END_OF_ARCHIVE)
        stream.close()
        sink.write(trailer_frame(digest_bytes(frame_hasher.digest())))
    manifest_bytes = make_manifest(digests)
    signature = sign(manifest_bytes) if sign else None
    region = header_region(manifest_bytes, signature)
    if len(region) != reserved:
        raise PackError(  # a kbundle bug, never the user's input
            f"internal error: header region is {len(region)} bytes, {reserved} were reserved",
            hint="please report this with the model that triggered it",
        )
    out.seek(0)
    out.write(region)
    return manifest_bytes


class TeeSink:
    """A write-only stream that hashes (on the hasher's thread) what it passes on."""

    def __init__(self, out: BinaryIO | DirectWriter, hasher: PipelinedHasher) -> None:
        self._out = out
        self._hasher = hasher

    def write(self, data: bytes) -> int:
        self._hasher.update(bytes(data))
        return self._out.write(data)

    def flush(self) -> None:
        self._out.flush()


class ZstdPayloadStream:
    def __init__(self, out: Any, level: int, threads: int) -> None:
        compressor = zstandard.ZstdCompressor(
            level=level, threads=threads, write_checksum=True, write_content_size=False
        )
        # The bindings' stubs type neither our sink nor close(); the writer is used as Any.
        self._writer: Any = compressor.stream_writer(out, closefd=False, write_size=CHUNK_SIZE)

    def write(self, data: bytes) -> None:
        self._writer.write(data)

    def close(self) -> None:
        self._writer.close()  # ends the frame; an explicit FLUSH_FRAME first added an empty one


def payload_stream(out: Any, level: int | None, threads: int) -> ZstdPayloadStream | RawFrameWriter:
    if level is None:
        return RawFrameWriter(out)
    return ZstdPayloadStream(out, level, threads)


def _copy_member(
    item: PayloadFile,
    stream: ZstdPayloadStream | RawFrameWriter,
    hasher: PipelinedHasher,
    progress: ProgressCallback | None,
) -> None:
    assert item.source is not None
    remaining = item.size
    with item.source.open("rb") as handle:
        while chunk := handle.read(min(CHUNK_SIZE, remaining + 1)):
            remaining -= len(chunk)
            if remaining < 0:
                break
            hasher.update(chunk)
            stream.write(chunk)
            if item.watch:
                item.watch(chunk)
            if progress:
                progress(len(chunk))
    if remaining != 0:
        raise PackError(
            f"{item.source} changed size while it was being packed (expected {item.size} bytes)",
            hint="do not write to the model while packing it; run pack again",
        )
