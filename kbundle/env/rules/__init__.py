"""Compatibility verdicts: the recorded environment against the current one, field by field.

Each rule looks at one field (``keras.version``, ``tensorflow.build``, ``distributions.NAME``,
...) and gives an *outcome*: a default severity plus whether the difference will certainly
break loading (``certain``) and whether it describes the machine rather than the software
(``host``). A *policy* turns outcomes into severities:

- ``default``: the rule's own severity;
- ``strict``: every software difference is an error (host facts such as visible GPUs stay);
- ``lenient``: only what will certainly fail is an error; other errors become warnings.

Per-field overrides (``--severity FIELD=LEVEL`` or ``[tool.kbundle.severity]`` in the
nearest ``pyproject.toml``) then set the severity of a *differing* field outright; an equal
field is never turned into a problem. The rules and their reasons are documented in
``docs/compatibility.md``; ``RULES`` below is the list the docs and the override check use.

Nothing here imports TensorFlow or Keras: the current environment is captured statically.
Stable: the field names, policies and the ``check`` / ``CompatReport`` API are public; the
wording of reasons may change.
"""

from __future__ import annotations

import fnmatch
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

from kbundle.config import find_project_config
from kbundle.container.manifest import CustomObject, Environment, Manifest
from kbundle.env.capture import TENSORFLOW_DISTRIBUTIONS, capture_environment
from kbundle.env.distributions import canonical_name
from kbundle.errors import EnvironmentMismatchError, ModelLoadError, UsageError
from kbundle.findings import Finding, Severity

__all__ = [
    "POLICIES",
    "RULES",
    "CompatReport",
    "EnvironmentWarning",
    "Policy",
    "check",
    "check_manifest",
    "compare_environments",
    "environment_gate",
    "parse_severity_overrides",
    "resolve_policy",
]

POLICIES = ("default", "strict", "lenient")
_LEVELS = {str(level): level for level in Severity}

# Every field a rule can report, with the one-line reason shown in the docs and used to
# validate overrides. Patterns ending in ``.*`` stand for one field per name.
RULES: dict[str, str] = {
    "keras.major": "Keras 2 (tf-keras) and Keras 3 (keras) use different file formats and APIs",
    "keras.distribution": "tf-keras works only with the TensorFlow minor it was released for",
    "keras.version": "an older Keras may not read a file written by a newer one",
    "keras.backend": "built-in layers move between backends; custom code calling tf. ops does not",
    "keras.floatx": "custom code that reads keras.config.floatx() computes in another dtype",
    "keras.image_data_format": (
        "custom code that reads the global data format lays tensors out differently"
    ),
    "tensorflow.version": "a newer TensorFlow may save ops and graph features an older one lacks",
    "tensorflow.distribution": "several TensorFlow distributions overwrite each other's files",
    "tensorflow.build": "CUDA and CPU builds run different kernels (speed, numerics, GPU-only ops)",
    "python.version": "pickled code holds one Python minor's bytecode; wheels are built per minor",
    "python.implementation": "pickled code and compiled wheels are specific to CPython or PyPy",
    "libraries.*": "numpy, h5py, cloudpickle and backend libraries read saved arrays and pickles",
    "distributions.*": (
        "what custom objects import must be installed, ideally at the recorded version"
    ),
    "platform.system": "wheels and compiled custom ops are built per operating system",
    "platform.machine": "wheels and compiled custom ops are built per CPU architecture",
    "platform.libc": "wheels need a C library at least as new as the one they were built for",
    "gpus": "without a visible GPU the model runs on the CPU",
    "probe": "the loaded model must compute what the packed model computed on the probe input",
}

# Libraries a Keras backend needs, by backend name.
_BACKEND_LIBRARIES = {"jax": ("jax", "jaxlib"), "torch": ("torch",), "tensorflow": ()}
_EXPORT = "install the recorded environment: 'kbundle env create BUNDLE DIR'"
MISSING = "not installed"  # the current value of a field whose distribution is absent


class EnvironmentWarning(UserWarning):
    """``kbundle.load`` found environment differences that may matter (severity warn)."""


# --------------------------------------------------------------------------------------------
# Outcomes and policies


@dataclass(frozen=True, slots=True)
class _Outcome:
    severity: Severity
    certain: bool = False  # loading will certainly fail: an error under every policy
    incidental: bool = (
        False  # does not touch loading (the machine, unused libraries): strict leaves it
    )

    def under(self, policy: str) -> Severity:
        if self.severity == Severity.OK:
            return Severity.OK
        if self.certain:
            return Severity.ERROR
        if policy == "strict" and not self.incidental:
            return Severity.ERROR
        if policy == "lenient" and self.severity == Severity.ERROR:
            return Severity.WARN
        return self.severity


