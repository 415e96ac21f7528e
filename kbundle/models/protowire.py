"""Reading protobuf wire format without a schema or a protobuf library.

Just enough to pull named fields out of TensorFlow's ``saved_model.pb`` and Keras 2's
``keras_metadata.pb`` without importing TensorFlow (whose proto classes need it). The caller
knows the field numbers; this module only splits a message into ``(number, wire type, value)``
triples, lazily, over bytes or a memory map, so a large graph is skipped rather than copied.
Malformed or truncated input raises :class:`WireError` with the byte offset. Stable: internal.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["Field", "WireError", "messages", "read_fields", "strings", "varints"]

VARINT, FIXED64, LENGTH_DELIMITED, FIXED32 = 0, 1, 2, 5
# A varint never needs more than ten bytes (64 bits, seven per byte).
_MAX_VARINT_BYTES = 10


class WireError(ValueError):
    """The bytes are not valid protobuf wire format (truncated, or a bad tag or wire type)."""

    def __init__(self, problem: str, offset: int) -> None:
        super().__init__(f"{problem} at byte {offset}")
        self.problem = problem
        self.offset = offset


@dataclass(frozen=True, slots=True)
class Field:
    """One field of a message: ``value`` is an int (varint, fixed) or a ``memoryview`` slice."""

    number: int
    wire_type: int
    value: int | memoryview
    offset: int

    @property
    def data(self) -> memoryview:
        """The bytes of a length-delimited field (a string, bytes or an embedded message)."""
        if not isinstance(self.value, memoryview):
            raise WireError(f"field {self.number} is not length-delimited", self.offset)
        return self.value

    @property
    def signed(self) -> int:
        """A varint read as the two's-complement int64 protobuf uses for negative numbers."""
        value = int(self.value) if isinstance(self.value, int) else 0
        return value - (1 << 64) if value >= 1 << 63 else value


def _varint(data: memoryview, offset: int) -> tuple[int, int]:
    result = 0
    for index in range(_MAX_VARINT_BYTES):
        if offset + index >= len(data):
            raise WireError("truncated varint", offset)
        byte = data[offset + index]
        result |= (byte & 0x7F) << (7 * index)
        if not byte & 0x80:
            return result, offset + index + 1
    raise WireError("varint longer than ten bytes", offset)


def read_fields(data: bytes | memoryview, base: int = 0) -> Iterator[Field]:
    """Every field of one message, in order. ``base`` is added to reported offsets."""
    view = memoryview(data)
    offset = 0
    while offset < len(view):
        start = offset
        tag, offset = _varint(view, offset)
        number, wire_type = tag >> 3, tag & 7
        if number == 0:
            raise WireError("field number 0", base + start)
        value: int | memoryview
        if wire_type == VARINT:
            value, offset = _varint(view, offset)
        elif wire_type in (FIXED64, FIXED32):
            width = 8 if wire_type == FIXED64 else 4
            if offset + width > len(view):
                raise WireError("truncated fixed-width field", base + start)
            value = int.from_bytes(view[offset : offset + width], "little")
            offset += width
        elif wire_type == LENGTH_DELIMITED:
            length, offset = _varint(view, offset)
            if offset + length > len(view):
                raise WireError(
                    f"field {number} declares {length} bytes but {len(view) - offset} remain",
                    base + start,
                )
            value = view[offset : offset + length]
            offset += length
        else:  # 3/4 are the long-deprecated groups, 6/7 do not exist; TensorFlow writes neither
            raise WireError(f"unsupported wire type {wire_type}", base + start)
        yield Field(number, wire_type, value, base + start)


def messages(data: bytes | memoryview, number: int) -> Iterator[memoryview]:
    """The embedded messages (or raw bytes) stored under field ``number``."""
    for item in read_fields(data):
        if item.number == number and item.wire_type == LENGTH_DELIMITED:
            yield item.data


def strings(data: bytes | memoryview, number: int) -> Iterator[str]:
    """The strings stored under field ``number`` (invalid UTF-8 replaced, never raised)."""
    for raw in messages(data, number):
        yield bytes(raw).decode("utf-8", "replace")


def varints(data: bytes | memoryview, number: int) -> Iterator[Field]:
    """The varint fields stored under ``number`` (use ``.value`` or ``.signed``)."""
    for item in read_fields(data):
        if item.number == number and item.wire_type == VARINT:
            yield item
