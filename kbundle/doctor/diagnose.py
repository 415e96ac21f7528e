"""Diagnosing a model that will not load: what ``kbundle doctor`` reports.

A model fails to load for one of three reasons, and each finding is filed under one:

* **corruption** — the bytes are damaged or hostile: wrong magic bytes, truncation, a bad zip
  CRC, unreadable HDF5 structure, a bundle that fails verification, bombs and external links;
* **serialization** — the config names classes or functions this environment cannot resolve,
  or Lambda layers that need ``safe_mode=False``;
* **environment** — the file was written by another Keras major, backend or TensorFlow, or
  needs ops this TensorFlow build lacks.

The static part runs here and never imports TensorFlow or Keras. Everything that may crash,
hang or needs Keras — reading HDF5 through h5py, resolving names, the real load — runs in a
child process (``kbundle.doctor.child``) with safe mode on and no custom objects, so bundled
code never runs and a crash is reported, not suffered. The child's exception is mapped to a
class by :data:`FAILURE_RULES`. A model is healthy when it loads; findings on a model that
loads are warnings. Stable: ``diagnose`` and ``Diagnosis`` are public API; texts may change.
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

from kbundle.container.manifest import CustomObject, Environment
from kbundle.container.zstdframes import ZSTD_MAGIC
from kbundle.env.rules import compare_saved_by
from kbundle.env.rules.saved_by import KERAS2_FIX
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
    "register_keras_serializable decorator must run) or pass it in custom_objects"
)

# (pattern over "ErrorType: message", class, fix), first match wins. Maps the exception the
# real load raised to a failure class.
FAILURE_RULES: tuple[tuple[str, str, str], ...] = (
    (r"safe_mode|`Lambda` layer|lambda", "serialization", _LAMBDA_FIX),
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
        r"unexpected keyword argument|required positional argument|from_config|get_config",
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
        )
    recorded = [
        Finding(
            location=f"environment.{f.location}",
            problem=f"{f.problem} from the packing environment",
            severity=f.severity,
            expected=f.expected,
            actual=f.actual,
            why=f.why,
            fix=f.fix,
        )
        for f in compare_environments(manifest.environment, current)
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
) -> Diagnosis:
    child = _run_child(path, fmt, label, timeout, trusted)
    findings: dict[str, list[Finding]] = {name: [] for name in FAILURE_CLASSES}
    findings["corruption"] += [
        _finding(item) for item in child.record("preload").get("findings", [])
    ]
    saved_by = {str(k): str(v) for k, v in child.record("describe").get("saved_by", {}).items()}
    resolved = child.record("resolve")
    for item in resolved.get("unresolved", []):
        finding = _reference_finding(item, custom_objects or [])
        findings["environment" if item.get("keras2_only") else "serialization"].append(finding)
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
    findings["environment"] += _environment_findings(path, fmt, saved_by, current, resolved)
    load = _load_attempt(child, findings)
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


def _run_child(path: Path, fmt: str, label: str, timeout: float, trusted: bool) -> _ChildResult:
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
        failure, fix = classify_failure(f"{load.get('error_type')}: {load.get('error')}")
        if failure == "unknown":
            failure, fix = classify_failure(str(load.get("message")))
        return LoadAttempt(
            attempted=True,
            error_type=load.get("error_type"),
            error=str(load.get("error"))[:500],
            failure_class=failure,
            fix=load.get("hint") if failure == "unknown" else fix,
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


def classify_failure(text: str) -> tuple[str, str]:
    """The failure class and fix for an exception text (``Type: message``); ``unknown`` if no
    rule in :data:`FAILURE_RULES` matches."""
    for pattern, failure, fix in FAILURE_RULES:
        if re.search(pattern, text):
            return failure, fix
    return "unknown", "run with KBUNDLE_DEBUG=1 and report the error if the model should load"


# --------------------------------------------------------------------------------------------
# Findings from what the child resolved and what the file says about its maker


def _reference_finding(item: dict[str, Any], custom_objects: list[CustomObject]) -> Finding:
    name, module, registered = item["name"], item.get("module"), item.get("registered_name")
    details = ", ".join(
        part
        for part in (
            f"module {module!r}" if module else "",
            f"registered name {registered!r}" if registered else "",
        )
        if part
    )
    problem = f"{item['kind']} {name!r} cannot be resolved here" + (
        f" ({details})" if details else ""
    )
    if item.get("keras2_only"):
        return Finding(
            location=item["location"],
            problem=problem + " — it exists only in Keras 2",
            why="Keras 3 removed it; only tf-keras (Keras 2) can build it",
            fix=KERAS2_FIX,
        )
    similar = item.get("similar") or []
    hint = f"; similar names importable here: {', '.join(similar)}" if similar else ""
    carried = next(
        (o for o in custom_objects if name in (o.name, o.qualname) or registered == o.name), None
    )
    status = item.get("module_status")
    if carried is not None and carried.transport in ("source", "pickle"):
        fix = (
            f"the bundle carries it ({carried.transport}): review it with 'kbundle show-code', "
            "then "
            "load with --trust-code (doctor never runs bundled code)"
        )
    elif carried is not None and carried.requirement:
        fix = f"install {carried.requirement}, which defines it, then import {carried.module}"
    elif status == "main":
        fix = (
            "it was defined in the training script (__main__): move it into an importable module, "
            "register it with @keras.saving.register_keras_serializable(), and import it before "
            "loading"
        )
    elif status == "missing":
        fix = f"install the package that provides {module!r}, import it before loading"
    elif status == "installed":
        fix = (
            f"{module!r} is installed but doctor never imports it: import it before loading so its "
            "registration runs, or pass the class in custom_objects"
        )
    else:
        fix = _CUSTOM_FIX
    return Finding(
        location=item["location"],
        problem=problem,
        why="Keras builds every object the config names from a registered or built-in class",
        fix=fix + hint,
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
