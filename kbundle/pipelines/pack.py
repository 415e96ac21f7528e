"""The pack pipeline: a model (file, directory or live ``keras.Model``) in, one bundle out.

Composes model_files (what the model is), keras_io (saving a live model), environment
(capture), archive (one streaming pass) and atomic (nothing lost). Later stages add to the
payload through ``Extras``: custom-object code, requirements, probe data. Stable: the
``pack()`` signature is public API.
"""

from __future__ import annotations

import datetime as _dt
import os
import stat
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from kbundle._version import __version__
from kbundle.container.manifest import (
    FORMAT_VERSION,
    Environment,
    Manifest,
    Member,
    ModelInfo,
    bundle_digest,
    parse_manifest,
    serialize_manifest,
)
from kbundle.container.signature_member import signature_member_size
from kbundle.container.writer import (
    DEFAULT_LEVEL,
    BundleOutput,
    PayloadFile,
    ProgressCallback,
    hash_payload,
    write_bundle,
)
from kbundle.env.capture import capture_environment
from kbundle.errors import PackError, UsageError
from kbundle.models.checks import ZipCrcWatch, require_sound_before_streaming
from kbundle.models.formats import (
    MODEL_FILE_NAMES,
    describe_model_file,
    identify_format,
    model_saved_by,
)
from kbundle.signing.keys import SigningKey
from kbundle.signing.signatures import manifest_signer
from kbundle.storage.locations import Location, parse_location
from kbundle.storage.outputs import check_output, open_output

__all__ = ["DEFAULT_LEVEL", "PackResult", "pack"]

MAX_LEVEL = 22


@dataclass(frozen=True, slots=True)
class PackResult:
    """What pack wrote: where (a local path; a URL, without credentials; ``"-"``), the
    bundle digest (``sha256:`` of the manifest), the manifest."""

    path: Path | str
    digest: str
    manifest: Manifest
    size: int
    notes: tuple[str, ...] = ()
    signers: tuple[str, ...] = ()  # key ids that signed it in the same pass

    def to_dict(self) -> dict[str, Any]:
        """The ``kbundle pack --json`` shape."""
        return {
            "ok": True,
            "bundle": str(self.path),
            "digest": self.digest,
            "size": self.size,
            "model_format": self.manifest.model.format,
            "signers": list(self.signers),
            "notes": list(self.notes),
        }


def _utc_now() -> tuple[str, int]:
    # SOURCE_DATE_EPOCH makes bundles byte-for-byte reproducible (reproducible-builds.org).
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    moment = (
        _dt.datetime.fromtimestamp(int(epoch), _dt.timezone.utc)
        if epoch and epoch.isascii() and epoch.isdigit()  # str.isdigit alone accepts '²'
        else _dt.datetime.now(_dt.timezone.utc)
    )
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ"), int(moment.timestamp())


def _model_payload(source: Path, fmt: str, watch: ZipCrcWatch | None) -> list[PayloadFile]:
    """Payload entries for the model itself, under ``model/``; a model file's bytes are
    shown to ``watch`` as they are packed."""
    target = f"model/{MODEL_FILE_NAMES[fmt]}"
    if not source.is_dir():
        return [PayloadFile(target, source, source.stat().st_size, watch)]
    entries = [PayloadFile(target, None)]
    for root, dirs, files in os.walk(source, followlinks=False):
        dirs.sort()
        root_path = Path(root)
        relative_root = root_path.relative_to(source).as_posix()
        prefix = target if relative_root == "." else f"{target}/{relative_root}"
        for name in dirs:
            if (root_path / name).is_symlink():
                raise UsageError(
                    f"{root_path / name} is a symbolic link; bundles hold only regular files",
                    hint="replace the link with the directory it points to",
                )
            entries.append(PayloadFile(f"{prefix}/{name}", None))
        for name in sorted(files):
            info = (root_path / name).lstat()
            if not stat.S_ISREG(info.st_mode):
                raise UsageError(
                    f"{root_path / name} is not a regular file (link, device or FIFO)",
                    hint="bundles hold only regular files and directories",
                )
            entries.append(PayloadFile(f"{prefix}/{name}", root_path / name, info.st_size))
    return entries


