"""Using a bundle: ``unpack`` (verify while extracting, and prove the model loads) and
``load`` (verify into a private directory, then load), with what may run decided first.

Before anything of a bundle is used: the whole bundle is verified (kbundle.pipelines.verify)
into a fresh private directory, the recorded environment is checked (kbundle.pipelines.check),
trust is established for code the bundle brings (bundled source, pickles, a SavedModel's
graph: ``trust_code`` or a trusted signature), every import goes through the import gate
(kbundle.code.gate), and the model file is checked again before Keras sees it
(kbundle.models.checks). After loading, the stored probe is run again and its finding is
merged into the environment report. Stable: ``unpack``, ``load``, ``LoadOptions`` and
``UnpackResult`` are public API.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kbundle._io.scratch import memory_scratch
from kbundle.code.gate import ImportGate
from kbundle.container.manifest import Manifest, ModelInfo
from kbundle.env.rules import CompatReport, Policy, resolve_policy
from kbundle.errors import (
    EnvironmentMismatchError,
    ModelFileError,
    ModelLoadError,
    UntrustedCodeError,
    UsageError,
)
from kbundle.findings import Finding, Severity
from kbundle.models.checks import require_sound_model, unzip_sound_keras
from kbundle.models.formats import keras_major
from kbundle.models.zipsplit import ZipSplit
from kbundle.pipelines.check import environment_gate
from kbundle.pipelines.verify import (
    OpenBundle,
    ProgressCallback,
    StorageOptions,
    VerifyReport,
    check_expected,
    reading,
    verified_scan,
)
from kbundle.signing.signatures import SignaturePolicy, TrustedKeys
from kbundle.storage.atomic import atomic_directory
from kbundle.storage.locations import parse_location
from kbundle.storage.mlflow_artifacts import local_bundle

__all__ = ["LoadOptions", "UnpackResult", "load", "unpack"]

_DIGEST_PREFIX = "sha256:"


@dataclass(slots=True)
class UnpackResult:
    """Where the verified files are, the verification report, and the model when loaded."""

    path: Path
    report: VerifyReport
    model: Any = None
    environment: list[Finding] = field(default_factory=list)

    @property
    def model_path(self) -> Path:
        return self.path / self.report.head.manifest.model.path

    @property
    def assets(self) -> dict[str, Path]:
        """Each asset's name and where it was extracted (format 1.1; empty for 1.0)."""
        return {a.name: self.path / a.path for a in self.report.head.manifest.assets}

    def to_dict(self) -> dict[str, Any]:
        """The ``kbundle unpack --json`` shape."""
        return {
            "ok": True,
            "destination": str(self.path),
            "digest": self.report.head.digest,
            "model": str(self.model_path),
            "assets": {name: str(path) for name, path in self.assets.items()},
            "loaded": self.model is not None,
            "signature": self.report.signature.to_dict() if self.report.signature else None,
            "environment": [f.to_dict() for f in self.environment],
        }


@dataclass(frozen=True, kw_only=True, slots=True)
class LoadOptions:
    """What loading may do: run bundled code, import installed code, turn Keras safe mode off,
    compile.

    ``trust_code`` lets the bundle's own code run (bundled source, pickles, a SavedModel's
    graph) and its custom objects import what they name. Without it, a load imports only
    Keras's own packages and the modules of ``allow_distributions`` (installed distributions
    the user allows, added to ``allow-distributions`` in ``[tool.kbundle]``; kbundle.code.gate).
    Before loading, the recorded environment is checked under ``env_policy`` (``None``: the
    ``[tool.kbundle]`` configuration, else ``default``); errors refuse unless ``ignore_env``.
    After loading, the stored probe is re-run unless ``probe`` is false.
    """

    trust_code: bool = False
    allow_distributions: tuple[str, ...] = ()
    safe_mode: bool = True
    compile: bool = True
    ignore_env: bool = False
    env_policy: Policy | None = None
    probe: bool = True

    @classmethod
    def create(
        cls,
        *,
        trust_code: bool = False,
        allow_distributions: Iterable[str] = (),
        safe_mode: bool = True,
        compile: bool = True,
        ignore_env: bool = False,
        env_policy: str | None = None,
        env_severity: Iterable[str] = (),
        probe: bool = True,
    ) -> LoadOptions:
        """The options from the keyword arguments ``load`` and ``unpack`` take: ``env_policy``
        names a policy and ``env_severity`` holds ``FIELD=LEVEL`` overrides over the
        ``[tool.kbundle]`` configuration (docs/compatibility.md)."""
        return cls(
            trust_code=trust_code,
            allow_distributions=tuple(allow_distributions),
            safe_mode=safe_mode,
            compile=compile,
            ignore_env=ignore_env,
            env_policy=resolve_policy(env_policy, env_severity, origin="env_severity"),
            probe=probe,
        )


