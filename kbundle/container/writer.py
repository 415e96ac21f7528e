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
reserved bytes. An output that cannot seek back either takes the header region last and puts
it in front itself (an object-store upload whose first part is sent last), or is written in
order after a first pass that only hashes the payload (a pipe): :class:`BundleOutput`.
Stable: internal; the layout is format 1.0.
"""

from __future__ import annotations

import abc
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, Protocol

import zstandard

from kbundle._io.writers import direct_writes
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
    "HEADER_PROBE_SIZE",
    "BundleOutput",
    "PayloadFile",
    "ProgressCallback",
    "hash_payload",
    "header_region",
    "header_region_size",
    "header_region_size_of",
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


# The magic, the frame header descriptor and an 8-byte content size: enough bytes to size the
# stored frame kbundle writes first.
HEADER_PROBE_SIZE = 13


def header_region_size(source: BinaryIO) -> int | None:
    """The size of a bundle's header region when its first frame is a stored frame with a
    declared size (as kbundle writes it), else ``None``. Used to splice a new header region
    in front of an existing payload without recompressing it."""
    return header_region_size_of(source.read(HEADER_PROBE_SIZE))


def header_region_size_of(head: bytes) -> int | None:
    """:func:`header_region_size` from the bundle's first :data:`HEADER_PROBE_SIZE` bytes."""
    if (
        len(head) < HEADER_PROBE_SIZE
        or head[:4] != ZSTD_MAGIC
        or head[4] & 0b1110_0000 != 0b1110_0000
    ):
        return None
    (content_size,) = struct.unpack("<Q", head[5:13])
    if content_size > MAX_MANIFEST_BYTES + MAX_SIGNATURE_BYTES + 8 * BLOCK:
        return None
    return raw_frame_size(content_size)


class BundleOutput(abc.ABC):
    """A destination written front to back that cannot seek back: a pipe, an upload.

    ``header_last`` outputs take the header region after the payload (:meth:`place_header`)
    and put it in front of everything written (an object-store upload whose first part is
    sent last); the others are written strictly in order, so :func:`write_bundle` needs the
    payload's digests before it starts (:func:`hash_payload`). ``size`` counts every byte
    written, the header region included.
    """

    header_last: ClassVar[bool] = False
    size: int = 0

    @abc.abstractmethod
    def write(self, data: bytes, /) -> object:
        """Append ``data`` (the caller never changes it afterwards)."""

    def place_header(self, region: bytes) -> None:
        """Put ``region`` in front of everything written (``header_last`` outputs only)."""
        raise NotImplementedError(f"{type(self).__name__} writes strictly in order")


def write_bundle(
    out: BinaryIO | BundleOutput,
    payload: Sequence[PayloadFile],
    make_manifest: Callable[[Mapping[str, str]], bytes],
    *,
    level: int | None,
    threads: int,
    mtime: int,
    sign: Callable[[bytes], bytes] | None = None,
    signature_size: int = 0,
    progress: ProgressCallback | None = None,
    digests: Mapping[str, str] | None = None,
) -> bytes:
    """Write a bundle to ``out`` and return the manifest bytes written.

    ``make_manifest(digests)`` builds the manifest bytes from a member-path -> digest map; it is
    called once with placeholder digests (to size the header region) and once with the real
    ones, and both results must have the same length. ``level`` None stores the payload.

    ``out`` is a seekable file (the header region is reserved, then written over when the
    payload is done), a ``header_last`` :class:`BundleOutput`, or one written strictly in
    order, which needs ``digests`` from :func:`hash_payload`: the header region is written
    first and every member is hashed again as it is packed; a member whose bytes changed in
    between fails the pack (its digest in the manifest would be wrong).
    """
    if isinstance(out, BundleOutput) and not out.header_last:
        if digests is None:
            raise PackError(  # a kbundle bug, never the user's input
                "internal error: an output written in order needs the digests first",
                hint="please report this; hash_payload() gives them",
            )
        manifest_bytes = make_manifest(digests)
        out.write(header_region(manifest_bytes, sign(manifest_bytes) if sign else None))
        found = _write_payload(out, payload, level, threads, mtime, progress, watch=False)
        _require_unchanged(payload, digests, found)
        return manifest_bytes
    placeholder = {p.path: "sha256:" + "0" * 64 for p in payload if p.source is not None}
    draft = make_manifest(placeholder)
    reserved = len(header_region(draft, b"\0" * signature_size if sign else None))
    if isinstance(out, BundleOutput):
        found = _write_payload(out, payload, level, threads, mtime, progress, watch=True)
    else:
        with direct_writes(out) as sink:
            sink.write(b"\0" * reserved)
            found = _write_payload(sink, payload, level, threads, mtime, progress, watch=True)
    manifest_bytes = make_manifest(found)
    signature = sign(manifest_bytes) if sign else None
    region = header_region(manifest_bytes, signature)
    if len(region) != reserved:
        raise PackError(  # a kbundle bug, never the user's input
            f"internal error: header region is {len(region)} bytes, {reserved} were reserved",
            hint="please report this with the model that triggered it",
        )
    if isinstance(out, BundleOutput):
        out.place_header(region)
    else:
        out.seek(0)
        out.write(region)
    return manifest_bytes