SAME = _Outcome(Severity.OK)
CERTAIN = _Outcome(Severity.ERROR, certain=True)
LIKELY = _Outcome(Severity.ERROR)
RISK = _Outcome(Severity.WARN)
NOTE = _Outcome(Severity.INFO)
INCIDENTAL = _Outcome(Severity.INFO, incidental=True)


@dataclass(frozen=True, kw_only=True, slots=True)
class Policy:
    """A named policy and per-field severity overrides ``(pattern, level, origin)``.

    ``origin`` says where an override came from (``--severity`` or a ``pyproject.toml``
    path); later overrides win over earlier ones for the same field.
    """

    name: str = "default"
    overrides: tuple[tuple[str, Severity, str], ...] = ()
    config: Path | None = None

    def severity_for(self, location: str, outcome: _Outcome) -> tuple[Severity, str | None]:
        """The severity of ``location`` under this policy, and the override origin if any."""
        severity = outcome.under(self.name)
        if severity == Severity.OK:
            return severity, None
        chosen: tuple[Severity, str] | None = None
        for pattern, level, origin in self.overrides:
            if fnmatch.fnmatchcase(location, pattern):
                chosen = (level, origin)
        return chosen if chosen else (severity, None)

    def override(self, finding: Finding) -> Finding:
        """``finding`` (made outside the rules, such as the probe's) with overrides applied."""
        if finding.severity == Severity.OK:
            return finding
        outcome = CERTAIN if finding.severity == Severity.ERROR else _Outcome(finding.severity)
        severity, origin = self.severity_for(finding.location, outcome)
        if origin is None:
            return finding
        return replace(
            finding, severity=severity, problem=f"{finding.problem} (severity set by {origin})"
        )


def parse_severity_overrides(
    items: Iterable[str], origin: str
) -> tuple[tuple[str, Severity, str], ...]:
    """``FIELD=LEVEL`` strings into overrides; unknown fields and levels are usage errors."""
    parsed = []
    for item in items:
        pattern, sep, level = item.partition("=")
        if not sep:
            raise UsageError(
                f"a severity override must be FIELD=LEVEL: {item!r}",
                hint="e.g. --severity keras.backend=warn",
            )
        parsed.append(_override(pattern.strip(), level.strip(), origin))
    return tuple(parsed)


def _override(pattern: str, level: str, origin: str) -> tuple[str, Severity, str]:
    if level.lower() not in _LEVELS:
        raise UsageError(
            f"{origin}: severity for {pattern!r} must be one of {', '.join(_LEVELS)}: {level!r}",
            hint="e.g. keras.backend=warn",
        )
    if not any(_pattern_names_rule(pattern, rule) for rule in RULES):
        raise UsageError(
            f"{origin}: no compatibility field matches {pattern!r}",
            hint="fields are listed in docs/compatibility.md: " + ", ".join(RULES),
        )
    return pattern, _LEVELS[level.lower()], origin


def _pattern_names_rule(pattern: str, rule: str) -> bool:
    if rule.endswith(".*"):
        prefix = rule[:-1]
        return pattern.startswith(prefix) or fnmatch.fnmatchcase(prefix + "x", pattern)
    return fnmatch.fnmatchcase(rule, pattern)


def resolve_policy(
    name: str | None = None,
    severity: Iterable[str] = (),
    *,
    start: Path | None = None,
    origin: str = "--severity",
) -> Policy:
    """The policy in force: ``name`` and ``severity`` (command line) over ``[tool.kbundle]``.

    The configuration is the ``[tool.kbundle]`` table of the nearest ``pyproject.toml`` that
    has one, searching from ``start`` (the working directory) upward. ``origin`` names where
    ``severity`` came from, in findings and errors (``--severity``, ``env_severity``).
    """
    config = find_project_config(start)
    policy_name = "default"
    overrides: list[tuple[str, Severity, str]] = []
    if config.path is not None:
        configured = config.policy or "default"
        if configured not in POLICIES:
            raise UsageError(
                f"{config.source}: [tool.kbundle] policy must be one of {', '.join(POLICIES)}: "
                f"{configured!r}",
                hint='e.g. policy = "strict"',
            )
        policy_name = configured
        overrides.extend(_override(k, v, config.source) for k, v in config.severity.items())
    if name is not None:
        if name not in POLICIES:
            raise UsageError(
                f"policy must be one of {', '.join(POLICIES)}: {name!r}",
                hint="use --policy default|strict|lenient",
            )
        policy_name = name
    overrides.extend(parse_severity_overrides(severity, origin))
    return Policy(
        name=policy_name,
        overrides=tuple(overrides),
        config=config.path,
    )


# --------------------------------------------------------------------------------------------
# The report


