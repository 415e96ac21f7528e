"""The pack pipeline: a model (file, directory or live ``keras.Model``) in, one bundle out.

Composes model_files (what the model is), keras_io (saving a live model), environment
(capture), archive (one streaming pass) and atomic (nothing lost). Later stages add to the
payload through ``Extras``: custom-object code, requirements, probe data, the user's assets
and metadata. Stable: the ``pack()`` signature is public API.
"""

from __future__ import annotations

import datetime as _dt
import os
import stat
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from kbundle._io.scratch import memory_scratch
from kbundle._version import __version__
from kbundle.container.manifest import (
    FORMAT_VERSION,
    Asset,
    Environment,
    Manifest,
    Member,
    Metadata,
    ModelInfo,
    bundle_digest,
    parse_manifest,
    serialize_manifest,
)
from kbundle.container.names import collision_key, name_problem
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
from kbundle.env.rules.tensorflow import shadowing
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

__all__ = ["DEFAULT_LEVEL", "PackResult", "SavedLiveModel", "pack", "save_live_model"]

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


def _source_date_epoch() -> int | None:
    """``SOURCE_DATE_EPOCH`` when set to decimal digits: the user asks for a reproducible
    bundle (reproducible-builds.org), so nothing may depend on when or how pack ran."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch and epoch.isascii() and epoch.isdigit():  # str.isdigit alone accepts '²'
        return int(epoch)
    return None


def _utc_now() -> tuple[str, int]:
    epoch = _source_date_epoch()
    moment = (
        _dt.datetime.fromtimestamp(epoch, _dt.timezone.utc)
        if epoch is not None
        else _dt.datetime.now(_dt.timezone.utc)
    )
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ"), int(moment.timestamp())


def _model_payload(source: Path, fmt: str, watch: ZipCrcWatch | None) -> list[PayloadFile]:
    """Payload entries for the model itself, under ``model/``; a model file's bytes are
    shown to ``watch`` as they are packed."""
    return _tree_payload(source, f"model/{MODEL_FILE_NAMES[fmt]}", watch)


def _tree_payload(source: Path, target: str, watch: ZipCrcWatch | None = None) -> list[PayloadFile]:
    """Payload entries for a file, or for a directory and everything under it (walked in
    sorted order, every directory listed so that empty ones come back), as member ``target``.
    Only regular files and directories travel: a link or a device is refused."""
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
                f"compression level must be a number or 'none': {level!r}",
                hint="use --level 1 (level=1)",
            )
        level = int(level)
    if not -7 <= level <= MAX_LEVEL or level == 0:
        raise UsageError(
            f"compression level must be 1..{MAX_LEVEL} (or -7..-1 for faster), or 'none': {level}",
            hint="use --level 1 (the default) or --level none (level=None)",
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
    description: dict[str, Any],
    scratch: Path,
    probe: bool | None,
) -> Extras:
    """``probe/``: a deterministic input and the model's output on it (see
    kbundle.models.probe). A model file loaded to run it fills in what its description lacks
    (the outputs, which a config does not record)."""
    from kbundle.models import keras_io
    from kbundle.models.probe import probe_payload

    lambdas = _lambda_note(source, fmt)
    if lambdas and probe is not False and not keras_io.is_keras_model(model):
        if probe:
            raise PackError(
                "cannot probe the model: loading it runs its Lambda layers' Python bytecode, "
                "which pack does not do",
                hint="pack with --no-probe (probe=False), or pack the live model",
            )
        reason = "loading the model runs its Lambda layers' Python bytecode, which pack does not do"
        return Extras(notes=(*lambdas, f"no probe stored: {reason}"))
    made = probe_payload(model, source, fmt, scratch, wanted=probe)
    for key, value in (made.described or {}).items():
        known = description.get(key)
        # The config names the outputs; only the loaded model knows their shapes.
        unshaped = key == "outputs" and known and any(spec.shape is None for spec in known)
        if (
            value is not None
            and key in ("inputs", "outputs", "parameter_count")
            and (known is None or unshaped)
        ):
            description[key] = value
    return Extras(made.files, {"probe": made.info} if made.info else None, lambdas + made.notes)


def _lambda_note(source: Path, fmt: str) -> tuple[str, ...]:
    """What a model whose config holds Python bytecode (Lambda layers) means for loading it."""
    from kbundle.models.formats import read_model_config
    from kbundle.models.references import marshalled_code

    try:
        places = marshalled_code(read_model_config(source, fmt) or {})
    except (OSError, ValueError):
        return ()
    if not places:
        return ()
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    count = f"{len(places)} Lambda layer{'s' if len(places) > 1 else ''}"
    return (
        f"the model holds Python bytecode ({count}, first at {places[0]}): loading it needs "
        "--unsafe-lambda (safe_mode=False), which runs that bytecode, and works only under "
        f"Python {python}, which wrote it; a registered custom layer instead of the Lambda "
        "loads in safe mode and under any Python",
    )


def _requirements_extras(
    environment: Environment, added: Extras, scratch: Path, lock: bool
) -> Extras:
    """``env/``: the pinned closure and, with ``lock``, its hashes (kbundle.env.requirements)."""
    from kbundle.env.requirements import requirements_payload

    custom_objects = list((added.fields or {}).get("custom_objects") or [])
    requirements, files = requirements_payload(scratch, environment, custom_objects, lock=lock)
    notes = (requirements.note,) if lock and requirements.note else ()
    return Extras(tuple(files), {"requirements": requirements}, notes)


def _asset_extras(assets: Sequence[str | os.PathLike[str]]) -> Extras:
    """``assets/``: each file or directory the user added, as ``assets/<its name>``.

    Every name must pass the member naming rules as it is: an asset is refused, never
    renamed (a renamed file is not the one the code that reads it expects)."""
    payload: list[PayloadFile] = []
    records: list[Asset] = []
    seen: dict[str, Path] = {}
    for given in assets:
        source = Path(given)
        try:
            info = source.lstat()
        except OSError as exc:
            raise UsageError(
                f"asset {str(given)!r} cannot be read: {exc.strerror}", hint="check --asset"
            ) from None
        if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
            raise UsageError(
                f"asset {str(given)!r} is not a regular file or directory (a link, device or FIFO)",
                hint="pass the file or directory itself in --asset (assets=)",
            )
        target = f"assets/{source.resolve().name}"
        earlier = seen.get(collision_key(target))
        if earlier is not None:
            raise UsageError(
                f"assets {str(earlier)!r} and {str(given)!r} would both be {target!r}",
                hint="give each asset a distinct file name (names are compared ignoring case)",
            )
        seen[collision_key(target)] = Path(given)
        entries = _tree_payload(source, target)
        for entry in entries:
            problem = name_problem(entry.path)
            if problem:
                raise UsageError(
                    f"asset {str(entry.source or given)!r} cannot travel as {entry.path!r}: "
                    f"{problem}",
                    hint="rename the file; kbundle refuses names some systems cannot create "
                    "rather than change them",
                )
        payload.extend(entries)
        records.append(Asset(path=target))
    return Extras(tuple(payload), {"assets": records} if records else None)


def _metadata_fields(
    labels: Mapping[str, str] | None, provenance: bool, record_hostname: bool
) -> dict[str, Any]:
    """The ``metadata`` field: the user's labels and the provenance of this run."""
    checked: dict[str, str] = {}
    for key, value in (labels or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise UsageError(
                f"labels map strings to strings: {key!r}: {value!r}",
                hint="pass labels as --label KEY=VALUE (labels={'key': 'value'})",
            )
        if not key or not key.isprintable() or "=" in key:
            raise UsageError(
                f"label key must be non-empty printable text without '=': {key!r}",
                hint="pass labels as --label KEY=VALUE (labels={'key': 'value'})",
            )
        checked[key] = value
    recorded = None
    if provenance:
        from kbundle.env.provenance import capture_provenance

        # A reproducible pack records no command line: it names the output, which differs.
        command = _source_date_epoch() is None
        recorded = capture_provenance(hostname=record_hostname, command=command)
    return {"metadata": Metadata(labels=dict(sorted(checked.items())), provenance=recorded)}


def _with_custom_objects(
    added: Extras,
    model: Any,
    source: Path,
    fmt: str,
    scratch: Path,
    given: Mapping[str, Any] | None,
    modules: Sequence[str],
    project_imports: bool,
) -> Extras:
    """``added`` plus the model's custom objects: their files, and the manifest's records.
    With ``project_imports``, the modules a model file's config names that are the author's
    own source are imported first (and said so in a note)."""
    from kbundle.code import capture as carry
    from kbundle.models import keras_io

    notes: tuple[str, ...] = ()
    if project_imports and not keras_io.is_keras_model(model):
        found = carry.project_modules(source, fmt)
        found = [name for name in found if name not in modules]
        if found:
            with keras_io.native_logs():
                carry.import_modules(found)
            notes = (
                f"imported {', '.join(found)} from your project to find the model's custom "
                "objects (--no-project-imports turns this off)",
            )
    with keras_io.native_logs():
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
    return replace(
        added, payload=carried.payload + added.payload, fields=fields, notes=added.notes + notes
    )


def _scratch_need(model: Any, probe: bool | None) -> int:
    """About the bytes pack's scratch directory will hold: a live model's saved weights, or a
    ``.keras`` file unzipped to run the probe."""
    from kbundle.models import keras_io

    if keras_io.is_keras_model(model):
        return keras_io.weight_bytes(model)
    if isinstance(model, str | os.PathLike) and probe is not False:
        try:
            return Path(model).stat().st_size
        except OSError:
            return 0  # refused later, with the path named
    return 0


@dataclass(frozen=True, slots=True)
class SavedLiveModel:
    """A live ``keras.Model`` already saved to ``path`` (a ``.keras`` file) and described.

    :func:`pack` takes one in place of the model: the Keras callback saves and describes the
    model on the training thread (what a plain checkpoint costs) and packs on another."""

    model: Any
    path: Path
    description: Mapping[str, Any]


def save_live_model(model: Any, directory: Path) -> SavedLiveModel:
    """Save ``model`` as ``directory/model.keras`` and describe it (class, inputs, outputs,
    parameters: what only the live model knows; the file is read later, by pack)."""
    from kbundle.models import keras_io

    path = keras_io.save_model(model, directory)
    return SavedLiveModel(model, path, keras_io.describe_live_model(model))


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
    project_imports: bool = True,
    phase: Callable[[str], None] | None = None,
    assets: Sequence[str | os.PathLike[str]] = (),
    labels: Mapping[str, str] | None = None,
    provenance: bool = True,
    record_hostname: bool = False,
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
    without their module (``kbundle pack --custom-objects MODULE``). With ``project_imports``
    (the default) the modules a model file's config names are imported too when they are
    your project's own source (``.py`` files under the current directory or a ``PYTHONPATH``
    entry; never an installed distribution's): what registers their custom objects runs, in
    your environment, as when you trained the model.

    ``assets`` are files and directories that travel with the model, verified like every
    member, as ``assets/<name>`` (docs/assets-and-metadata.md); a name the format forbids is
    refused, never changed. ``labels`` (string -> string) are recorded in the manifest's
    ``metadata``, with the provenance of this run unless ``provenance=False``: the git commit
    of the current directory and whether tracked files changed, the command line, and the
    host name only with ``record_hostname``.

    ``model`` is a path to a ``.keras`` file (or directory form), an ``.h5`` file, a SavedModel
    directory, or a live ``keras.Model`` (saved as ``.keras`` first). ``level`` is a zstd
    level or ``"none"``; ``threads`` the zstd worker count (-1: one per CPU). ``progress`` is
    called with (bytes done, bytes total) while the bundle is written; ``phase`` with a few
    words naming each step before it that may take a while (loading the model to probe it,
    say). ``signing_key`` (from
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
    announce = phase or (lambda _text: None)
    from kbundle.models import keras_io

    asset_extras = _asset_extras(assets)  # a bad asset fails before anything is saved
    metadata = _metadata_fields(labels, provenance, record_hostname)
    # The live model's save, or the model file unzipped to probe it, is read back at once.
    private = memory_scratch(_scratch_need(model, probe))
    with tempfile.TemporaryDirectory(prefix="kbundle-pack-", dir=private) as scratch:
        crc_watch: ZipCrcWatch | None = None  # Keras has just written a saved model
        unchecked: tuple[str, ...] = ()
        live: Any = None
        if keras_io.is_keras_model(model):
            announce("saving the model")
            model = save_live_model(model, Path(scratch))
        if isinstance(model, SavedLiveModel):
            source, fmt, live = model.path, "keras", model.model
            description = {**model.description, "saved_by": model_saved_by(source, fmt)}
        elif isinstance(model, str | os.PathLike):
            source = Path(model)
            fmt = identify_format(source)
            announce("checking the model file")
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
        given = live if live is not None else model  # the live model, or the path given
        added = extras(given, Path(scratch), fmt) if extras else Extras()
        added = added.merged(Extras(notes=unchecked))
        announce("finding the model's custom objects")
        added = _with_custom_objects(
            added, live, source, fmt, Path(scratch), custom_objects, custom_modules, project_imports
        )
        if probe is not False:
            announce("running the probe (loads the model with Keras when packing a file)")
        added = added.merged(_probe_extras(given, source, fmt, description, Path(scratch), probe))
        # After the probe: a TensorFlow it imported is recorded in full.
        announce("recording the environment")
        environment = capture_environment()
        shadowed = shadowing(environment)  # two TensorFlows: the user must hear it now
        added = added.merged(Extras(notes=(shadowed,) if shadowed else ()))
        if lock:
            announce("hash-locking the requirements (asks the package index)")
        added = added.merged(_requirements_extras(environment, added, Path(scratch), lock))
        added = added.merged(asset_extras).merged(Extras(fields=metadata))
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
