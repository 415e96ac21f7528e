"""Checks of an HDF5 file (an ``.h5`` model, and the weights of a Keras 3 model) before h5py
or Keras reads it: the signature, the size against the superblock's end-of-file address
(truncation), then every object through h5py: external and soft links, external raw storage,
virtual datasets, and datasets that declare far more data than they store (shape bombs).
h5py is imported here only, lazily; without it the objects are not checked (an INFO finding).
Stable: the checks may grow; a file refused by one release stays refused by the next.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from typing import IO, Any

from kbundle.errors import first_sentence
from kbundle.findings import Finding, Severity
from kbundle.models.checks.common import (
    CUT_SHORT,
    DAMAGED_START,
    INCOMPLETE,
    FileFindings,
    H5Objects,
    bomb,
    json_findings,
    not_a_model,
)
from kbundle.models.formats import (
    HDF5_SIGNATURE,
)

__all__ = ["H5_BOMB_FLOOR_BYTES", "MAX_H5_EXPANSION", "MAX_H5_OBJECTS", "check_h5"]

# Keras writes a few objects per weight; a million objects is far beyond any model and bounds
# the walk over a hostile file's object graph (which may contain hard-link cycles).
MAX_H5_OBJECTS = 1_000_000
# A dataset's declared size must be backed by stored bytes: Keras writes every weight in
# full, uncompressed. One declaring 1000x more than it stores (a (2**50,) shape over a fill
# value) would make the loader allocate memory it never needs. Small datasets are exempt.
MAX_H5_EXPANSION = 1000
H5_BOMB_FLOOR_BYTES = 64 * 1024 * 1024
# HDF5 looks for its superblock at 0, 512, 1024, 2048, ... (a user block may precede it).
_H5_SUPERBLOCK_SEARCH_LIMIT = 1 << 20
_UNDEFINED_ADDRESS = (1 << 64) - 1


def check_h5(
    handle: IO[bytes], size: int, name: str, h5_objects: H5Objects | None = None
) -> FileFindings:
    findings = _h5_superblock_findings(handle, size, name)
    if findings:
        return findings
    try:
        import h5py
    except ImportError:
        return [
            Finding(
                location=name,
                problem="HDF5 objects not checked: h5py is not installed",
                severity=Severity.INFO,
                fix="pip install h5py (Keras needs it to read this file)",
            )
        ]
    handle.seek(0)
    return _h5_object_findings(h5py, handle, name, h5_objects)


def _h5_superblock_findings(handle: IO[bytes], size: int, name: str) -> FileFindings:
    offset = 0
    while offset < min(size, _H5_SUPERBLOCK_SEARCH_LIMIT):
        handle.seek(offset)
        if handle.read(8) == HDF5_SIGNATURE:
            break
        offset = 512 if offset == 0 else offset * 2
    else:
        other = not_a_model(handle, size, name, "h5")
        if other is not None:
            return [other]
        return [
            Finding(
                location=name,
                problem="wrong magic bytes: no HDF5 signature",
                expected=HDF5_SIGNATURE.hex(),
                actual=handle.read(8).hex() or "an empty file",
                fix=DAMAGED_START,
            )
        ]
    expected = _h5_end_of_file(handle, offset)
    if expected is not None and expected > size:
        return [
            Finding(
                location=name,
                problem="HDF5 file is truncated",
                expected=f"{expected} bytes (the superblock's end-of-file address)",
                actual=f"{size} bytes",
                why=CUT_SHORT,
                fix=INCOMPLETE,
            )
        ]
    return []


def _h5_end_of_file(handle: IO[bytes], offset: int) -> int | None:
    """Base address + end-of-file address from the superblock at ``offset`` (any version)."""
    handle.seek(offset + 8)
    head = handle.read(16)
    if len(head) < 16:
        return None
    version = head[0]
    if version in (0, 1):
        width = head[5]  # size of offsets
        fields_at = offset + 24 + (4 if version == 1 else 0)
    elif version in (2, 3):
        width = head[1]
        fields_at = offset + 12
    else:
        return None
    if width not in (2, 4, 8):
        return None
    handle.seek(fields_at)
    raw = handle.read(width * 3)  # base address, free-space/extension address, end of file
    if len(raw) < width * 3:
        return None
    base, _, end = (int.from_bytes(raw[i * width : (i + 1) * width], "little") for i in range(3))
    if end == _UNDEFINED_ADDRESS or base == _UNDEFINED_ADDRESS:
        return None
    return base + end


def _h5_object_findings(
    h5py: Any, handle: IO[bytes], name: str, h5_objects: H5Objects | None
) -> FileFindings:
    findings: FileFindings = []
    where = name
    try:
        with h5py.File(handle, "r") as root:
            for object_path, kind, item in _h5_walk(h5py, root):
                where = f"{name}:{object_path}"
                findings += _h5_item_findings(h5py, kind, item, where)
                if h5_objects is not None and kind in ("group", "dataset"):
                    h5_objects[object_path] = (
                        math.prod(item.shape or ()) if kind == "dataset" else None
                    )
                if len(findings) > 100:  # enough evidence; stop walking a hostile file
                    break
            where = f"{name}:/ (attribute model_config)"
            config = root.attrs.get("model_config")
            if config is not None:
                text = (
                    config.decode("utf-8", "replace") if isinstance(config, bytes) else str(config)
                )
                findings += json_findings(io.BytesIO(text.encode()), len(text), where)
    except _TooManyObjects as exc:
        findings.append(
            Finding(
                location=name,
                problem="too many HDF5 objects",
                expected=f"at most {MAX_H5_OBJECTS}",
                actual=f"more than {exc.count}",
                fix="this is not a file Keras wrote; do not load it",
            )
        )
    except Exception as exc:  # h5py raises OSError, KeyError, ValueError, RuntimeError...
        findings.append(
            Finding(
                location=where,
                problem="unreadable HDF5 structure: "
                f"{type(exc).__name__}: {first_sentence(str(exc))}",
                why="HDF5 metadata (object headers, B-trees, heaps) is damaged",
                fix="the file is corrupt; restore it from a backup or save the model again",
            )
        )
    return findings


class _TooManyObjects(Exception):
    def __init__(self, count: int) -> None:
        self.count = count


def _h5_walk(h5py: Any, root: Any) -> Iterator[tuple[str, str, Any]]:
    """(path, kind, object) for every link; links are reported, never followed."""
    seen = {root.id}
    stack: list[tuple[str, Any]] = [("", root)]
    count = 0
    yield "/", "group", root
    while stack:
        prefix, group = stack.pop()
        for child in group:
            count += 1
            if count > MAX_H5_OBJECTS:
                raise _TooManyObjects(MAX_H5_OBJECTS)
            object_path = f"{prefix}/{child}"
            link = group.get(child, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                yield object_path, "external-link", link
                continue
            if isinstance(link, h5py.SoftLink):
                yield object_path, "soft-link", link
                continue
            item = group[child]
            if item.id in seen:  # a hard link back to an object already walked (maybe a cycle)
                continue
            seen.add(item.id)
            if isinstance(item, h5py.Group):
                yield object_path, "group", item
                stack.append((object_path, item))
            else:
                yield object_path, "dataset" if isinstance(item, h5py.Dataset) else "other", item


def _h5_item_findings(h5py: Any, kind: str, item: Any, where: str) -> FileFindings:
    refuse = "this is not a file Keras wrote; do not load it"
    if kind == "external-link":
        return [
            Finding(
                location=where,
                problem="external link to another file",
                actual=f"{item.filename}:{item.path}",
                why="loading would read data from a file outside the model",
                fix=refuse,
            )
        ]
    if kind == "soft-link":
        return [
            Finding(
                location=where,
                problem="soft link",
                actual=str(item.path),
                why="Keras never writes links; they can alias or loop",
                fix=refuse,
            )
        ]
    if kind != "dataset":
        return []
    if item.is_virtual:
        sources = ", ".join(sorted({source.file_name for source in item.virtual_sources()}))
        return [
            Finding(
                location=where,
                problem="virtual dataset",
                actual=f"maps {sources}",
                why="loading would read data from files outside the model",
                fix=refuse,
            )
        ]
    if item.external:
        files = ", ".join(str(entry[0]) for entry in item.external)
        return [
            Finding(
                location=where,
                problem="dataset stored in an external raw file",
                actual=files,
                why="loading would read data from a file outside the model",
                fix=refuse,
            )
        ]
    declared = math.prod(item.shape or ()) * item.dtype.itemsize
    stored = item.id.get_storage_size()
    if declared > H5_BOMB_FLOOR_BYTES and declared > MAX_H5_EXPANSION * stored:
        return [bomb(where, declared, stored, MAX_H5_EXPANSION)]
    return []