@dataclass(frozen=True, kw_only=True, slots=True)
class CompatReport:
    """Every compared field as a finding (``ok`` ones included), under one policy."""

    findings: tuple[Finding, ...]
    policy: Policy = field(default_factory=Policy)

    @property
    def verdict(self) -> Severity:
        return max((f.severity for f in self.findings), default=Severity.OK)

    @property
    def ok(self) -> bool:
        """True when nothing is an error: the model may be loaded."""
        return self.verdict < Severity.ERROR

    def at_least(self, severity: Severity) -> list[Finding]:
        return [f for f in self.findings if f.severity >= severity]

    def with_findings(self, extra: Sequence[Finding]) -> CompatReport:
        return CompatReport(findings=(*self.findings, *extra), policy=self.policy)

    def summary(self) -> str:
        """``compatible``, ``compatible with 2 warnings`` or ``incompatible: 1 error, ...``."""
        counts = {
            level: sum(1 for f in self.findings if f.severity == level)
            for level in (Severity.ERROR, Severity.WARN)
        }
        parts = [
            f"{n} {level}{'s' if n > 1 else ''}".replace("warn", "warning")
            for level, n in counts.items()
            if n
        ]
        if counts[Severity.ERROR]:
            return "incompatible: " + ", ".join(parts)
        return "compatible" + (f" with {parts[0]}" if parts else "")

    def raise_for_errors(self, what: str, *, loading: bool = True) -> None:
        """Raise :class:`EnvironmentMismatchError` listing the error findings, if any."""
        errors = self.at_least(Severity.ERROR)
        if not errors:
            return
        more = len(errors) - 1
        escape = (
            "; 'kbundle check' explains every field; --ignore-env loads anyway" if loading else ""
        )
        raise EnvironmentMismatchError(
            f"this environment cannot load {what} under the {self.policy.name} policy: "
            f"{errors[0].describe()}"
            + (f" (and {more} more error{'s' if more > 1 else ''})" if more else ""),
            hint=f"{errors[0].fix or _EXPORT}{escape}",
            findings=errors,
        )

    def explain_load_failure(self, exc: ModelLoadError) -> ModelLoadError:
        """``exc`` with the environment differences (warn and up) named as the likely cause."""
        concerns = self.at_least(Severity.WARN)
        if not concerns:
            return exc
        more = f", and {len(concerns) - 1} more" if len(concerns) > 1 else ""
        return ModelLoadError(
            exc.message,
            hint=f"the environment differs from the one the model was packed in "
            f"({concerns[0].describe()}{more}); rebuild it with 'kbundle env create'",
            findings=concerns,
        )

    def warn_once(self, what: str) -> None:
        """One :class:`EnvironmentWarning` listing every finding of severity warn and up."""
        concerns = self.at_least(Severity.WARN)
        if concerns:
            listed = "; ".join(f"{f.describe()} [{f.severity}]" for f in concerns)
            warnings.warn(
                f"{what}: the environment differs from the one it was packed in: {listed} "
                "('kbundle check' explains each)",
                EnvironmentWarning,
                stacklevel=3,  # the caller of kbundle.load
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "verdict": str(self.verdict),
            "summary": self.summary(),
            "policy": self.policy.name,
            "config": str(self.policy.config) if self.policy.config else None,
            "overrides": [
                {"field": p, "severity": str(s), "origin": o} for p, s, o in self.policy.overrides
            ],
            "findings": [f.to_dict() for f in self.findings],
        }


# --------------------------------------------------------------------------------------------
# Entry points


def check(
    bundle: str | os.PathLike[str],
    *,
    policy: str | None = None,
    severity: Iterable[str] = (),
    current: Environment | None = None,
) -> CompatReport:
    """Compare ``bundle``'s recorded environment with this one. Reads only the manifest."""
    from kbundle.pipelines.read import inspect

    manifest = inspect(bundle).manifest
    return check_manifest(manifest, policy=resolve_policy(policy, severity), current=current)


def environment_gate(
    manifest: Manifest, policy: Policy | None, *, ignore: bool = True, what: str = "the bundle"
) -> CompatReport:
    """The check before loading: ``policy`` (None: the configured one); errors raise unless
    ``ignore``."""
    report = check_manifest(manifest, policy=policy or resolve_policy())
    if not ignore:
        report.raise_for_errors(what)
    return report


def check_manifest(
    manifest: Manifest, *, policy: Policy | None = None, current: Environment | None = None
) -> CompatReport:
    """Every rule on ``manifest``'s environment against ``current`` (captured when omitted)."""
    if current is None:
        current = capture_environment()
    chosen = policy or Policy()
    return CompatReport(
        findings=tuple(
            compare_environments(manifest.environment, current, manifest=manifest, policy=chosen)
        ),
        policy=chosen,
    )


