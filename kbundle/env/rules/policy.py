"""Policies: how outcomes become severities, and per-field overrides.

- ``default``: the rule's own severity;
- ``strict``: every software difference is an error (incidental ones such as visible GPUs
  stay);
- ``lenient``: only what will certainly fail is an error; other errors become warnings.

Per-field overrides (``--severity FIELD=LEVEL`` or ``[tool.kbundle.severity]`` in the
nearest ``pyproject.toml``) then set the severity of a *differing* field outright; an equal
field is never turned into a problem. Stable: the policy names and override syntax are public.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from kbundle.config import find_project_config
from kbundle.env.rules.base import CERTAIN, LEVELS, POLICIES, RULES, Outcome, Result
from kbundle.errors import UsageError
from kbundle.findings import Finding, Severity

__all__ = ["Policy", "parse_severity_overrides", "resolve_policy"]


@dataclass(frozen=True, kw_only=True, slots=True)
class Policy:
    """A named policy and per-field severity overrides ``(pattern, level, origin)``.

    ``origin`` says where an override came from (``--severity`` or a ``pyproject.toml``
    path); later overrides win over earlier ones for the same field.
    """

    name: str = "default"
    overrides: tuple[tuple[str, Severity, str], ...] = ()
    config: Path | None = None

    def severity_for(self, location: str, outcome: Outcome) -> tuple[Severity, str | None]:
        """The severity of ``location`` under this policy, and the override origin if any."""
        severity = outcome.under(self.name)
        if severity == Severity.OK:
            return severity, None
        chosen: tuple[Severity, str] | None = None
        for pattern, level, origin in self.overrides:
            if fnmatch.fnmatchcase(location, pattern):
                chosen = (level, origin)
        return chosen if chosen else (severity, None)

    def finding(self, result: Result) -> Finding:
        """A rule's result as a finding under this policy (why and fix only for a difference)."""
        severity, origin = self.severity_for(result.location, result.outcome)
        problem = result.problem + (f" (severity set by {origin})" if origin else "")
        differs = result.outcome.severity != Severity.OK
        return Finding(
            location=result.location,
            problem=problem,
            severity=severity,
            expected=result.recorded,
            actual=result.current,
            why=result.why if differs else None,
            fix=result.fix if differs else None,
        )

    def override(self, finding: Finding) -> Finding:
        """``finding`` (made outside the rules, such as the probe's) with overrides applied."""
        if finding.severity == Severity.OK:
            return finding
        outcome = CERTAIN if finding.severity == Severity.ERROR else Outcome(finding.severity)
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
    if level.lower() not in LEVELS:
        raise UsageError(
            f"{origin}: severity for {pattern!r} must be one of {', '.join(LEVELS)}: {level!r}",
            hint="e.g. keras.backend=warn",
        )
    if not any(_pattern_names_rule(pattern, rule) for rule in RULES):
        raise UsageError(
            f"{origin}: no compatibility field matches {pattern!r}",
            hint="fields are listed in docs/compatibility.md: " + ", ".join(RULES),
        )
    return pattern, LEVELS[level.lower()], origin


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
                hint="use --policy (policy=) default, strict or lenient",
            )
        policy_name = name
    overrides.extend(parse_severity_overrides(severity, origin))
    return Policy(
        name=policy_name,
        overrides=tuple(overrides),
        config=config.path,
    )
