"""Findings: one observed problem (or fact) with what was expected and what was found.

Verification, environment comparison and diagnosis all *collect* findings and report them
together, so a user sees every problem at once. This module owns the finding record and its
severities; it knows nothing about where findings come from. Stable: part of the public API.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

__all__ = ["Finding", "Severity"]


class Severity(enum.IntEnum):
    """How much a finding matters, in increasing order so that ``max()`` gives the verdict."""

    OK = 0
    INFO = 1
    WARN = 2
    ERROR = 3

    def __str__(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, kw_only=True, slots=True)
class Finding:
    """One problem or fact.

    ``location`` says where (a member path such as ``model/model.keras`` or a field such as
    ``environment.keras.version``); ``problem`` says what, in a few words; ``expected`` and
    ``actual`` hold the two sides where there are two; ``fix`` says what to do about it.
    """

    location: str
    problem: str
    severity: Severity = Severity.ERROR
    expected: str | None = None
    actual: str | None = None
    why: str | None = None
    fix: str | None = None

    def describe(self) -> str:
        """One line: ``location: problem (expected X, found Y)``."""
        text = f"{self.location}: {self.problem}"
        sides = []
        if self.expected is not None:
            sides.append(f"expected {self.expected}")
        if self.actual is not None and not self.problem.endswith(self.actual):
            # "not installed (found not installed)" says it twice
            sides.append(f"found {self.actual}")
        if sides:
            text += f" ({', '.join(sides)})"
        return text

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Finding:
        """The inverse of :meth:`to_dict` (for findings read back from ``--json`` output)."""
        return cls(
            location=str(data["location"]),
            problem=str(data["problem"]),
            severity=Severity[str(data["severity"]).upper()],
            expected=data.get("expected"),
            actual=data.get("actual"),
            why=data.get("why"),
            fix=data.get("fix"),
        )

    def explanation(self, indent: str) -> list[str]:
        """The ``why:`` and ``fix:`` lines that follow a finding in a report, indented."""
        return [
            f"{indent}{label}: {text}"
            for label, text in (("why", self.why), ("fix", self.fix))
            if text
        ]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping; ``None`` fields are omitted."""
        data: dict[str, Any] = {
            "location": self.location,
            "problem": self.problem,
            "severity": str(self.severity),
        }
        for key in ("expected", "actual", "why", "fix"):
            value = getattr(self, key)
            if value is not None:
                data[key] = value
        return data