def compare_environments(
    recorded: Environment,
    current: Environment,
    *,
    manifest: Manifest | None = None,
    policy: Policy | None = None,
) -> list[Finding]:
    """Every rule's finding, in a fixed order; ``manifest`` adds what the bundle carries."""
    chosen = policy or Policy()
    context = _Context.of(manifest, recorded, current)
    return [result.finding(chosen) for result in _all_rules(context)]


# --------------------------------------------------------------------------------------------
# Rules


@dataclass(frozen=True, slots=True)
class _Result:
    location: str
    recorded: str | None
    current: str | None
    outcome: _Outcome
    problem: str
    why: str | None = None
    fix: str | None = None

    def finding(self, policy: Policy) -> Finding:
        severity, origin = policy.severity_for(self.location, self.outcome)
        problem = self.problem + (f" (severity set by {origin})" if origin else "")
        differs = self.outcome.severity != Severity.OK
        return Finding(
            location=self.location,
            problem=problem,
            severity=severity,
            expected=self.recorded,
            actual=self.current,
            why=self.why if differs else None,
            fix=self.fix if differs else None,
        )


@dataclass(frozen=True, slots=True)
class _Needed:
    """A distribution custom objects import: recorded version, who needs it, code bundled?"""

    version: str | None
    objects: tuple[str, ...]
    bundled: bool


@dataclass(frozen=True, slots=True)
class _Context:
    recorded: Environment
    current: Environment
    model_format: str | None
    saved_by_keras: str | None
    pickles: tuple[str, ...]  # custom objects that travel as cloudpickle
    bundled_code: tuple[str, ...]  # custom objects whose code travels (source or pickle)
    tf_code: tuple[str, ...]  # custom objects whose code imports tensorflow
    needed: Mapping[str, _Needed]

    @classmethod
    def of(cls, manifest: Manifest | None, recorded: Environment, current: Environment) -> _Context:
        objects = manifest.custom_objects if manifest else []
        return cls(
            recorded=recorded,
            current=current,
            model_format=manifest.model.format if manifest else None,
            saved_by_keras=(manifest.model.saved_by.get("keras_version") if manifest else None)
            or None,
            pickles=tuple(o.name for o in objects if o.transport == "pickle"),
            bundled_code=tuple(o.name for o in objects if o.transport in ("source", "pickle")),
            tf_code=tuple(o.name for o in objects if _imports_tensorflow(o)),
            needed=_needed_distributions(objects),
        )


def _imports_tensorflow(obj: CustomObject) -> bool:
    modules = [m.split(".")[0] for m in obj.imports]
    return "tensorflow" in modules or any(
        canonical_name(d).startswith("tensorflow") for d in obj.distributions
    )


def _needed_distributions(objects: Sequence[CustomObject]) -> dict[str, _Needed]:
    needed: dict[str, _Needed] = {}

    def add(name: str, version: str | None, obj: CustomObject) -> None:
        key = canonical_name(name)
        bundled = obj.transport in ("source", "pickle")
        if key in needed:
            old = needed[key]
            needed[key] = _Needed(
                old.version or version, (*old.objects, obj.name), old.bundled and bundled
            )
        else:
            needed[key] = _Needed(version, (obj.name,), bundled)

    for obj in objects:
        if obj.transport == "builtin":
            continue
        for name, version in obj.distributions.items():
            add(name, version, obj)
        if obj.requirement:
            from packaging.requirements import InvalidRequirement, Requirement

            try:
                requirement = Requirement(obj.requirement)
            except InvalidRequirement:
                continue
            pinned = next(
                (s.version for s in requirement.specifier if s.operator in ("==", "===")), None
            )
            add(requirement.name, pinned, obj)
    return dict(sorted(needed.items()))


def _all_rules(c: _Context) -> Iterator[_Result]:
    yield from _keras_rules(c)
    yield from _tensorflow_rules(c)
    yield from _python_rules(c)
    yield from _library_rules(c)
    yield from _distribution_rules(c)
    yield from _platform_rules(c)


def _parse(version: str | None) -> Version | None:
    try:
        return Version(version) if version else None
    except InvalidVersion:
        return None


def _release(version: Version, parts: int) -> tuple[int, ...]:
    return (*version.release, 0, 0, 0)[:parts]


def _minor(version: str | None) -> str | None:
    parsed = _parse(version)
    return ".".join(map(str, _release(parsed, 2))) if parsed else version


