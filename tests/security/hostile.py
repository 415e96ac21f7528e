"""Building blocks for the hostile-input suite: honest bundles to start from, and the few
byte-level forgeries that tests/bundle_factory.py does not already make.

Every hostile input is still built inside its test; these only spare each test the
boilerplate of an honest manifest, a stored bundle, or a pax header carrying any path.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import tarfile
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from bundle_factory import Entry, forge, manifest_for

import kbundle
from kbundle.container.manifest import (
    FORMAT_VERSION,
    Manifest,
    Member,
    ModelInfo,
    ProbeInfo,
    Requirements,
    serialize_manifest,
)
from kbundle.container.tarstream import padding
from kbundle.container.writer import PayloadFile, write_bundle
from kbundle.env.capture import capture_environment
from kbundle.errors import KbundleError

MODEL_PATH = "model/model.keras"


@functools.cache
def _environment() -> Any:
    return capture_environment()


def referencing_fields(paths: list[str]) -> dict[str, Any]:
    """The ``requirements`` and ``probe`` fields that reference the files listed under
    ``env/`` and ``probe/`` (the reader refuses members no field references): the first env
    file is the requirements, the second the lock; the first and last probe files are the
    inputs and outputs."""
    env = [p for p in paths if p.startswith("env/")]
    probe = [p for p in paths if p.startswith("probe/")]
    fields: dict[str, Any] = {}
    if env:
        fields["requirements"] = Requirements(
            requirements=env[0], lock=env[1] if len(env) > 1 else None
        )
    if probe:
        fields["probe"] = ProbeInfo(inputs=probe[0], outputs=probe[-1], rtol=1e-5, atol=1e-6)
    return fields


def manifest_record(
    members: list[Member],
    *,
    fmt: str = "keras",
    model_path: str = MODEL_PATH,
    keras_version: str | None = None,
) -> Manifest:
    """A well-formed manifest listing ``members``, with this machine's environment. A
    ``.keras`` model says this Keras saved it (as pack records it) unless ``keras_version``
    names another; that choice decides how load reads the zip (unzipped for Keras 3)."""
    saved_by = (
        {"keras_version": keras_version or metadata.version("keras")} if fmt == "keras" else {}
    )
    return Manifest(
        format_version=FORMAT_VERSION,
        generator="kbundle security tests",
        created="2026-01-01T00:00:00Z",
        model=ModelInfo(format=fmt, path=model_path, saved_by=saved_by),
        members=members,
        environment=_environment(),
        **referencing_fields([m.path for m in members if m.type == "file"]),
    )


def base_manifest(
    *, fmt: str = "keras", model_path: str = MODEL_PATH, keras_version: str | None = None
) -> dict[str, Any]:
    """A well-formed manifest as a dict; forgeries replace its ``members`` (manifest_for)."""
    return manifest_record(
        [], fmt=fmt, model_path=model_path, keras_version=keras_version
    ).to_dict()


def model_bundle(
    path: Path,
    files: Mapping[str, bytes],
    *,
    fmt: str = "keras",
    model_path: str = MODEL_PATH,
    level: int = 3,
    custom_objects: list[dict[str, Any]] | None = None,
    keras_version: str | None = None,
) -> Path:
    """An honest bundle of ``files`` (member path -> bytes): every digest matches, so only
    what the bytes *are* can make it hostile."""
    entries = [Entry(name, data) for name, data in files.items()]
    manifest = manifest_for(
        entries, base_manifest(fmt=fmt, model_path=model_path, keras_version=keras_version)
    )
    for key, value in referencing_fields(list(files)).items():
        manifest[key] = dataclasses.asdict(value)
    if custom_objects is not None:
        manifest["custom_objects"] = custom_objects
    return forge(path, manifest, entries, level=level)


def stored_bundle(path: Path, files: Mapping[str, bytes], *, model_path: str = MODEL_PATH) -> Path:
    """A bundle written by kbundle's own writer with compression off, so that every member's
    bytes appear verbatim in the file (a flipped content byte is a digest mismatch)."""
    sources = path.parent / f"{path.name}.sources"
    sources.mkdir()
    payload = []
    for index, (name, data) in enumerate(files.items()):
        source = sources / str(index)
        source.write_bytes(data)
        payload.append(PayloadFile(name, source, len(data)))

    def make_manifest(digests: Mapping[str, str]) -> bytes:
        members = [Member(path=p.path, size=p.size, digest=digests[p.path]) for p in payload]
        return serialize_manifest(manifest_record(members, model_path=model_path))

    with path.open("w+b") as out:
        write_bundle(out, payload, make_manifest, level=None, threads=0, mtime=0)
    return path


def empty_trusted_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point ``KBUNDLE_TRUSTED_KEYS`` at a new empty directory for the test, so that the
    machine's own trusted keys never change an outcome."""
    path = tmp_path / "trusted"
    path.mkdir(mode=0o755)
    monkeypatch.setenv("KBUNDLE_TRUSTED_KEYS", str(path))
    return path


def pax_entry(path_value: bytes, data: bytes, *, ustar_name: str = "model/benign.bin") -> bytes:
    """A file entry whose ustar ``name`` field is harmless and whose pax ``path`` record (what
    every tar tool extracts to) is ``path_value``, any bytes at all, NUL included."""
    body = b" path=" + path_value + b"\n"
    length = len(body) + len(str(len(body)))
    length = len(body) + len(str(length))  # the length counts its own digits
    records = str(length).encode() + body
    pax = tarfile.TarInfo("PaxHeader/entry")
    pax.type = tarfile.XHDTYPE
    pax.size = len(records)
    main = tarfile.TarInfo(ustar_name)
    main.size = len(data)
    main.mode = 0o644
    return (
        pax.tobuf(tarfile.USTAR_FORMAT)
        + records
        + padding(len(records))
        + main.tobuf(tarfile.USTAR_FORMAT)
        + data
        + padding(len(data))
    )


def flip(data: bytes, offset: int, mask: int = 0x5A) -> bytes:
    """``data`` with the byte at ``offset`` XOR-ed with ``mask``."""
    changed = bytearray(data)
    changed[offset] ^= mask
    return bytes(changed)


def verify_error(path: Path) -> KbundleError | None:
    """The error ``kbundle.verify`` raises for ``path``, or None when it verifies. Any
    exception that is not a KbundleError propagates: that is a bug."""
    try:
        kbundle.verify(path)
    except KbundleError as exc:
        return exc
    return None


def tree(root: Path) -> dict[str, str]:
    """Everything under ``root`` (hidden entries included): relative path -> what it is."""
    found: dict[str, str] = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory, name)
            relative = path.relative_to(root).as_posix()
            if path.is_symlink():
                found[relative] = f"symlink -> {os.readlink(path)}"
            elif path.is_dir():
                found[relative] = "dir"
            else:
                found[relative] = f"file {path.stat().st_size} bytes"
    return found