def hash_payload(payload: Sequence[PayloadFile]) -> dict[str, str]:
    """Every payload file's digest, read once (and shown to its ``watch``): what an output
    written strictly in order needs before :func:`write_bundle` starts."""
    digests: dict[str, str] = {}
    with PipelinedHasher() as hasher:
        for item in payload:
            if item.source is None:
                continue
            for chunk in _member_chunks(item):
                hasher.update(chunk)
                if item.watch:
                    item.watch(chunk)
            digests[item.path] = hasher.digest()
    return digests


def _write_payload(
    out: Writable,
    payload: Sequence[PayloadFile],
    level: int | None,
    threads: int,
    mtime: int,
    progress: ProgressCallback | None,
    *,
    watch: bool,
) -> dict[str, str]:
    """The payload frames and the trailer; returns each file member's digest."""
    digests: dict[str, str] = {}
    with PipelinedHasher() as hasher, PipelinedHasher() as frame_hasher:
        stream = payload_stream(TeeSink(out, frame_hasher), level, threads)
        for item in payload:
            is_dir = item.source is None
            stream.write(member_header(item.path, item.size, is_dir=is_dir, mtime=mtime))
            if item.source is not None:
                for chunk in _member_chunks(item):
                    hasher.update(chunk)
                    stream.write(chunk)
                    if watch and item.watch:
                        item.watch(chunk)
                    if progress:
                        progress(len(chunk))
                digests[item.path] = hasher.digest()
                stream.write(padding(item.size))
        stream.write(END_OF_ARCHIVE)
        stream.close()
        out.write(trailer_frame(digest_bytes(frame_hasher.digest())))
    return digests


def _require_unchanged(
    payload: Sequence[PayloadFile], first: Mapping[str, str], second: Mapping[str, str]
) -> None:
    for item in payload:
        if item.source is not None and first[item.path] != second[item.path]:
            raise PackError(
                f"{item.source} changed while it was being packed (its SHA-256 differs between "
                "the two reads)",
                hint="do not write to the model while packing it; run pack again",
            )


class Writable(Protocol):
    """Anything bytes are written to in order."""

    def write(self, data: bytes, /) -> object: ...


class TeeSink:
    """A write-only stream that hashes (on the hasher's thread) what it passes on."""

    def __init__(self, out: Writable, hasher: PipelinedHasher) -> None:
        self._out = out
        self._hasher = hasher

    def write(self, data: bytes) -> int:
        data = bytes(data)  # the compressor reuses its buffer; the hasher and out keep theirs
        self._hasher.update(data)
        self._out.write(data)
        return len(data)

    def flush(self) -> None:
        """Nothing buffered here; the compressor calls it at the end of a frame."""


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


def _member_chunks(item: PayloadFile) -> Iterator[bytes]:
    """The file's bytes in chunks; a file whose size changed since it was listed fails."""
    assert item.source is not None
    remaining = item.size
    with item.source.open("rb") as handle:
        while chunk := handle.read(min(CHUNK_SIZE, remaining + 1)):
            remaining -= len(chunk)
            if remaining < 0:
                break
            yield chunk
    if remaining != 0:
        raise PackError(
            f"{item.source} changed size while it was being packed (expected {item.size} bytes)",
            hint="do not write to the model while packing it; run pack again",
        )