@contextmanager
def _custom_objects(
    directory: Path, report: VerifyReport, gate: ImportGate
) -> Iterator[dict[str, Any] | None]:
    """The bundle's custom objects for Keras (``None`` when it has none); load the model inside
    the block. Call only after ``_require_trust``: every import goes through ``gate``."""
    manifest = report.head.manifest
    if not manifest.custom_objects:
        yield None
        return
    from kbundle.code import bundled as bundled_code
    from kbundle.code.registry import (
        preferred_objects,
        registered_object,
        registry_restored,
    )

    bundled_code.check_runnable(manifest)
    label = report.head.digest.removeprefix(_DIGEST_PREFIX)[:12]
    with (
        registry_restored(),
        bundled_code.bundled_objects(
            directory, manifest, label=label, registered=registered_object, gate=gate
        ) as objects,
        preferred_objects(objects),
    ):
        yield objects


def _trusted(report: VerifyReport, options: LoadOptions) -> bool:
    """Whether the bundle's own code may run: ``trust_code``, or a trusted signature."""
    signature = report.signature
    return options.trust_code or (signature is not None and signature.trusted)


def _import_gate(report: VerifyReport, options: LoadOptions) -> ImportGate:
    """The gate every import of this load goes through (kbundle.code.gate)."""
    from kbundle.config import find_project_config

    manifest = report.head.manifest
    return ImportGate(
        distributions=(*options.allow_distributions, *find_project_config().allow_distributions),
        trusted=_trusted(report, options),
        bundled=[s.module for o in manifest.custom_objects for s in o.sources],
    )


def _require_trust(report: VerifyReport, options: LoadOptions) -> None:
    """Code the bundle brings runs only with ``trust_code`` or a verified signature by a
    trusted key: bundled source and pickles, and a SavedModel, whose graph runs its functions
    and resource initialisers when it is loaded."""
    if _trusted(report, options):
        return
    manifest = report.head.manifest
    signature = report.signature
    signed = f"; {signature.describe()}" if signature is not None and signature.signers else ""
    if manifest.model.format == "savedmodel":
        raise UntrustedCodeError(
            "loading a SavedModel runs its graph (functions and resource initialisers can "
            f"read and write files), and nobody trusted this one{signed}",
            hint="pass --trust-code (trust_code=True) if you trust where it came from, or "
            "trust the signer's key; 'kbundle unpack --no-load' extracts it without loading",
        )
    carried = [o for o in manifest.custom_objects if o.transport in ("source", "pickle")]
    if not carried:
        return
    names = ", ".join(f"{o.name} ({o.transport})" for o in carried)
    raise UntrustedCodeError(
        f"loading would run bundled code nobody trusted: {names}{signed}",
        hint="review it with 'kbundle show-code', then pass --trust-code (trust_code=True), "
        "or trust the signer's public key (--key, or the trusted keys directory)",
    )


# The file names Keras reads as each format (keras.saving.load_model goes by the suffix).
_LOADER_SUFFIXES = {"keras": (".keras",), "h5": (".h5", ".hdf5")}