def _compare_version(
    location: str,
    what: str,
    recorded: str | None,
    current: str | None,
    *,
    older: _Outcome,
    newer: _Outcome = NOTE,
    patch: _Outcome = NOTE,
    major: _Outcome = CERTAIN,
    why_older: str,
    why_newer: str,
    fix: str = _EXPORT,
) -> _Result:
    """The usual version rule: same, patch, newer minor, older minor, other major."""
    was, now = _parse(recorded), _parse(current)
    if recorded == current or was is None or now is None:
        outcome = SAME if recorded == current else NOTE
        problem = "same version" if recorded == current else f"{what} versions differ"
        why = why_newer
    elif _release(was, 1) != _release(now, 1):
        outcome, problem = major, f"{what} major version differs"
        why = why_older if now < was else why_newer
    elif _release(was, 2) == _release(now, 2):
        outcome, problem = patch, f"{what} patch release differs"
        why = "patch releases keep files and APIs compatible"
    elif now < was:
        outcome, problem = older, f"{what} is older than the one that packed the model"
        why = why_older
    else:
        outcome, problem = newer, f"{what} is newer than the one that packed the model"
        why = why_newer
    return _Result(location, recorded, current, outcome, problem, why, fix)


def _keras_label(info: Any) -> str | None:
    return f"Keras {info.major} ({info.distribution})" if info else None


def _keras_rules(c: _Context) -> Iterator[_Result]:
    rk, ck = c.recorded.keras, c.current.keras
    if rk is None:
        return
    if ck is None:
        yield _Result(
            "keras.major",
            _keras_label(rk),
            MISSING,
            CERTAIN,
            "Keras is not installed",
            "the model can only be loaded by Keras",
            f"install {rk.distribution}=={rk.version}",
        )
        return
    if rk.major != ck.major:
        yield _keras_major(c, rk, ck)
    else:
        yield _Result(
            "keras.major", _keras_label(rk), _keras_label(ck), SAME, "same Keras generation"
        )
        # The Keras that wrote the file is the better reference, unless it is another generation
        # (a Keras 2 .h5 packed under Keras 3): then the packing environment is what the bundle
        # was proven to load in.
        saved = _parse(c.saved_by_keras)
        same_generation = saved is not None and _release(saved, 1) == (rk.major,)
        saver = c.saved_by_keras if rk.distribution == "keras" and same_generation else rk.version
        yield _compare_version(
            "keras.version",
            "Keras",
            saver,
            ck.version,
            older=LIKELY,
            why_older="a file written by a newer Keras may use layers, arguments or config fields "
            "an older Keras does not know",
            why_newer="newer Keras releases read the files of older ones",
            fix=f"install {rk.distribution}=={saver}",
        )
    yield from _tf_keras_consistency(c)
    rb, cb = rk.backend or "tensorflow", ck.backend or "tensorflow"
    yield _backend_rule(c, rb, cb)
    for name in ("floatx", "image_data_format"):
        was, now = getattr(rk, name), getattr(ck, name)
        if was is not None and now is not None and was != now:
            yield _Result(
                f"keras.{name}",
                was,
                now,
                NOTE,
                "Keras configuration differs",
                RULES[f"keras.{name}"] + "; saved layers keep their own setting",
                f'set "{name}": "{was}" in ~/.keras/keras.json if custom code depends on it',
            )


def _keras_major(c: _Context, rk: Any, ck: Any) -> _Result:
    recorded, current = _keras_label(rk), _keras_label(ck)
    fix = f"install {rk.distribution}=={rk.version}" + (
        " (with --no-deps, or it replaces tensorflow-cpu)" if rk.distribution == "tf-keras" else ""
    )
    installed_keras = _parse(c.current.distributions.get("keras"))
    if ck.distribution == "tf-keras" and installed_keras and _release(installed_keras, 1) >= (3,):
        fix = f"unset TF_USE_LEGACY_KERAS so that the installed Keras 3 is used, or {fix}"
    elif rk.distribution == "tf-keras" and "tf-keras" in c.current.distributions:
        fix = f"set TF_USE_LEGACY_KERAS=1 so that the installed tf-keras is used, or {fix}"
    if rk.major > ck.major:
        why = "Keras 2 (tf-keras) cannot read models saved by Keras 3"
        outcome = CERTAIN
    elif c.model_format == "savedmodel":
        why = (
            "Keras 3 cannot load a Keras 2 SavedModel as a model (only for "
            "inference, through keras.layers.TFSMLayer)"
        )
        outcome = CERTAIN
    elif c.model_format == "h5":
        why = (
            "Keras 3 reads legacy .h5 files of built-in layers, but custom layers "
            "and optimizers written for Keras 2 often fail"
        )
        outcome = RISK
    else:
        why = (
            "Keras 3 reads Keras 2 files only partly: custom objects and training "
            "configuration often fail"
        )
        outcome = LIKELY
    return _Result("keras.major", recorded, current, outcome, "Keras generation differs", why, fix)


