"""Diagnosing a model that will not load: what ``kbundle doctor`` reports.

A model fails to load for one of three reasons, and each finding is filed under one:

* **corruption** — the bytes are damaged or hostile, or are not the model at all: wrong magic
  bytes, truncation, a bad zip CRC, unreadable HDF5 structure, an archive missing a member, a
  config that disagrees with its weights, an empty file, a Git LFS pointer, text, a zipped
  SavedModel, a bundle that fails verification, bombs and external links;
* **serialization** — the config names classes or functions this environment cannot resolve
  (what their module defines and registers now is read from its source, never imported),
  Lambda layers that need ``safe_mode=False``, or there is no config (a weights-only file);
* **environment** — the file was written by another Keras major (or a newer Keras of this
  one), backend or TensorFlow, or needs ops this TensorFlow build lacks.

The static part runs here and never imports TensorFlow or Keras. Everything that may crash,
hang or needs Keras — reading HDF5 through h5py, resolving names, the real load — runs in a
child process (``kbundle.doctor.child``) with safe mode on and no custom objects, so bundled
code never runs and a crash is reported, not suffered. The child's exception is mapped to a
class by :data:`FAILURE_RULES`, then explained by the findings made before it (a missing
object a finding names takes that finding's fix). Every finding carries a fix. A model is
healthy when it loads; findings on a model that loads are warnings. Stable: ``diagnose`` and
``Diagnosis`` are public API; texts may change.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kbundle.code.bundled import CARRIED
from kbundle.container.manifest import CustomObject, Environment
from kbundle.container.zstdframes import ZSTD_MAGIC
from kbundle.env.rules import compare_saved_by
from kbundle.env.rules.base import EXPORT_FIX
from kbundle.env.rules.saved_by import KERAS2_FIX, newer_version
from kbundle.errors import (
    EnvironmentMismatchError,
    IntegrityError,
    KbundleError,
    ModelLoadError,
    UntrustedCodeError,
    UsageError,
    first_sentence,
)
from kbundle.findings import Finding, Severity
from kbundle.models.formats import (
    identify_format,
    read_saved_model,
    saved_model_file,
)
from kbundle.models.protowire import WireError
from kbundle.storage.locations import Location, parse_location

__all__ = [
    "DEFAULT_TIMEOUT",
    "FAILURE_CLASSES",
    "FAILURE_RULES",
    "Diagnosis",
    "LoadAttempt",
    "diagnose",
]

FAILURE_CLASSES = ("corruption", "serialization", "environment")
# Importing TensorFlow takes seconds and a large model can take minutes to load; ten minutes
# separates "slow" from "hung" without letting doctor wait forever.
DEFAULT_TIMEOUT = 600.0
# How much of the child's stderr to keep as evidence when it dies.
_STDERR_TAIL = 2000

_RESTORE = "restore the file from a backup, copy it again, or save the model again"
_LAMBDA_FIX = (
    "if you trust the file, load it with safe_mode=False (kbundle: --unsafe-lambda); better, "
    "replace the Lambda with a registered custom layer and save the model again"
)
_CUSTOM_FIX = (
    "import the module that defines the missing object (its @keras.saving."
    "register_keras_serializable decorator must run), or pass the class in custom_objects "
    "under the registered name the file records"
)
_WEIGHTS_FIX = (
    "the file holds weights only, no model: build the model in code (the architecture that "
    "saved them), then call model.load_weights(FILE) (Keras 2 and Keras 3 both read .h5 "
    "weights)"
)
_DISAGREE_FIX = (
    "the model's config and its stored weights come from different models (an edited config, "
    "or files of two saves put together); restore the file from a backup or save the model again"
)
_UNKNOWN_FIX = "run with KBUNDLE_DEBUG=1 and report the error if the model should load"
_UNCOMPILED_FIX = (
    "the model itself loads; its training config (loss, metrics, optimizer) does not: load it "
    "with compile=False (keras.saving.load_model(FILE, compile=False), kbundle.load(..., "
    "compile=False)) and compile it again"
)

# (pattern over "ErrorType: message", class, fix), first match wins. Maps the exception the
# real load raised to a failure class.
FAILURE_RULES: tuple[tuple[str, str, str], ...] = (
    (r"safe_mode|`Lambda` layer|lambda", "serialization", _LAMBDA_FIX),
    (r"No model config found", "serialization", _WEIGHTS_FIX),
    (
        r"expected \d+ variables, but received \d+ variables|shape of the target variable and "
        r"the shape of the target value|[Ss]hape mismatch in layer",
        "corruption",
        _DISAGREE_FIX,
    ),
    (r"tf-keras \(Keras 2\) is not installed", "environment", KERAS2_FIX),
    (
        r"TFOpLambda|SlicingOpLambda|tf_keras\.src|keras\.src\.engine|keras\.engine",
        "environment",
        KERAS2_FIX,
    ),
    (
        r"No OpKernel|Op type not registered|CUDA|cuDNN|GPU",
        "environment",
        "load it where TensorFlow has the ops it needs (a GPU build), or re-export it on CPU",
    ),
    (r"TensorFlow backend|KERAS_BACKEND", "environment", "set KERAS_BACKEND=tensorflow"),
    (
        r"Could not locate|Unknown (layer|object|activation|loss|metric|optimizer|initializer|"
        r"regularizer|constraint)|Could not deserialize|KerasSaveable|custom_object",
        "serialization",
        _CUSTOM_FIX,
    ),
    (
        r"unexpected keyword argument|Unrecognized keyword argument|required positional argument|"
        r"from_config|get_config",
        "serialization",
        "a class's constructor does not accept the config it saved: its definition changed since "
        "saving, or its get_config() is incomplete; load with the code that saved it",
    ),
    (
        r"CRC|BadZipFile|not a zip file|truncat|signature|Unable to (synchronously )?open|"
        r"Unable to read|bad (symbol|object|heap|local heap|B-tree)|DataLoss|[Cc]hecksum|corrupt|"
        r"Error -3|invalid (stored block|distance|code)|unexpected end|DecodeError|"
        r"Error parsing message",
        "corruption",
        _RESTORE,
    ),
)


@dataclass(frozen=True, kw_only=True, slots=True)
class LoadAttempt:
    """The real load in the child: whether it ran, what it produced or raised, and the class."""

    attempted: bool
    ok: bool = False
    skipped: str | None = None
    needs_trust: bool = False  # skipped because loading would run code nobody trusted
    loader: str | None = None
    note: str | None = None
    error_type: str | None = None
    error: str | None = None
    failure_class: str | None = None
    fix: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self.__slots__ if getattr(self, key) is not None}


@dataclass(frozen=True, kw_only=True, slots=True)
class Diagnosis:
    """Everything doctor found about one model file, directory or bundle."""

    path: str
    kind: str  # "model" or "bundle"
    format: str | None
    saved_by: dict[str, str] = field(default_factory=dict)
    findings: dict[str, list[Finding]] = field(default_factory=dict)
    load: LoadAttempt = field(default_factory=lambda: LoadAttempt(attempted=False))

    @property
    def loads(self) -> bool:
        """True when the real load succeeded: the only verdict that means healthy."""
        return self.load.ok

    @property
    def failure_class(self) -> str | None:
        """Why the model does not load (``corruption``, ``serialization``, ``environment`` or
        ``unknown``); ``None`` when it loads."""
        if self.loads:
            return None
        if self.load.failure_class:
            return self.load.failure_class
        for name in FAILURE_CLASSES:
            if any(f.severity >= Severity.ERROR for f in self.findings.get(name, [])):
                return name
        if self.load.needs_trust:
            return None  # not a failure: doctor was not allowed to try
        return "unknown"

    def error(self) -> KbundleError | None:
        """The error that stands for this diagnosis (its exit code), or ``None`` if it loads."""
        failure = self.failure_class
        if failure is None:
            if self.load.needs_trust and not self.loads:
                return UntrustedCodeError(
                    f"{self.path} was not loaded: {self.load.skipped}",
                    hint="pass --trust-code (trust_code=True) if you trust it",
                )
            return None
        kind: type[KbundleError] = {
            "corruption": IntegrityError,
            "environment": EnvironmentMismatchError,
        }.get(failure, ModelLoadError)
        first = next(
            (f for f in self.findings.get(failure, []) if f.severity >= Severity.ERROR), None
        )
        reason = first.describe() if first else (self.load.error or "no reason found")
        return kind(
            f"{self.path} does not load ({failure}): {reason}",
            hint=(first.fix if first else None) or self.load.fix,
            findings=[f for name in FAILURE_CLASSES for f in self.findings.get(name, [])],
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "kind": self.kind,
            "format": self.format,
            "saved_by": self.saved_by,
            "loads": self.loads,
            "failure_class": self.failure_class,
            "findings": {
                name: [f.to_dict() for f in self.findings.get(name, [])] for name in FAILURE_CLASSES
            },
            "load": self.load.to_dict(),
        }


# --------------------------------------------------------------------------------------------
# Entry point


def diagnose(
    path: str | os.PathLike[str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    trust_code: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> Diagnosis:
    """Diagnose a model file or directory (``.keras``, ``.h5``, SavedModel) or a bundle.

    A bundle may also be a URL (``storage_options`` go to its filesystem) or ``"-"`` for
    standard input (docs/storage.md). Raises :class:`UsageError` only when ``path`` is
    missing or is no kind of model at all; every problem with a model is a finding in the
    returned :class:`Diagnosis`. Loading a SavedModel runs its graph, so it is loaded only
    with ``trust_code``; otherwise the load is skipped and the diagnosis says that it needs
    trust (its ``error()`` is an :class:`UntrustedCodeError`).
    """
    location = parse_location(path, storage_options)
    if location.path is None:  # only a bundle comes from a URL or standard input
        return _diagnose_bundle(location, timeout, trust_code)
    target = location.path
    if not target.exists():
        raise UsageError(f"{target} does not exist", hint="check the path")
    if target.is_file():
        with target.open("rb") as handle:
            if handle.read(4) == ZSTD_MAGIC:
                return _diagnose_bundle(location, timeout, trust_code)
    from kbundle.env.capture import capture_environment

    return _diagnose_model(
        target,
        _format_of(target),
        label=target.name,
        shown=str(target),
        current=capture_environment(),
        timeout=timeout,
        trusted=trust_code,
    )


def _format_of(path: Path) -> str:
    """The format ``path`` is, or was meant to be when its first bytes are damaged."""
    try:
        return identify_format(path)
    except UsageError:
        if path.is_dir():
            if (path / "variables").is_dir() or (path / "fingerprint.pb").is_file():
                return "savedmodel"  # its saved_model.pb is what is missing
            raise
        with path.open("rb") as handle:
            head = handle.read(16)
            handle.seek(max(0, path.stat().st_size - 65_557))  # end record + longest zip comment
            tail = handle.read()
        # The name, or what follows the damaged signature: a version-0 HDF5 superblock records
        # 8-byte offsets and lengths at bytes 13-14; a zip keeps its end record at the end.
        if path.suffix.lower() in (".h5", ".hdf5") or head[13:15] == b"\x08\x08":
            return "h5"
        if path.suffix.lower() == ".keras" or b"PK\x05\x06" in tail:
            return "keras"
        raise


def _diagnose_bundle(location: Location, timeout: float, trusted: bool) -> Diagnosis:
    from kbundle.env.capture import capture_environment
    from kbundle.env.rules import compare_environments
    from kbundle.pipelines.load import unpack

    current = capture_environment()
    shown = location.display
    source = location.path if location.path is not None else location.url or "-"
    with tempfile.TemporaryDirectory(prefix="kbundle-doctor-") as private:
        try:
            result = unpack(
                source, Path(private) / "bundle", load_model=False, storage_options=location.options
            )
        except IntegrityError as exc:
            name = location.path.name if location.path is not None else shown
            problems = list(exc.findings) or [
                Finding(location=name, problem=exc.message, fix=exc.hint)
            ]
            return Diagnosis(
                path=shown,
                kind="bundle",
                format=None,
                findings={"corruption": problems},
                load=LoadAttempt(
                    attempted=False,
                    skipped="the bundle failed verification; none of its files were used",
                ),
            )
        manifest = result.report.head.manifest
        diagnosis = _diagnose_model(
            result.model_path,
            manifest.model.format,
            label=manifest.model.path,
            shown=shown,
            current=current,
            timeout=timeout,
            custom_objects=manifest.custom_objects,
            trusted=trusted,
            bundle=location.path,
        )
    recorded = [
        Finding(
            location=f"environment.{f.location}",
            problem=f"{f.problem} from the packing environment",
            severity=f.severity,
            expected=f.expected,
            actual=f.actual,
            why=f.why,
            fix=f.fix or EXPORT_FIX.replace("BUNDLE", shown),
        )
        for f in compare_environments(manifest.environment, current)
        if f.severity > Severity.OK  # a field that is the same is no finding
    ]
    findings = dict(diagnosis.findings)
    findings["environment"] = (
        _as_warnings(recorded) if diagnosis.loads else recorded
    ) + findings.get("environment", [])
    return Diagnosis(
        path=diagnosis.path,
        kind="bundle",
        format=diagnosis.format,
        saved_by=diagnosis.saved_by or manifest.model.saved_by,
        findings=findings,
        load=diagnosis.load,
    )


def _diagnose_model(
    path: Path,
    fmt: str,
    *,
    label: str,
    shown: str,
    current: Environment,
    timeout: float,
    custom_objects: list[CustomObject] | None = None,
    trusted: bool = False,
    bundle: Path | None = None,
) -> Diagnosis:
    carried = ", ".join(
        f"{o.name}: {o.transport}" for o in custom_objects or [] if o.transport in CARRIED
    )
    # A bundle not in a file (a URL, standard input) is named "-": its code cannot be loaded.
    carrying = (str(bundle.resolve()) if bundle else "-", carried) if carried else None
    child = _run_child(path, fmt, label, timeout, trusted, carrying)
    findings: dict[str, list[Finding]] = {name: [] for name in FAILURE_CLASSES}
    findings["corruption"] += [
        _finding(item) for item in child.record("preload").get("findings", [])
    ]
    described = child.record("describe")
    saved_by = {str(k): str(v) for k, v in described.get("saved_by", {}).items()}
    resolved = child.record("resolve")
    here = resolved.get("keras_version") or (current.keras.version if current.keras else None)
    for item in resolved.get("unresolved", []):
        finding = _reference_finding(item, custom_objects or [], saved_by, here, trusted=trusted)
        keras_side = item.get("keras2_only") or item.get("keras_own")
        findings["environment" if keras_side else "serialization"].append(finding)
    if described.get("weights_only"):
        findings["serialization"].append(
            Finding(
                location=label,
                problem="holds weights only: the file has no model config to build the model from",
                why="model.save_weights() (Keras 2 and 3) writes the weights alone",
                fix=_WEIGHTS_FIX,
            )
        )
    findings["serialization"] += [
        Finding(
            location=location,
            problem="Lambda layer holds Python bytecode",
            why="Keras refuses to unmarshal code in safe mode, because doing so runs it; "
            "bytecode also loads only under the Python version that wrote it",
            fix=_LAMBDA_FIX,
        )
        for location in resolved.get("lambdas", [])
    ]
    if not described.get("weights_only"):  # weights carry no classes: any Keras reads them
        findings["environment"] += _environment_findings(path, fmt, saved_by, current, resolved)
    load = _explained(_load_attempt(child, findings), findings, saved_by, here)
    if load.ok:
        findings = {name: _as_warnings(items) for name, items in findings.items()}
    if load.failure_class and not load.ok:
        findings.setdefault(load.failure_class, []).append(
            Finding(
                location="load",
                problem="the real load failed: "
                + (f"{load.error_type}: " if load.error_type else "")
                + first_sentence(load.error or ""),
                fix=load.fix,
            )
        )
    return Diagnosis(
        path=shown, kind="model", format=fmt, saved_by=saved_by, findings=findings, load=load
    )


def _as_warnings(findings: list[Finding]) -> list[Finding]:
    """The verdict is the real load: on a model that loads, what did not stop it is a warning."""
    return [
        replace(f, severity=Severity.WARN) if f.severity >= Severity.ERROR else f for f in findings
    ]


def _finding(data: dict[str, Any]) -> Finding:
    return Finding(
        location=str(data["location"]),
        problem=str(data["problem"]),
        severity=Severity[str(data.get("severity", "error")).upper()],
        expected=data.get("expected"),
        actual=data.get("actual"),
        why=data.get("why"),
        fix=data.get("fix"),
    )


# --------------------------------------------------------------------------------------------
# The child process


@dataclass(slots=True)
class _ChildResult:
    records: dict[str, dict[str, Any]]
    started: list[str]
    returncode: int | None
    stderr: str
    timed_out: bool

    def record(self, stage: str) -> dict[str, Any]:
        return self.records.get(stage, {})


def _run_child(
    path: Path,
    fmt: str,
    label: str,
    timeout: float,
    trusted: bool,
    carrying: tuple[str, str] | None = None,
) -> _ChildResult:
    """Run the child on ``path``; ``carrying`` is the bundle whose code the model needs, and
    what it carries (loaded through the bundle, its code included, only when trusted)."""
    # Isolated (-I, in an empty directory): with the current directory on sys.path, doctor run
    # inside an unpacked bundle let TensorFlow's own 'import code' run the bundle's
    # code/__init__.py, and PYTHONPATH could do the same. kbundle's own root goes first on the
    # child's sys.path explicitly, so a checkout that is not installed still works.
    package_root = str(Path(__file__).resolve().parents[2])
    bootstrap = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "from kbundle.doctor.child import main; sys.exit(main(sys.argv[2:]))"
    )
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    trust = "trusted" if trusted else "untrusted"
    command = [
        *(sys.executable, "-I", "-c", bootstrap, package_root),
        *(fmt, str(path.resolve()), label, trust),
        *(carrying or ()),
    ]
    try:
        with tempfile.TemporaryDirectory(prefix="kbundle-doctor-") as empty:
            done = subprocess.run(
                command,
                capture_output=True,
                env=env,
                cwd=empty,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        stdout, stderr, code, timed_out = done.stdout, done.stderr, done.returncode, False
    except subprocess.TimeoutExpired as exc:
        stdout, stderr, code, timed_out = exc.stdout or b"", exc.stderr or b"", None, True
    records: dict[str, dict[str, Any]] = {}
    started: list[str] = []
    for line in stdout.decode("utf-8", "replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("stage"), str):
            if record.get("started"):
                started.append(record["stage"])
            else:
                records[record["stage"]] = record
    return _ChildResult(
        records, started, code, stderr.decode("utf-8", "replace")[-_STDERR_TAIL:], timed_out
    )


def _load_attempt(child: _ChildResult, findings: dict[str, list[Finding]]) -> LoadAttempt:
    load = child.records.get("load")
    if load is not None:
        if load.get("skipped"):
            return LoadAttempt(attempted=False, skipped=str(load["skipped"]), needs_trust=True)
        if load.get("ok"):
            return LoadAttempt(
                attempted=True, ok=True, loader=load.get("loader"), note=load.get("note")
            )
        # The proximate cause first (for a Keras 2 file, tf-keras's error), then kbundle's message.
        error = str(load.get("error"))
        failure, fix = classify_failure(f"{load.get('error_type')}: {error}")
        if failure == "unknown":
            failure, fix = classify_failure(str(load.get("message")))
        if fix == _DISAGREE_FIX:
            error = _disagreement(error) or error
        if load.get("loads_uncompiled") and failure in ("serialization", "unknown"):
            fix = _UNCOMPILED_FIX
        return LoadAttempt(
            attempted=True,
            error_type=load.get("error_type"),
            error=error[:500],
            failure_class=failure,
            fix=fix,
        )
    if any(f.severity >= Severity.ERROR for f in findings["corruption"]):
        return LoadAttempt(
            attempted=False,
            skipped="the file is corrupt or unsafe (see corruption); Keras was not run on it",
        )
    stage = child.started[-1] if child.started else "start"
    evidence = child.stderr.strip().splitlines()[-1:] or [""]
    if child.timed_out:
        return LoadAttempt(
            attempted=stage == "load",
            error=f"timed out in stage {stage!r}",
            failure_class="unknown",
            fix="run doctor with a larger --timeout; a load that never ends is worth reporting",
        )
    if child.returncode is not None and child.returncode < 0:
        name = signal.Signals(-child.returncode).name
        return LoadAttempt(
            attempted=stage == "load",
            error_type=name,
            error=f"the child process crashed in stage {stage!r} ({evidence[0][:300]})".replace(
                " ()", ""
            ),
            failure_class="corruption" if stage in ("preload", "load") else "environment",
            fix=_RESTORE
            if stage in ("preload", "load")
            else "reinstall TensorFlow and Keras: importing them crashed",
        )
    return LoadAttempt(
        attempted=stage == "load",
        error=f"the child process failed in stage {stage!r}: {evidence[0][:300]}",
        failure_class="environment",
        fix="check that Keras and TensorFlow import in this environment",
    )


def _disagreement(error: str) -> str | None:
    """Which layer's config and stored weights disagree, and how, from Keras's load error
    (it names one example layer and the variable or count that differs)."""
    layer = re.search(r"for object <\w+ name=([^,>]+)|Layer '([^']+)'", error)
    name = next((g for g in layer.groups() if g), None) if layer else None
    if name is None:
        return None
    shapes = re.search(
        r"variable\.shape=(\([^)]*\)), Received: value\.shape=(\([^)]*\)).*?path=([^,>]+)", error
    )
    count = re.search(r"expected (\d+) variables, but received (\d+) variables", error)
    if shapes:
        how = (
            f"its config makes {shapes.group(3)} of shape {shapes.group(1)}, "
            f"the file stores {shapes.group(2)}"
        )
    elif count:
        how = f"its config makes {count.group(1)} variable(s), the file stores {count.group(2)}"
    else:
        return None
    return f"the config and the stored weights disagree at layer {name!r}: {how}"


def classify_failure(text: str) -> tuple[str, str]:
    """The failure class and fix for an exception text (``Type: message``); ``unknown`` if no
    rule in :data:`FAILURE_RULES` matches."""
    for pattern, failure, fix in FAILURE_RULES:
        if re.search(pattern, text):
            return failure, fix
    return "unknown", _UNKNOWN_FIX


def _explained(
    load: LoadAttempt,
    findings: dict[str, list[Finding]],
    saved_by: dict[str, str],
    here: str | None,
) -> LoadAttempt:
    """The load failure's class and fix, once what was found before the load explains it.

    * The file was written by a newer Keras of this major, and nothing custom is missing:
      what this Keras did not know (a layer, a keyword argument) is the environment's.
    * A Keras 2 file whose model loads without its training config: Keras 3 does not read
      Keras 2's compile arguments (``"mse"``): the environment's, and ``compile=False``.
    * A missing custom object that a finding above names: that finding's class and its fix
      (the exact ``custom_objects`` key, a renamed class, ``--trust-code`` for code the
      bundle carries) instead of the generic one.
    """
    if load.ok or not load.attempted or load.failure_class not in ("serialization", "unknown"):
        return load
    custom_missing = [f for f in findings["serialization"] if f.severity >= Severity.ERROR]
    saved = saved_by.get("keras_version")
    if not custom_missing and saved and _same_major(saved, here) and newer_version(saved, here):
        return replace(
            load,
            failure_class="environment",
            fix=f"the file was written by Keras {saved}, newer than this Keras {here}, which "
            f"does not know all it uses: upgrade keras to {saved} or later",
        )
    if load.fix == _UNCOMPILED_FIX:
        major = saved.split(".")[0] if saved else None
        keras2 = major == "2" and here is not None and not here.startswith("2.")
        return replace(load, failure_class="environment" if keras2 else load.failure_class)
    explained = next(
        (
            (name, f)
            for name in ("serialization", "environment")
            for f in findings[name]
            if f.severity >= Severity.ERROR and f.location != "load" and f.fix
        ),
        None,
    )
    if explained is not None and load.fix == _CUSTOM_FIX:
        return replace(load, failure_class=explained[0], fix=explained[1].fix)
    return load


def _same_major(left: str, right: str | None) -> bool:
    return right is not None and left.split(".")[0] == right.split(".")[0]


# --------------------------------------------------------------------------------------------
# Findings from what the child resolved and what the file says about its maker


def _reference_finding(
    item: dict[str, Any],
    custom_objects: list[CustomObject],
    saved_by: dict[str, str],
    here: str | None,
    *,
    trusted: bool = False,
) -> Finding:
    name, module, registered = item["name"], item.get("module"), item.get("registered_name")
    details = ", ".join(
        part
        for part in (
            f"module {module!r}" if module else "",
            f"registered name {registered!r}" if registered else "",
        )
        if part
    )
    named = f"{item['kind']} {name!r}"
    problem = f"{named} cannot be resolved here" + (f" ({details})" if details else "")
    named += f" ({details})" if details else ""
    if item.get("keras2_only"):
        return Finding(
            location=item["location"],
            problem=problem + " — it exists only in Keras 2",
            why="Keras 3 removed it; only tf-keras (Keras 2) can build it",
            fix=KERAS2_FIX,
        )
    if item.get("keras_own"):
        return _ecosystem_finding(item, problem, saved_by, here)
    similar = item.get("similar") or []
    hint = f"; similarly named here: {', '.join(similar)}" if similar else ""
    key = registered or name
    passing = f"custom_objects={{{key!r}: {name}}}"  # the key Keras looks the object up by
    carried = next(
        (o for o in custom_objects if name in (o.name, o.qualname) or registered == o.name), None
    )
    status = item.get("module_status")
    if carried is not None and carried.transport in CARRIED:
        # Not a fault: the bundle brings it, and loading it is a matter of trust.
        if trusted:
            return Finding(
                location=item["location"],
                problem=f"{named} comes from the bundle's own code ({carried.transport}), trusted",
                severity=Severity.OK,
            )
        return Finding(
            location=item["location"],
            problem=f"{problem}: the bundle carries it ({carried.transport})",
            severity=Severity.WARN,
            why="its code runs only when you trust the bundle",
            fix="review it with 'kbundle show-code', then pass --trust-code (to doctor, and "
            "when you load the bundle)",
        )
    defined: dict[str, str | None] = item.get("defined") or {}
    if carried is not None and carried.requirement:
        fix = f"install {carried.requirement}, which defines it, then import {carried.module}"
    elif status == "main":
        fix = (
            "it was defined in the training script (__main__): move it into an importable module, "
            "register it with @keras.saving.register_keras_serializable(), and import it before "
            f"loading, or load with {passing}"
        )
    elif status == "missing":
        fix = (
            f"install the package that provides {module!r} and import it before loading, or "
            f"load with {passing}"
        )
    elif status == "installed" and name in defined and registered and defined[name] != registered:
        now = defined[name]
        fix = (
            f"{module!r} now registers {name} "
            + (f"as {now!r}" if now else "under no name (it is not decorated)")
            + f", not as {registered!r}, the name the file records: importing it does not help; "
            f"load with {passing} ({name} from {module})"
        )
        hint = ""
    elif status == "installed" and defined and name not in defined:
        renamed = [s.split(" ", 1)[0] for s in similar if s.startswith(f"{module}.")]
        fix = f"{module!r} no longer defines {name!r}" + (
            f"; if {renamed[0]} is the same class renamed, load with "
            f"custom_objects={{{key!r}: {renamed[0].rpartition('.')[2]}}}"
            if renamed
            else f": install the version of it that saved the file, or load with {passing}"
        )
        hint = "" if renamed else hint
    elif status == "installed":
        fix = (
            f"{module!r} is installed but doctor never imports it: import it before loading so "
            f"its registration runs, or load with {passing}"
        )
    else:
        fix = f"import the module that defines it before loading, or load with {passing}"
    return Finding(
        location=item["location"],
        problem=problem,
        why="Keras builds every object the config names from a registered or built-in class, "
        "looked up by the registered name the file records",
        fix=fix + hint,
    )


def _ecosystem_finding(
    item: dict[str, Any], problem: str, saved_by: dict[str, str], here: str | None
) -> Finding:
    """A class or function the config places in Keras itself (or keras_hub, ...) that this
    installation does not have: made by a newer release, or a package not installed."""
    module = str(item.get("module") or "keras")
    top = module.split(".")[0]
    distribution = top.replace("_", "-")
    saved = saved_by.get("keras_version")
    if item.get("module_status") == "missing":
        fix = f"install {distribution} (the file names {module}.{item['name']})"
    elif top == "keras" and saved and newer_version(saved, here):
        fix = f"upgrade keras to {saved} or later: the file was written by Keras {saved}"
    else:
        fix = (
            f"install the {distribution} release that wrote the file"
            + (f" (Keras {saved})" if top == "keras" and saved else "")
            + f": this {distribution} has no {module}.{item['name']}"
        )
    return Finding(
        location=item["location"],
        problem=problem + f" — this {distribution} does not have it",
        why="a newer release added it, or the package that provides it is not installed",
        fix=fix,
    )


def _environment_findings(
    path: Path, fmt: str, saved_by: dict[str, str], current: Environment, resolved: dict[str, Any]
) -> list[Finding]:
    """What the file says about its maker against this environment: the rule engine's
    ``saved_by`` rules (kbundle.env.rules), with Keras's own version and backend as the child
    saw them."""
    ops: list[str] | None = None
    if fmt == "savedmodel" and saved_model_file(path) is not None:
        try:
            ops = list(read_saved_model(path).ops)
        except (WireError, OSError):
            ops = []
    return compare_saved_by(
        saved_by,
        current,
        keras_version=resolved.get("keras_version"),
        backend=resolved.get("backend"),
        savedmodel_ops=ops,
    )


# --------------------------------------------------------------------------------------------
# Text
