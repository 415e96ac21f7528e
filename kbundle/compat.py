"""Comparing a recorded environment with the current one: findings with severities.

Stable: internal. (A first version: recorded vs current TensorFlow, Keras, backend, Python.)
"""

from __future__ import annotations

from kbundle.findings import Finding, Severity
from kbundle.manifest import Environment

__all__ = ["compare_environments"]


def _major_minor(version: str | None) -> tuple[str, ...]:
    return tuple((version or "").split(".")[:2])


def compare_environments(recorded: Environment, current: Environment) -> list[Finding]:
    """Every difference that matters for loading, recorded side first."""
    findings: list[Finding] = []

    def differ(location: str, was: str | None, now: str | None, severity: Severity, why: str, fix: str) -> None:
        if was != now:
            findings.append(Finding(location=location, problem="differs", severity=severity, expected=was, actual=now, why=why, fix=fix))

    rk, ck = recorded.keras, current.keras
    differ("keras.major", str(rk.major) if rk else None, str(ck.major) if ck else None, Severity.ERROR,
           "Keras 2 (tf-keras) and Keras 3 read each other's files only partly",
           "install the recorded Keras ('kbundle env export')")
    differ("keras.backend", rk.backend if rk else None, ck.backend if ck else None, Severity.WARN,
           "custom code calling backend-specific ops runs only on its own backend",
           "set KERAS_BACKEND to the recorded backend")
    differ("keras.version", rk.version if rk else None, ck.version if ck else None, Severity.INFO,
           "newer Keras reads older files; older Keras may not read newer ones",
           "install the recorded version if loading fails")
    rt, ct = recorded.tensorflow, current.tensorflow
    differ("tensorflow.version", ".".join(_major_minor(rt.version)) if rt else None,
           ".".join(_major_minor(ct.version)) if ct else None, Severity.WARN,
           "ops and numerics change between TensorFlow minor versions",
           "install the recorded TensorFlow version")
    differ("python.version", ".".join(_major_minor(recorded.python.version)),
           ".".join(_major_minor(current.python.version)), Severity.INFO,
           "bundled pickles load only under the Python minor that wrote them",
           "use the recorded Python minor")
    return findings