@contextmanager
def _sound_model(
    directory: Path, info: ModelInfo, *, private: bool = False, split: ZipSplit | None = None
) -> Iterator[tuple[Path, str]]:
    """The verified model file checked for Keras (its path and format, inside the block).

    The checksums prove the model is what was packed, not that it is harmless, so the
    pre-load checks run again. A Keras 3 ``.keras`` zip is unzipped while it is checked
    (into a directory inside ``directory``, removed after the block) and loaded from there:
    Keras reads the weights from the file instead of copying them into memory first. In a
    ``private`` directory (load's own copy, usually on tmpfs) the zip is deleted once
    unzipped, so its memory is free again before Keras allocates the model's. With ``split``
    the large members were already written into ``split.directory`` during extraction."""
    from kbundle.models import keras_io

    path = directory / info.path
    hint = "run 'kbundle doctor' on the bundle"
    suffixes = _LOADER_SUFFIXES.get(info.format)
    if suffixes and not info.path.lower().endswith(suffixes):
        # Keras picks its reader by the file name: a name of another format would have
        # another reader open the file than the checks below.
        raise ModelFileError(
            f"{info.path}: a {info.format} model must be named *{suffixes[0]}, "
            "as Keras chooses how to read a file by its name",
            hint="the bundle was not written by a conforming kbundle; do not load it",
        )
    unzip = info.format == "keras" and keras_major(info.saved_by) == 3
    unzip = unzip and keras_io.loads_unzipped_keras()
    if split is not None and split.member != info.path:
        split = None  # planned for another member: this model was written whole
    if split is not None and not unzip:
        split.restore(path)  # this Keras reads only the zip: fill its holes again
    if not unzip:
        require_sound_model(path, info.format, error=ModelFileError, label=info.path, hint=hint)
        yield path, info.format
        return
    if split is not None:
        unzip_sound_keras(path, split.directory, label=info.path, hint=hint, split=split.members)
        path.unlink()  # a private copy with holes where the split members were
        yield split.directory, "keras-dir"
        return
    with tempfile.TemporaryDirectory(prefix="kbundle-unzip-", dir=directory) as scratch:
        unzipped = Path(scratch) / "keras_model"
        unzip_sound_keras(path, unzipped, label=info.path, hint=hint)
        if private:
            path.unlink()
        yield unzipped, "keras-dir"


def _zip_split(info: ModelInfo, directory: Path) -> ZipSplit | None:
    """For a Keras 3 ``.keras`` model: write its large members into ``directory`` while the
    bundle is extracted, instead of unzipping the zip later (decided without importing Keras,
    so a damaged bundle still fails before TensorFlow is imported)."""
    if info.format != "keras" or keras_major(info.saved_by) != 3:
        return None
    return ZipSplit(info.path, directory)


def _load_verified(
    directory: Path,
    report: VerifyReport,
    options: LoadOptions,
    name: str = "the bundle",
    *,
    private: bool = False,
    split: ZipSplit | None = None,
    phase: Callable[[str], None] | None = None,
) -> tuple[Any, CompatReport]:
    """Load the model from files that were just verified into ``directory``.

    The environment check runs first (errors refuse unless ``ignore_env``); the probe runs
    after loading. Returns the model and every environment finding, probe included.
    ``private``: ``directory`` is a copy made only for this load, which may consume it;
    ``split``: how the model zip was split while it was extracted.
    """
    announce = phase or (lambda _text: None)
    manifest = report.head.manifest
    announce("checking the environment")
    compat = environment_gate(manifest, options.env_policy, ignore=options.ignore_env, what=name)
    _require_trust(report, options)
    gate = _import_gate(report, options)
    announce("loading the model with Keras")
    with _sound_model(directory, manifest.model, private=private, split=split) as (
        model_path,
        fmt,
    ):
        _require_config_modules(gate, model_path, fmt, manifest, name)
        with _custom_objects(directory, report, gate) as objects:
            model = _load_model(model_path, fmt, objects, options, compat)
            if options.probe and manifest.probe is not None:
                announce("running the probe")
                compat = _with_probe(compat, model, directory, manifest, name)
    return model, compat


def _with_probe(
    compat: CompatReport, model: Any, directory: Path, manifest: Manifest, what: str
) -> CompatReport:
    """``compat`` with the probe's finding, under the report's policy (``--severity
    probe=warn``); an error finding raises."""
    from kbundle.models.probe import check_probe

    assert manifest.probe is not None
    finding = compat.policy.override(
        check_probe(
            model,
            directory,
            manifest.probe,
            differences=compat.findings,
            custom_objects=manifest.custom_objects,
        )
    )
    if finding.severity >= Severity.ERROR:
        raise EnvironmentMismatchError(
            f"the model loaded from {what} computes different outputs than when it was packed: "
            f"{finding.actual} (expected {finding.expected})",
            hint=f"{finding.why}; --no-probe (probe=False) skips the probe",
            findings=[finding],
        )
    return compat.with_findings([finding])