def _tf_keras_consistency(c: _Context) -> Iterator[_Result]:
    ck, ct = c.current.keras, c.current.tensorflow
    if ck is None or ck.distribution != "tf-keras" or ct is None:
        return
    if _minor(ck.version) != _minor(ct.version):
        yield _Result(
            "keras.distribution",
            f"tensorflow {_minor(ck.version)}",
            f"tensorflow {ct.version}",
            CERTAIN,
            f"tf-keras {ck.version} does not match the installed TensorFlow",
            RULES["keras.distribution"],
            f"install tf-keras=={_minor(ct.version)}.* with --no-deps, or TensorFlow "
            f"{_minor(ck.version)}",
        )


def _backend_rule(c: _Context, recorded: str, current: str) -> _Result:
    if recorded == current:
        return _Result("keras.backend", recorded, current, SAME, "same backend")
    if c.model_format == "savedmodel":
        outcome, why = (
            CERTAIN,
            "a SavedModel is a TensorFlow graph; only the tensorflow backend runs it",
        )
    elif c.tf_code:
        outcome = CERTAIN
        why = (
            f"custom code of {', '.join(c.tf_code)} imports tensorflow; "
            f"tf. ops do not run on {current} tensors"
        )
    elif c.bundled_code:
        outcome = RISK
        why = f"custom code of {', '.join(c.bundled_code)} may call {recorded}-only ops"
    else:
        outcome = NOTE
        why = (
            "a .keras model of built-in layers loads on any backend; "
            "results may differ in the last digits"
        )
    fix = f"set KERAS_BACKEND={recorded}"
    return _Result("keras.backend", recorded, current, outcome, "backend differs", why, fix)


def _build_label(info: Mapping[str, Any]) -> str:
    if not info:
        return "unknown"
    if info.get("is_rocm_build"):
        return f"ROCm {info.get('rocm_version', '?')}"
    if info.get("is_cuda_build"):
        return f"CUDA {info.get('cuda_version', '?')}, cuDNN {info.get('cudnn_version', '?')}"
    return "CPU"


def _installed_tensorflows(env: Environment) -> list[str]:
    return [d for d in TENSORFLOW_DISTRIBUTIONS if d in env.distributions]


def _tensorflow_rules(c: _Context) -> Iterator[_Result]:
    rt, ct = c.recorded.tensorflow, c.current.tensorflow
    several = _installed_tensorflows(c.current)
    if len(several) > 1:
        yield _Result(
            "tensorflow.distribution",
            rt.distribution if rt else None,
            ", ".join(several),
            RISK,
            "several TensorFlow distributions are installed",
            "they share the tensorflow package directory, so the last one installed silently wins "
            "(installing tf-keras with its dependencies pulls plain tensorflow, the CUDA build, "
            "over tensorflow-cpu)",
            f"uninstall all of them and install only {rt.distribution if rt else several[0]}",
        )
    if rt is None:
        if ct is not None:
            yield _Result(
                "tensorflow.version",
                None,
                ct.version,
                NOTE,
                "TensorFlow was not installed when packing",
                "not needed by the recorded backend",
            )
        return
    if ct is None:
        ck = c.current.keras
        needed = (
            ck is None
            or ck.major < 3
            or (ck.backend or "tensorflow") == "tensorflow"
            or c.model_format == "savedmodel"
        )
        yield _Result(
            "tensorflow.version",
            rt.version,
            MISSING,
            CERTAIN if needed else NOTE,
            "TensorFlow is not installed",
            "the tensorflow backend and SavedModels need it"
            if needed
            else "the current backend does not need TensorFlow",
            f"install {rt.distribution}=={rt.version}",
        )
        return
    yield _compare_version(
        "tensorflow.version",
        "TensorFlow",
        rt.version,
        ct.version,
        older=RISK,
        why_older="a model saved by a newer TensorFlow may use ops or graph features an older one "
        "lacks",
        why_newer="newer TensorFlow releases run models saved by older ones, with small numeric "
        "differences",
        fix=f"install {rt.distribution}=={rt.version}",
    )
    if len(several) <= 1 and rt.distribution != ct.distribution:
        yield _Result(
            "tensorflow.distribution",
            rt.distribution,
            ct.distribution,
            NOTE,
            "another TensorFlow distribution",
            "the same TensorFlow in another build or packaging",
            f"install {rt.distribution}=={rt.version}",
        )
    yield _build_rule(rt.build_info, ct.build_info, rt.distribution, rt.version)