def _parse_level(level: int | str | None) -> int | None:
    if level is None or level == "none":
        return None
    if isinstance(level, str):
        if not level.lstrip("-").isdigit():
            raise UsageError(
                f"compression level must be a number or 'none': {level!r}", hint="use --level 1"
            )
        level = int(level)
    if not -7 <= level <= MAX_LEVEL or level == 0:
        raise UsageError(
            f"compression level must be 1..{MAX_LEVEL} (or -7..-1 for faster), or 'none': {level}",
            hint="use --level 1 (default) or --level none",
        )
    return level


@dataclass(frozen=True, slots=True)
class Extras:
    """Additions to a bundle beyond the model: more payload, manifest fields, notes for the user."""

    payload: tuple[PayloadFile, ...] = ()
    fields: Mapping[str, Any] | None = None
    notes: tuple[str, ...] = ()

    def merged(self, other: Extras) -> Extras:
        fields = {**(self.fields or {}), **(other.fields or {})}
        return Extras(self.payload + other.payload, fields, self.notes + other.notes)


def _probe_extras(
    model: Any,
    source: Path,
    fmt: str,
    description: Mapping[str, Any],
    scratch: Path,
    probe: bool | None,
) -> Extras:
    """``probe/``: a deterministic input and the model's output on it (see kbundle.models.probe)."""
    from kbundle.models.probe import probe_payload

    inputs = description.get("inputs")
    info, files, notes = probe_payload(model, source, fmt, inputs, scratch, wanted=probe)
    return Extras(tuple(files), {"probe": info} if info else None, notes)


def _requirements_extras(
    environment: Environment, added: Extras, scratch: Path, lock: bool
) -> Extras:
    """``env/``: the pinned closure and, with ``lock``, its hashes (kbundle.env.requirements)."""
    from kbundle.env.requirements import requirements_payload

    custom_objects = list((added.fields or {}).get("custom_objects") or [])
    requirements, files = requirements_payload(scratch, environment, custom_objects, lock=lock)
    notes = (requirements.note,) if lock and requirements.note else ()
    return Extras(tuple(files), {"requirements": requirements}, notes)


def _with_custom_objects(
    added: Extras,
    model: Any,
    source: Path,
    fmt: str,
    scratch: Path,
    given: Mapping[str, Any] | None,
    modules: Sequence[str],
) -> Extras:
    """``added`` plus the model's custom objects: their files, and the manifest's records."""
    from kbundle.code import capture as carry
    from kbundle.models import keras_io

    carry.import_modules(modules)
    carried = carry.collect_custom_objects(
        source,
        fmt,
        custom_objects=given,
        scratch=scratch,
        model=model if keras_io.is_keras_model(model) else None,
        modules=modules,
    )
    fields = {"custom_objects": list(carried.records), **(added.fields or {})}
    return replace(added, payload=carried.payload + added.payload, fields=fields)