def _require_config_modules(
    gate: ImportGate, model_path: Path, fmt: str, manifest: Manifest, name: str
) -> None:
    """Refuse, before anything is imported, a config naming a module a Keras loader would
    import that nobody allowed (kbundle.code.gate)."""
    if fmt == "savedmodel":
        return  # trusted already: a SavedModel is code (_require_trust)
    from kbundle.models.formats import read_model_config

    try:
        config = read_model_config(model_path, fmt)
    except (OSError, ValueError) as exc:
        raise ModelFileError(
            f"{name}: the model's config cannot be read: {exc}",
            hint="the model file is damaged; run 'kbundle doctor' on the bundle",
        ) from exc
    provided = [o.name for o in manifest.custom_objects if o.transport != "builtin"]
    gate.require_config(config, provided, what=name)


def _load_model(
    model_path: Path,
    fmt: str,
    objects: dict[str, Any] | None,
    options: LoadOptions,
    compat: CompatReport,
) -> Any:
    from kbundle.models import keras_io

    try:
        return keras_io.load_model(
            model_path,
            fmt=fmt,
            custom_objects=objects,
            safe_mode=options.safe_mode,
            compile=options.compile,
        )
    except ModelLoadError as exc:
        raise compat.explain_load_failure(exc) from exc


def chosen_options(options: LoadOptions | None, keywords: LoadOptions) -> LoadOptions:
    """``options`` or the options built from keyword arguments: not both."""
    if options is None:
        return keywords
    if keywords != LoadOptions.create():
        raise UsageError(
            "pass either options= or the individual load keyword arguments, not both",
            hint="put every choice into the LoadOptions you pass",
        )
    return options


def unpack(
    bundle: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    *,
    force: bool = False,
    expect: str | None = None,
    load_model: bool = False,
    trusted_keys: TrustedKeys | None = None,
    require_signature: bool = False,
    progress: ProgressCallback | None = None,
    phase: Callable[[str], None] | None = None,
    options: LoadOptions | None = None,
    trust_code: bool = False,
    allow_distributions: Iterable[str] = (),
    safe_mode: bool = True,
    compile: bool = True,
    ignore_env: bool = False,
    env_policy: str | None = None,
    env_severity: Iterable[str] = (),
    probe: bool = True,
    storage_options: StorageOptions | None = None,
) -> UnpackResult:
    """Verify ``bundle`` while extracting it; ``destination`` appears only if all is intact.

    ``bundle`` is a path, a URL of any fsspec filesystem (``storage_options`` go to it) or
    ``"-"`` for standard input: it is read once, and what is verified is what is extracted
    (``expect`` proves the bytes actually read).

    The destination holds ``kbundle.json`` and the payload (``model/...``). An existing
    destination is replaced only with ``force``, and only when it is an earlier unpack's
    output that nothing was added to (everything in it is listed by its ``kbundle.json``), not
    a symbolic link, the current directory or a directory holding it, and never when it is or
    holds ``bundle`` itself (kbundle.storage.atomic). With ``load_model`` the model is loaded
    from the verified files before they are moved into place, proving that it loads; the load
    takes the same choices as :func:`load` (keywords, or one :class:`LoadOptions`).
    ``trusted_keys`` and ``require_signature`` are as for :func:`~kbundle.verify`; a signature
    by a trusted key lets bundled code run without ``trust_code``. ``progress`` is called with
    (bytes done, bytes total) while the bundle is verified; ``phase`` with a few words naming
    each later step (loading the model, running the probe).
    """
    chosen = chosen_options(
        options,
        LoadOptions.create(
            trust_code=trust_code,
            allow_distributions=allow_distributions,
            safe_mode=safe_mode,
            compile=compile,
            ignore_env=ignore_env,
            env_policy=env_policy,
            env_severity=env_severity,
            probe=probe,
        ),
    )
    location = parse_location(bundle, storage_options)
    check_expected(expect)
    policy = SignaturePolicy.create(trusted_keys, require_signature)
    inputs = (location.path,) if location.path is not None else ()
    with reading(location, progress) as opened:
        opened.reader.head()  # a bad bundle fails before any directory is made
        with atomic_directory(Path(destination), force=force, inputs=inputs) as staging:
            report = verified_scan(opened, expect=expect, policy=policy, extract_to=staging)
            if load_model:
                model, compat = _load_verified(staging, report, chosen, opened.name, phase=phase)
            else:  # nothing runs here, so differences are reported but refuse nothing
                model, compat = None, environment_gate(report.head.manifest, chosen.env_policy)
    return UnpackResult(Path(destination), report, model, list(compat.findings))


