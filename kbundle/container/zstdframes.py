"""zstd frame layout: writing raw (stored) frames and tracking frame boundaries while reading.

Two things the zstandard bindings do not give us:

* **Raw frames of a size known in advance.** The manifest is the first tar member, but its
  digests are known only after the payload is hashed. Stored in a raw frame, the manifest's
  compressed size depends only on its length (digests have a fixed length), so the writer
  reserves that many bytes, streams the payload once, and rewrites the frame in place.
  ``RawFrameWriter`` also stores the payload when compression is off (level ``none``).
* **Proof that every byte is intact and the stream ended where it should.** The decompressor
  returns whatever it has when its input stops, even inside a frame or before the checksum,
  and some frame-header bytes (the window size) change no decoded byte when flipped.
  ``FrameTracker`` follows frame and block headers in the compressed bytes as they stream
  past (O(blocks) work, no decompression), hands every payload-frame byte to a hasher, and
  collects the *trailer*: a skippable frame that ends every bundle with the SHA-256 of all
  payload-frame bytes. So truncation, trailing garbage and any flipped byte are caught.

Reference: RFC 8878 (Zstandard Compression and the application/zstd Media Type), section 3.1.
Stable: internal.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import BinaryIO, Protocol

from kbundle.container.limits import MAX_WINDOW_SIZE
from kbundle.errors import IntegrityError, LimitExceededError

__all__ = [
    "TRAILER_SIZE",
    "TRAILER_TAG",
    "ZSTD_MAGIC",
    "FrameTracker",
    "RawFrameWriter",
    "TrackedReader",
    "raw_frame",
    "raw_frame_size",
    "trailer_frame",
    "xxh64",
]

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_SKIPPABLE_MAGIC_LOW, _SKIPPABLE_MAGIC_HIGH = 0x184D2A50, 0x184D2A5F
# RFC 8878 3.1.1.2: a block holds at most 128 KiB of content.
_MAX_BLOCK = 128 * 1024
_BLOCK_RAW, _BLOCK_RLE, _BLOCK_COMPRESSED, _BLOCK_RESERVED = 0, 1, 2, 3
# Single_Segment_flag set, an 8-byte Frame_Content_Size and a content checksum: no window
# descriptor needed, and a flipped byte in a stored frame is caught like one in any other.
_FHD_SINGLE_SEGMENT_FCS8_CHECKSUM = (3 << 6) | (1 << 5) | (1 << 2)
# A window descriptor of exponent 7, mantissa 0 announces a 128 KiB window (2**(10+7)), the
# smallest a stream of full raw blocks needs.
_WINDOW_DESCRIPTOR_128K = 7 << 3


def _block_header(size: int, *, last: bool) -> bytes:
    return ((size << 3) | (_BLOCK_RAW << 1) | int(last)).to_bytes(3, "little")


def raw_frame_size(content_size: int) -> int:
    """How many bytes ``raw_frame`` produces for ``content_size`` bytes of content."""
    blocks = max(1, -(-content_size // _MAX_BLOCK))
    return len(ZSTD_MAGIC) + 1 + 8 + 3 * blocks + content_size + 4


def raw_frame(content: bytes) -> bytes:
    """One checksummed zstd frame that stores ``content`` verbatim, with its size in the header.

    Meant for small content (the manifest): the checksum is computed in Python.
    """
    out = bytearray(ZSTD_MAGIC)
    out.append(_FHD_SINGLE_SEGMENT_FCS8_CHECKSUM)
    out += struct.pack("<Q", len(content))
    offsets = range(0, len(content), _MAX_BLOCK) if content else [0]
    last_offset = offsets[-1]
    for offset in offsets:
        block = content[offset : offset + _MAX_BLOCK]
        out += _block_header(len(block), last=offset == last_offset)
        out += block
    out += (xxh64(content) & 0xFFFFFFFF).to_bytes(4, "little")
    return bytes(out)


_MASK64 = (1 << 64) - 1
_P1, _P2, _P3 = 0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9
_P4, _P5 = 0x85EBCA77C2B2AE63, 0x27D4EB2F165667C5


def _rotl(value: int, bits: int) -> int:
    return ((value << bits) | (value >> (64 - bits))) & _MASK64


def _round(acc: int, lane: int) -> int:
    return (_rotl((acc + lane * _P2) & _MASK64, 31) * _P1) & _MASK64


def xxh64(data: bytes, seed: int = 0) -> int:
    """XXH64 (the hash zstd frames use as content checksum), in pure Python."""
    length, offset = len(data), 0
    if length >= 32:
        acc = [(seed + _P1 + _P2) & _MASK64, (seed + _P2) & _MASK64, seed, (seed - _P1) & _MASK64]
        stripes = length // 32
        lanes = struct.unpack_from(f"<{stripes * 4}Q", data)
        for index in range(0, stripes * 4, 4):
            acc[0] = _round(acc[0], lanes[index])
            acc[1] = _round(acc[1], lanes[index + 1])
            acc[2] = _round(acc[2], lanes[index + 2])
            acc[3] = _round(acc[3], lanes[index + 3])
        digest = _rotl(acc[0], 1) + _rotl(acc[1], 7) + _rotl(acc[2], 12) + _rotl(acc[3], 18)
        digest &= _MASK64
        for value in acc:
            digest = ((digest ^ _round(0, value)) * _P1 + _P4) & _MASK64
        offset = stripes * 32
    else:
        digest = (seed + _P5) & _MASK64
    digest = (digest + length) & _MASK64
    while offset + 8 <= length:
        (lane,) = struct.unpack_from("<Q", data, offset)
        digest = (_rotl(digest ^ _round(0, lane), 27) * _P1 + _P4) & _MASK64
        offset += 8
    if offset + 4 <= length:
        (word,) = struct.unpack_from("<I", data, offset)
        digest = (_rotl(digest ^ ((word * _P1) & _MASK64), 23) * _P2 + _P3) & _MASK64
        offset += 4
    while offset < length:
        digest = (_rotl(digest ^ ((data[offset] * _P5) & _MASK64), 11) * _P1) & _MASK64
        offset += 1
    digest ^= digest >> 33
    digest = (digest * _P2) & _MASK64
    digest ^= digest >> 29
    digest = (digest * _P3) & _MASK64
    digest ^= digest >> 32
    return digest


class RawFrameWriter:
    """A writable stream that stores what it is given in one raw zstd frame of unknown size."""

    def __init__(self, sink: BinaryIO) -> None:
        self._sink = sink
        self._pending = bytearray()
        sink.write(ZSTD_MAGIC + bytes([0, _WINDOW_DESCRIPTOR_128K]))

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._pending += data
        while len(self._pending) > _MAX_BLOCK:
            self._emit(_MAX_BLOCK, last=False)
        return len(data)

    def _emit(self, size: int, *, last: bool) -> None:
        self._sink.write(_block_header(size, last=last))
        self._sink.write(self._pending[:size])
        del self._pending[:size]

    def close(self) -> None:
        """Write the last block; the frame is complete afterwards."""
        self._emit(len(self._pending), last=True)


TRAILER_MAGIC = 0x184D2A5B  # a zstd skippable-frame magic (RFC 8878 3.1.2), chosen for kbundle
TRAILER_TAG = b"KBTRAIL1"
TRAILER_SIZE = 8 + len(TRAILER_TAG) + 32  # magic, size, tag, SHA-256


def trailer_frame(payload_sha256: bytes) -> bytes:
    """The skippable frame that ends a bundle: the SHA-256 of every payload-frame byte."""
    content = TRAILER_TAG + payload_sha256
    return struct.pack("<II", TRAILER_MAGIC, len(content)) + content


class FrameTracker:
    """Follows zstd frame structure over the compressed bytes, fed in order, chunk by chunk.

    The first frame is the header region; the frames after it are the payload, whose bytes
    (headers, blocks and checksums alike) go to ``on_payload``; the trailer frame that must end
    the stream is collected into ``trailer``. Anything after the trailer is refused.
    """

    def __init__(self, on_payload: Callable[[bytes], None] | None = None) -> None:
        self._buffer = bytearray()  # header bytes not yet complete
        self._skip = 0  # block content (or checksum) bytes still to pass over
        self._state = "frame"  # frame | block | checksum | trailer | ended
        self._last_block = False
        self._checksum = False
        self._on_payload = on_payload
        self._pieces: list[bytes | memoryview] = []  # payload bytes of the current feed()
        self.frames = 0
        self.consumed = 0
        self.trailer: bytes | None = None

    @property
    def at_frame_boundary(self) -> bool:
        """True between frames (and after the trailer)."""
        return self._state in ("frame", "ended") and not self._buffer and self._skip == 0

    @property
    def at_end(self) -> bool:
        """True when the stream so far ends exactly after a complete trailer frame."""
        return self._state == "ended"

    def _payload(self, data: bytes | bytearray | memoryview) -> None:
        if self.frames > 1 and self._on_payload is not None and self._state != "trailer":
            # Header bytes live in a reused buffer and are copied; block contents are views
            # of the caller's immutable chunk.
            self._pieces.append(bytes(data) if isinstance(data, bytearray) else data)

    def feed(self, data: bytes) -> None:
        try:
            self._feed(data)
        finally:
            if self._pieces:
                # One hand-over per chunk: a call per zstd block (every 128 KiB at most)
                # cost more than the hashing itself.
                joined = self._pieces[0] if len(self._pieces) == 1 else b"".join(self._pieces)
                self._pieces = []
                assert self._on_payload is not None
                self._on_payload(bytes(joined) if isinstance(joined, memoryview) else joined)

    def _feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._state == "ended":
                raise IntegrityError(
                    f"unexpected data at byte {self.consumed} after the trailer frame",
                    hint="garbage was appended or the bundle is damaged; fetch an intact copy",
                )
            if self._skip:
                step = min(self._skip, len(view))
                if self._state == "trailer":
                    self._buffer += view[:step]
                else:
                    self._payload(view[:step])
                self._skip -= step
                self.consumed += step
                view = view[step:]
                if self._skip == 0:
                    self._end_skip()
                continue
            need = self._header_size()
            take = min(need - len(self._buffer), len(view))
            self._buffer += view[:take]
            self.consumed += take
            view = view[take:]
            if len(self._buffer) == need or (self._state == "frame" and len(self._buffer) >= 5):
                self._parse_header()

    def _end_skip(self) -> None:
        if self._state == "trailer":
            self.trailer = bytes(self._buffer)
            self._buffer.clear()
            self._state = "ended"
        elif self._state == "checksum":
            self._state = "frame"

    def _header_size(self) -> int:
        if self._state == "block":
            return 3
        if len(self._buffer) < 5:
            return 5  # magic + frame header descriptor
        if int.from_bytes(self._buffer[:4], "little") == TRAILER_MAGIC:
            return 8  # magic + content size
        descriptor = self._buffer[4]
        fcs_flag, single = descriptor >> 6, (descriptor >> 5) & 1
        dict_bytes = (0, 1, 2, 4)[descriptor & 3]
        fcs_bytes = (single, 2, 4, 8)[fcs_flag]
        return 5 + (0 if single else 1) + dict_bytes + fcs_bytes

    def _parse_header(self) -> None:
        if self._state == "block":
            self._parse_block_header()
            return
        magic = int.from_bytes(self._buffer[:4], "little")
        start = self.consumed - len(self._buffer)
        if magic == TRAILER_MAGIC and self.frames >= 2:
            if len(self._buffer) < 8:
                return
            size = int.from_bytes(self._buffer[4:8], "little")
            if size != TRAILER_SIZE - 8:
                raise IntegrityError(
                    f"the trailer frame at byte {start} has size {size}, not {TRAILER_SIZE - 8}",
                    hint="the bundle is damaged; fetch an intact copy",
                )
            self._buffer.clear()
            self._state, self._skip = "trailer", size
            return
        if bytes(self._buffer[:4]) != ZSTD_MAGIC:
            what = (
                "a skippable frame kbundle does not write"
                if _SKIPPABLE_MAGIC_LOW <= magic <= _SKIPPABLE_MAGIC_HIGH
                else f"bytes {bytes(self._buffer[:4]).hex()} that start no zstd frame"
            )
            raise IntegrityError(
                f"unexpected data at byte {start} after {self.frames} complete frame(s): {what}",
                hint="garbage was appended or the bundle is damaged; fetch an intact copy",
            )
        if len(self._buffer) < self._header_size():
            return
        descriptor = self._buffer[4]
        if descriptor & 0b1_1000 or descriptor & 0b11:
            # Reserved and unused bits, and dictionaries: kbundle never sets them, and a flip
            # there changes no decoded byte, so it would otherwise go unnoticed.
            raise IntegrityError(
                f"compressed stream is corrupt: unexpected flags {descriptor:#04x} in frame "
                f"{self.frames + 1} header at byte {start}",
                hint="the bundle is damaged; fetch an intact copy",
            )
        if not (descriptor >> 5) & 1:
            window_descriptor = self._buffer[5]
            window_log = 10 + (window_descriptor >> 3)
            window = (1 << window_log) + ((1 << window_log) >> 3) * (window_descriptor & 7)
            if window > MAX_WINDOW_SIZE:
                raise LimitExceededError(
                    f"zstd frame {self.frames + 1} asks for a {window}-byte window, more than the "
                    f"limit of {MAX_WINDOW_SIZE}",
                    hint="kbundle never writes such frames; refuse the bundle",
                )
        self._checksum = bool((descriptor >> 2) & 1)
        if self.frames == 0 and (descriptor & 0b0010_0100) != 0b0010_0100:
            # The first frame (the header region) must check every one of its bytes: a single
            # segment (no window descriptor) with a content size and a checksum.
            raise IntegrityError(
                f"the first frame is not single-segment with a content size and checksum "
                f"(flags {descriptor:#04x})",
                hint="the bundle is damaged or was recompressed by another tool; fetch an "
                "intact copy, or unpack and pack it again",
            )
        self.frames += 1
        self._payload(self._buffer)
        self._buffer.clear()
        self._state = "block"

    def _parse_block_header(self) -> None:
        header = int.from_bytes(self._buffer, "little")
        self._payload(self._buffer)
        self._buffer.clear()
        self._last_block, block_type, size = bool(header & 1), (header >> 1) & 3, header >> 3
        if block_type == _BLOCK_RESERVED or size > _MAX_BLOCK:
            raise IntegrityError(
                f"compressed stream is corrupt: invalid block header at byte {self.consumed - 3}",
                hint="the bundle is damaged; fetch an intact copy",
            )
        self._skip = 1 if block_type == _BLOCK_RLE else size
        if self._last_block:
            self._state = "checksum"
            self._skip += 4 if self._checksum else 0
            if self._skip == 0:
                self._state = "frame"


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class TrackedReader:
    """A binary reader that passes every byte it reads through a :class:`FrameTracker`."""

    def __init__(self, source: _Readable, tracker: FrameTracker) -> None:
        self._source = source
        self.tracker = tracker

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self.tracker.feed(data)
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)