def _build_rule(
    recorded: Mapping[str, Any], current: Mapping[str, Any], distribution: str, version: str
) -> _Result:
    was, now = _build_label(recorded), _build_label(current)
    fix = f"install {distribution}=={version}"
    if was == now or "unknown" in (was, now):
        return _Result(
            "tensorflow.build",
            was,
            now,
            SAME if was == now else NOTE,
            "same build" if was == now else "build unknown",
        )
    gpu_before = bool(recorded.get("is_cuda_build") or recorded.get("is_rocm_build"))
    gpu_now = bool(current.get("is_cuda_build") or current.get("is_rocm_build"))
    if gpu_before and not gpu_now:
        return _Result(
            "tensorflow.build",
            was,
            now,
            RISK,
            "GPU build recorded, CPU build installed",
            "the model runs on the CPU (slower, slightly different numerics); GPU-only ops such as "
            "cuDNN kernels are missing",
            fix,
        )
    if not gpu_before and gpu_now:
        return _Result(
            "tensorflow.build",
            was,
            now,
            NOTE,
            "CPU build recorded, GPU build installed",
            "GPU kernels give slightly different numerics than the CPU kernels used when packing",
            fix,
        )
    return _Result(
        "tensorflow.build",
        was,
        now,
        NOTE,
        "another CUDA/cuDNN or ROCm version",
        "kernels differ between CUDA/cuDNN versions; results may differ in the last digits",
        fix,
    )


def _python_rules(c: _Context) -> Iterator[_Result]:
    rp, cp = c.recorded.python, c.current.python
    was, now = _parse(rp.version), _parse(cp.version)
    fix = f"use Python {_minor(rp.version)}: 'kbundle env create' builds an environment with it"
    if rp.version == cp.version or was is None or now is None:
        yield _Result(
            "python.version",
            rp.version,
            cp.version,
            SAME if rp.version == cp.version else NOTE,
            "same Python" if rp.version == cp.version else "Python differs",
        )
    elif _release(was, 2) == _release(now, 2):
        yield _Result(
            "python.version",
            rp.version,
            cp.version,
            NOTE,
            "Python patch release differs",
            "patch releases keep bytecode and wheels compatible",
        )
    elif c.pickles:
        yield _Result(
            "python.version",
            rp.version,
            cp.version,
            CERTAIN,
            "Python minor differs and the bundle carries pickles",
            "cloudpickle stores bytecode, which changes with every Python minor: "
            f"{', '.join(c.pickles)} cannot be unpickled",
            fix,
        )
    elif now < was and c.bundled_code:
        yield _Result(
            "python.version",
            rp.version,
            cp.version,
            RISK,
            "Python is older than the one that packed the model",
            f"bundled source of {', '.join(c.bundled_code)} may use syntax or library features of "
            "the newer Python",
            fix,
        )
    else:
        yield _Result(
            "python.version",
            rp.version,
            cp.version,
            NOTE,
            "Python minor differs",
            "the model file is independent of Python; compiled wheels are built per Python minor",
            fix,
        )
    if rp.implementation != cp.implementation:
        yield _Result(
            "python.implementation",
            rp.implementation,
            cp.implementation,
            CERTAIN if c.pickles else RISK,
            "another Python implementation",
            RULES["python.implementation"],
            f"use {rp.implementation}",
        )


def _library_rules(c: _Context) -> Iterator[_Result]:
    recorded, current = c.recorded.libraries, c.current.libraries
    backend = (c.current.keras.backend if c.current.keras else None) or "tensorflow"
    backend_libraries = _BACKEND_LIBRARIES.get(backend, ())
    for name in sorted(set(recorded) | set(current) | set(backend_libraries), key=_library_order):
        was, now = recorded.get(name), current.get(name)
        location = f"libraries.{name}"
        if name in backend_libraries and now is None:
            yield _Result(
                location,
                was,
                MISSING,
                CERTAIN,
                "not installed",
                f"the {backend} backend runs on it",
                f"install {name}" + (f"=={was}" if was else ""),
            )
            continue
        if name == "tf-keras" or was is None:
            continue  # tf-keras is judged by the keras.* rules; an unrecorded library by nothing
        if name == "numpy" and now is not None:
            yield _numpy_rule(c, was, now)
            continue
        role, outcome = _library_role(c, name, backend)
        if now is None:
            if outcome is not INCIDENTAL:
                yield _Result(
                    location, was, MISSING, CERTAIN, "not installed", role, f"install {name}=={was}"
                )
            continue
        if name == "cloudpickle" and c.pickles:
            role = "pickles are only guaranteed to load with the cloudpickle that wrote them"
        result = _compare_version(
            location,
            name,
            was,
            now,
            older=outcome,
            newer=outcome if outcome is INCIDENTAL else NOTE,
            patch=outcome if outcome is INCIDENTAL else NOTE,
            major=RISK if outcome is RISK else outcome,
            why_older=role,
            why_newer=f"{role}; newer releases read what older ones wrote",
            fix=f"install {name}=={was}",
        )
        if name == "h5py" or result.outcome is not SAME:
            yield result