def load(
    bundle: str | os.PathLike[str],
    *,
    expect: str | None = None,
    trusted_keys: TrustedKeys | None = None,
    require_signature: bool = False,
    progress: ProgressCallback | None = None,
    phase: Callable[[str], None] | None = None,
    options: LoadOptions | None = None,
    trust_code: bool = False,
    allow_distributions: Iterable[str] = (),
    safe_mode: bool = True,
    compile: bool = True,
    ignore_env: bool = False,
    env_policy: str | None = None,
    env_severity: Iterable[str] = (),
    probe: bool = True,
    storage_options: StorageOptions | None = None,
) -> Any:
    """Verify the bundle into a private temporary directory and load the model from there.

    ``bundle`` is a path, a URL of any fsspec filesystem (``storage_options`` go to it),
    ``"-"`` for standard input, or an MLflow artifact URI (``runs:/RUN_ID/PATH/m.kbundle``,
    ``models:/NAME/VERSION``; needs ``kbundle[mlflow]``; downloaded into a private temporary
    directory first, docs/mlflow.md). It is read once, and the model is loaded from the files
    that read verified, so an object replaced after an earlier ``verify`` is verified anew
    (pin it with ``expect``). :func:`kbundle.open` also gives the bundle's assets.

    Returns a ``keras.Model`` for ``.keras`` and ``.h5`` models (a ``tf_keras`` model for a
    Keras 2 file only tf-keras can read) and a ``keras.layers.TFSMLayer`` for a SavedModel
    (docs/model-formats.md). The model file is checked before Keras opens it. Code the bundle
    brings (bundled source, pickles, a SavedModel's graph) runs only with ``trust_code=True``
    or when the bundle is signed by a trusted key (``trusted_keys``, else the trusted-keys
    directory; see :func:`~kbundle.verify`); otherwise only Keras's own packages and the
    installed distributions in ``allow_distributions`` (and ``[tool.kbundle]
    allow-distributions``) may be imported to find custom objects. Keras ``safe_mode`` stays
    on unless ``safe_mode=False``. The environment is checked first under ``env_policy``
    (``default``, ``strict``, ``lenient``; ``env_severity`` holds ``FIELD=LEVEL`` overrides;
    see docs/compatibility.md): errors raise :class:`EnvironmentMismatchError` unless
    ``ignore_env``; warnings are issued once, as one :class:`~kbundle.EnvironmentWarning`.
    The stored probe is re-run after loading unless ``probe=False``; a mismatch raises.
    ``options`` (a :class:`LoadOptions`) may replace the keyword arguments from
    ``trust_code`` on.
    """
    chosen = chosen_options(
        options,
        LoadOptions.create(
            trust_code=trust_code,
            allow_distributions=allow_distributions,
            safe_mode=safe_mode,
            compile=compile,
            ignore_env=ignore_env,
            env_policy=env_policy,
            env_severity=env_severity,
            probe=probe,
        ),
    )
    check_expected(expect)
    policy = SignaturePolicy.create(trusted_keys, require_signature)
    with (
        local_bundle(bundle) as given,
        reading(parse_location(given, storage_options), progress) as opened,
    ):
        scratch = memory_scratch(opened.reader.head().manifest.payload_size)
        with tempfile.TemporaryDirectory(prefix="kbundle-load-", dir=scratch) as private:
            model, _, compat = load_into(
                Path(private), opened, chosen, expect=expect, policy=policy, phase=phase
            )
    compat.warn_once(opened.name)
    return model


def load_into(
    private: Path,
    opened: OpenBundle,
    options: LoadOptions,
    *,
    expect: str | None,
    policy: SignaturePolicy,
    load_model: bool = True,
    phase: Callable[[str], None] | None = None,
) -> tuple[Any, VerifyReport, CompatReport]:
    """Verify ``opened`` into ``private/bundle`` (a fresh directory only this load uses) and
    load the model from there (unless not ``load_model``): the model (None when not loaded),
    the verification report and every environment finding."""
    files = private / "bundle"
    files.mkdir()
    manifest = opened.reader.head().manifest
    split = _zip_split(manifest.model, private / "keras_model") if load_model else None
    report = verified_scan(
        opened,
        expect=expect,
        policy=policy,
        extract_to=files,
        sinks={split.member: split.writer} if split else None,
    )
    if not load_model:  # nothing runs, so differences are reported but refuse nothing
        return None, report, environment_gate(report.head.manifest, options.env_policy)
    model, compat = _load_verified(
        files, report, options, opened.name, private=True, split=split, phase=phase
    )
    return model, report, compat
