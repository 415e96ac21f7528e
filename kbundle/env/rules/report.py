"""The outcome of one environment comparison: every field as a finding, under one policy.

Stable: ``CompatReport`` and ``EnvironmentWarning`` are public.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kbundle.env.rules.base import EXPORT_FIX
from kbundle.env.rules.policy import Policy
from kbundle.errors import EnvironmentMismatchError, ModelLoadError
from kbundle.findings import Finding, Severity

__all__ = ["CompatReport", "EnvironmentWarning"]


class EnvironmentWarning(UserWarning):
    """``kbundle.load`` found environment differences that may matter (severity warn)."""


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
        escape = (
            "; 'kbundle check' explains every field; --ignore-env loads anyway" if loading else ""
        )
        raise EnvironmentMismatchError.from_findings(
            errors,
            f"this environment cannot load {what} under the {self.policy.name} policy: "
            f"{errors[0].describe()}",
            noun="error",
            hint=f"{errors[0].fix or EXPORT_FIX}{escape}",
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