def _library_order(name: str) -> tuple[int, str]:
    order = ("numpy", "h5py", "cloudpickle")
    return (order.index(name) if name in order else len(order), name)


def _library_role(c: _Context, name: str, backend: str) -> tuple[str, _Outcome]:
    """What library ``name`` does for this model here, and the outcome of an older version."""
    if name == "numpy":
        return "Keras and TensorFlow need numpy", CERTAIN
    if name == "h5py":
        return "Keras stores weights in HDF5 (.keras and .h5 files) and reads them with h5py", NOTE
    if name == "cloudpickle" and c.pickles:
        return f"{', '.join(c.pickles)} travel as cloudpickle", RISK
    if name in _BACKEND_LIBRARIES.get(backend, ()):
        return f"the {backend} backend runs on it", RISK
    if name in ("ml-dtypes", "protobuf") and (c.current.tensorflow or c.current.keras):
        return (
            f"TensorFlow/Keras depend on {name}; the recorded versions were installed together",
            NOTE,
        )
    return f"{name} is not used to load this model here", INCIDENTAL


def _numpy_rule(c: _Context, was: str, now: str) -> _Result:
    fix = f"install numpy=={was}"
    old, new = _parse(was), _parse(now)
    if old is not None and new is not None and _release(old, 1) != _release(new, 1):
        if c.pickles:
            return _Result(
                "libraries.numpy",
                was,
                now,
                LIKELY,
                "numpy major version differs and the bundle carries pickles",
                "numpy 2 pickles name numpy._core, which numpy 1 lacks; arrays pickled by one "
                "major may not load in the other",
                fix,
            )
        return _Result(
            "libraries.numpy",
            was,
            now,
            RISK,
            "numpy major version differs",
            "numpy 1 and 2 differ in C API and type promotion; TensorFlow and custom code built "
            "for one may fail or compute differently",
            fix,
        )
    return _compare_version(
        "libraries.numpy",
        "numpy",
        was,
        now,
        older=NOTE,
        why_older="weights are read as plain arrays by any numpy of the same major",
        why_newer="weights are read as plain arrays by any numpy of the same major",
        fix=fix,
    )


def _distribution_rules(c: _Context) -> Iterator[_Result]:
    installed = c.current.distributions
    for name, need in c.needed.items():
        location = f"distributions.{name}"
        objects = ", ".join(need.objects)
        now = installed.get(name)
        fix = f"install {name}=={need.version}" if need.version else f"install {name}"
        if now is None:
            yield _Result(
                location,
                need.version,
                MISSING,
                CERTAIN,
                "not installed",
                f"custom object(s) {objects} import it",
                fix,
            )
            continue
        if need.version is None or need.version == now:
            yield _Result(location, need.version, now, SAME, "installed")
            continue
        if need.bundled:
            why = (
                f"the bundled code of {objects} imports it; another version may behave differently"
            )
            outcome = NOTE
        else:
            why = (
                f"{objects} are defined by this distribution and not bundled: another "
                "version may define them differently"
            )
            outcome = RISK
        yield _compare_version(
            location,
            name,
            need.version,
            now,
            older=outcome,
            newer=outcome,
            patch=NOTE,
            major=RISK,
            why_older=why,
            why_newer=why,
            fix=fix,
        )


def _platform_rules(c: _Context) -> Iterator[_Result]:
    rp, cp = c.recorded.platform, c.current.platform
    for name in ("system", "machine"):
        was, now = getattr(rp, name), getattr(cp, name)
        yield _Result(
            f"platform.{name}",
            was,
            now,
            SAME if was == now else NOTE,
            "same"
            if was == now
            else "another " + ("operating system" if name == "system" else "CPU architecture"),
            RULES[f"platform.{name}"] + "; the model file itself is portable",
            "'kbundle env create' installs wheels for this platform from the pinned versions",
        )
    if rp.libc and cp.libc and rp.libc != cp.libc:
        yield _Result(
            "platform.libc",
            rp.libc,
            cp.libc,
            INCIDENTAL,
            "another C library",
            RULES["platform.libc"],
            "if 'kbundle env create' finds no wheel, use a system at least as new as the recorded "
            "one",
        )
    if c.recorded.gpus and not c.current.gpus:
        yield _Result(
            "gpus",
            ", ".join(c.recorded.gpus),
            "none",
            INCIDENTAL,
            "no GPU visible",
            "the model runs on the CPU: slower, and numerics may differ in the last digits",
            "run on a machine with a GPU and a CUDA build of TensorFlow for the recorded speed",
        )
