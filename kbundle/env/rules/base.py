"""The parts every compatibility rule is made of: outcomes, results, the context a rule
reads, the field list (``RULES``) and the version comparison most rules share.

An *outcome* is a default severity plus whether the difference will certainly break loading
(``certain``) and whether it describes something that does not touch loading (``incidental``:
the machine, unused libraries); a *policy* (kbundle.env.rules.policy) turns outcomes into
severities. Stable: internal; the field names in ``RULES`` are public.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from packaging.version import InvalidVersion, Version

from kbundle.container.manifest import CustomObject, Environment, Manifest
from kbundle.env.distributions import canonical_name
from kbundle.findings import Severity

POLICIES = ("default", "strict", "lenient")
LEVELS = {str(level): level for level in Severity}

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
BACKEND_LIBRARIES = {"jax": ("jax", "jaxlib"), "torch": ("torch",), "tensorflow": ()}
EXPORT_FIX = "install the recorded environment: 'kbundle env create BUNDLE DIR'"
MISSING = "not installed"  # the current value of a field whose distribution is absent


@dataclass(frozen=True, slots=True)
class Outcome:
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


SAME = Outcome(Severity.OK)
CERTAIN = Outcome(Severity.ERROR, certain=True)
LIKELY = Outcome(Severity.ERROR)
RISK = Outcome(Severity.WARN)
NOTE = Outcome(Severity.INFO)
INCIDENTAL = Outcome(Severity.INFO, incidental=True)


@dataclass(frozen=True, slots=True)
class Result:
    location: str
    recorded: str | None
    current: str | None
    outcome: Outcome
    problem: str
    why: str | None = None
    fix: str | None = None


@dataclass(frozen=True, slots=True)
class Needed:
    """A distribution custom objects import: recorded version, who needs it, code bundled?"""

    version: str | None
    objects: tuple[str, ...]
    bundled: bool


@dataclass(frozen=True, slots=True)
class Context:
    recorded: Environment
    current: Environment
    model_format: str | None
    saved_by_keras: str | None
    pickles: tuple[str, ...]  # custom objects that travel as cloudpickle
    bundled_code: tuple[str, ...]  # custom objects whose code travels (source or pickle)
    tf_code: tuple[str, ...]  # custom objects whose code imports tensorflow
    needed: Mapping[str, Needed]

    @classmethod
    def of(cls, manifest: Manifest | None, recorded: Environment, current: Environment) -> Context:
        objects = manifest.custom_objects if manifest else []
        return cls(
            recorded=recorded,
            current=current,
            model_format=manifest.model.format if manifest else None,
            saved_by_keras=(manifest.model.saved_by.get("keras_version") if manifest else None)
            or None,
            pickles=tuple(o.name for o in objects if o.transport == "pickle"),
            bundled_code=tuple(o.name for o in objects if o.transport in ("source", "pickle")),
            tf_code=tuple(o.name for o in objects if imports_tensorflow(o)),
            needed=needed_distributions(objects),
        )


def imports_tensorflow(obj: CustomObject) -> bool:
    modules = [m.split(".")[0] for m in obj.imports]
    return "tensorflow" in modules or any(
        canonical_name(d).startswith("tensorflow") for d in obj.distributions
    )


def needed_distributions(objects: Sequence[CustomObject]) -> dict[str, Needed]:
    needed: dict[str, Needed] = {}

    def add(name: str, version: str | None, obj: CustomObject) -> None:
        key = canonical_name(name)
        bundled = obj.transport in ("source", "pickle")
        if key in needed:
            old = needed[key]
            needed[key] = Needed(
                old.version or version, (*old.objects, obj.name), old.bundled and bundled
            )
        else:
            needed[key] = Needed(version, (obj.name,), bundled)

    for obj in objects:  # a built-in of Keras's ecosystem needs its distribution (keras-hub)
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


def parse_version(version: str | None) -> Version | None:
    try:
        return Version(version) if version else None
    except InvalidVersion:
        return None


def release(version: Version, parts: int) -> tuple[int, ...]:
    return (*version.release, 0, 0, 0)[:parts]


def minor(version: str | None) -> str | None:
    parsed = parse_version(version)
    return ".".join(map(str, release(parsed, 2))) if parsed else version


def compare_version(
    location: str,
    what: str,
    recorded: str | None,
    current: str | None,
    *,
    older: Outcome,
    newer: Outcome = NOTE,
    patch: Outcome = NOTE,
    major: Outcome = CERTAIN,
    why_older: str,
    why_newer: str,
    fix: str = EXPORT_FIX,
) -> Result:
    """The usual version rule: same, patch, newer minor, older minor, other major."""
    was, now = parse_version(recorded), parse_version(current)
    if recorded == current or was is None or now is None:
        outcome = SAME if recorded == current else NOTE
        problem = "same version" if recorded == current else f"{what} versions differ"
        why = why_newer
    elif release(was, 1) != release(now, 1):
        outcome, problem = major, f"{what} major version differs"
        why = why_older if now < was else why_newer
    elif release(was, 2) == release(now, 2):
        outcome, problem = patch, f"{what} patch release differs"
        why = "patch releases keep files and APIs compatible"
    elif now < was:
        outcome, problem = older, f"{what} is older than the one that packed the model"
        why = why_older
    else:
        outcome, problem = newer, f"{what} is newer than the one that packed the model"
        why = why_newer
    return Result(location, recorded, current, outcome, problem, why, fix)