def pack(
    model: Any,
    output: str | os.PathLike[str],
    *,
    force: bool = False,
    custom_objects: Mapping[str, Any] | None = None,
    custom_modules: Sequence[str] = (),
    level: int | str | None = DEFAULT_LEVEL,
    threads: int = -1,
    progress: Callable[[int, int], None] | None = None,
    extras: Callable[[Any, Path, str], Extras] | None = None,
    signing_key: SigningKey | None = None,
    probe: bool | None = None,
    lock: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> PackResult:
    """Pack ``model`` into the bundle ``output``: a path, a URL of any fsspec filesystem
    (``storage_options`` go to it) or ``"-"`` for standard output (docs/storage.md).

    ``probe`` stores a deterministic input and the model's output on it (``None``: whenever
    the input signature is known; packing a file then loads it with Keras, which imports
    TensorFlow; ``False`` keeps pack free of that). ``lock`` adds hashes to the pinned
    requirements through pip-tools, which asks the package index (see ``kbundle.env.requirements``).

    Custom objects the model's config names travel with it (see docs/custom-objects.md);
    ``custom_objects`` (name -> class or function, as for ``keras.saving.load_model``) adds
    objects and says where to find those that are neither registered nor importable;
    ``custom_modules`` are imported first and searched for names a model file records
    without their module (``kbundle pack --custom-objects MODULE``).

    ``model`` is a path to a ``.keras`` file (or directory form), an ``.h5`` file, a SavedModel
    directory, or a live ``keras.Model`` (saved as ``.keras`` first). ``level`` is a zstd
    level or ``"none"``; ``threads`` the zstd worker count (-1: one per CPU). ``progress`` is
    called with (bytes done, bytes total). ``signing_key`` (from
    :func:`kbundle.signing.keys.load_signing_key`) signs the manifest in the same pass. Nothing is
    left at ``output`` unless pack succeeds: a file is renamed into place, an upload is
    completed, only then (an ``s3://`` bundle is uploaded while it is packed, with no local
    copy; standard output and other stores are written after a first pass that hashes the
    model files).
    """
    target = parse_location(output, storage_options)
    inputs = (Location(path=Path(model)),) if isinstance(model, str | os.PathLike) else ()
    check_output(target, force=force, inputs=inputs)
    compression = _parse_level(level)
    from kbundle.models import keras_io

    with tempfile.TemporaryDirectory(prefix="kbundle-pack-") as scratch:
        crc_watch: ZipCrcWatch | None = None  # Keras has just written a saved model
        unchecked: tuple[str, ...] = ()
        if keras_io.is_keras_model(model):
            source = keras_io.save_model(model, Path(scratch))
            fmt = "keras"
            description = keras_io.describe_live_model(model)
            description["saved_by"] = model_saved_by(source, fmt)
        elif isinstance(model, str | os.PathLike):
            source = Path(model)
            fmt = identify_format(source)
            # Refuse a corrupt or hostile file now, not when someone loads the bundle.
            checked = require_sound_before_streaming(
                source, fmt, error=PackError, hint=f"run 'kbundle doctor {source}'"
            )
            crc_watch, unchecked = checked.watch, checked.unchecked
            description = describe_model_file(source, fmt, h5_objects=checked.h5_objects)
        else:
            raise UsageError(
                f"cannot pack a {type(model).__name__}: expected a keras.Model or a model path",
                hint="pass a .keras/.h5 file, a SavedModel directory or a keras.Model",
            )
        payload = _model_payload(source, fmt, crc_watch)
        added = extras(model, Path(scratch), fmt) if extras else Extras()
        added = added.merged(Extras(notes=unchecked))
        added = _with_custom_objects(
            added, model, source, fmt, Path(scratch), custom_objects, custom_modules
        )
        added = added.merged(_probe_extras(model, source, fmt, description, Path(scratch), probe))
        # After the probe: a TensorFlow it imported is recorded in full.
        environment = capture_environment()
        added = added.merged(_requirements_extras(environment, added, Path(scratch), lock))
        payload += list(added.payload)
        created, mtime = _utc_now()
        info = ModelInfo(format=fmt, path=payload[0].path, **description)

        def make_manifest(digests: Mapping[str, str]) -> bytes:
            manifest = Manifest(
                format_version=FORMAT_VERSION,
                generator=f"kbundle {__version__}",
                created=created,
                model=info,
                members=[
                    Member(path=p.path, type="dir")
                    if p.source is None
                    else Member(path=p.path, size=p.size, digest=digests[p.path])
                    for p in payload
                ],
                environment=environment,
            )
            if added.fields:
                manifest = replace(manifest, **added.fields)
            return serialize_manifest(manifest)

        total = sum(p.size for p in payload)
        done = 0

        def advance(count: int) -> None:
            nonlocal done
            done += count
            if progress:
                progress(done, total)

        reporter: ProgressCallback | None = advance if progress else None
        with open_output(target, force=force) as out:
            digests = None
            if isinstance(out, BundleOutput) and not out.header_last:
                # Written in order: the digests first (and a damaged model refused before a
                # byte is written), then the bundle in one stream.
                digests = hash_payload(payload)
                if crc_watch:
                    crc_watch.require()
            manifest_bytes = write_bundle(
                out,
                payload,
                make_manifest,
                level=compression,
                threads=threads,
                mtime=mtime,
                progress=reporter,
                sign=manifest_signer(signing_key) if signing_key else None,
                signature_size=signature_member_size(1) if signing_key else 0,
                digests=digests,
            )
            size = out.size if isinstance(out, BundleOutput) else out.seek(0, os.SEEK_END)
            # Inside the block: a damaged model or a manifest that breaks a format rule
            # leaves no bundle behind.
            if crc_watch:
                crc_watch.require()
            manifest = parse_manifest(manifest_bytes)
    signers = (signing_key.key_id,) if signing_key else ()
    return PackResult(
        target.reported, bundle_digest(manifest_bytes), manifest, size, added.notes, signers
    )
