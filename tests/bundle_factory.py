"""Forging bundles for tests: any manifest, any tar entries, honest or hostile.

Built from the same public pieces as the real writer (header region, tar headers, zstd), so
a forged bundle differs from a real one only where a test makes it differ.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zstandard

from kbundle.container.tarstream import END_OF_ARCHIVE, padding
from kbundle.container.writer import header_region
from kbundle.container.zstdframes import trailer_frame


@dataclass
class Entry:
    """One tar entry: a name, data, and a tar type (REGTYPE, DIRTYPE, SYMTYPE, ...)."""

    name: str
    data: bytes = b""
    type: bytes = tarfile.REGTYPE
    linkname: str = ""
    size: int | None = None  # declared size when it should differ from len(data)
    mode: int | None = None  # tar mode bits when they should differ from what kbundle writes


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tar_entry(entry: Entry) -> bytes:
    info = tarfile.TarInfo(entry.name)
    info.type = entry.type
    info.size = len(entry.data) if entry.size is None else entry.size
    info.linkname = entry.linkname
    info.mode = (
        entry.mode if entry.mode is not None else 0o755 if entry.type == tarfile.DIRTYPE else 0o644
    )
    header = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    return header + entry.data + padding(len(entry.data))


def manifest_for(entries: Sequence[Entry], base: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``members`` listing ``entries`` honestly."""
    members = []
    for entry in entries:
        if entry.type == tarfile.DIRTYPE:
            members.append({"path": entry.name, "type": "dir", "size": None, "digest": None})
        else:
            members.append(
                {
                    "path": entry.name,
                    "type": "file",
                    "size": len(entry.data),
                    "digest": digest(entry.data),
                }
            )
    return {**base, "members": members}


def assemble(
    manifest: dict[str, Any] | bytes, payload_frames: bytes, signature: bytes | None = None
) -> bytes:
    """A whole bundle file: header region with ``manifest`` (and ``signature``), the frames,
    and their trailer."""
    manifest_bytes = (
        manifest if isinstance(manifest, bytes) else json.dumps(manifest, indent=2).encode()
    )
    return (
        header_region(manifest_bytes, signature)
        + payload_frames
        + trailer_frame(hashlib.sha256(payload_frames).digest())
    )


def forge(
    path: Path,
    manifest: dict[str, Any] | bytes,
    entries: Sequence[Entry],
    *,
    level: int = 3,
    tail: bytes = END_OF_ARCHIVE,
    signature: bytes | None = None,
) -> Path:
    """Write a bundle: header region with ``manifest`` (and ``signature``), then ``entries``,
    then ``tail``."""
    payload = b"".join(tar_entry(e) for e in entries) + tail
    frames = zstandard.ZstdCompressor(level=level, write_checksum=True).compress(payload)
    path.write_bytes(assemble(manifest, frames, signature))
    return path


def real_manifest(bundle: Path) -> dict[str, Any]:
    """The manifest of an existing bundle, as a dict (for forging variations of it)."""
    import kbundle

    return json.loads(kbundle.inspect(bundle).manifest_bytes)


def payload_entries(bundle: Path) -> list[Entry]:
    """The payload of an existing bundle as entries (read with the standard tarfile)."""
    raw = (
        zstandard.ZstdDecompressor()
        .stream_reader(io.BytesIO(bundle.read_bytes()), read_across_frames=True)
        .read()
    )
    entries = []
    with tarfile.open(fileobj=io.BytesIO(raw)) as archive:
        for info in archive.getmembers():
            if info.name in ("kbundle.json", "kbundle.sig"):
                continue
            data = archive.extractfile(info).read() if info.isfile() else b""  # type: ignore[union-attr]
            entries.append(Entry(info.name, data, info.type))
    return entries
