"""The ``[tool.kbundle]`` table of the nearest ``pyproject.toml``: a project's standing choices.

Found by searching from the working directory upward; the first ``pyproject.toml`` that has
the table wins. It holds what the command line would otherwise repeat on every call:

- ``policy``: how strictly environment differences count (``default``, ``strict``,
  ``lenient``; see ``kbundle.env.rules``);
- ``severity``: a table of ``FIELD = LEVEL`` overrides for differing environment fields;
- ``allow-distributions``: installed distributions whose modules a load may import to find a
  model's custom objects (see ``kbundle.code.gate``), as ``--allow-distribution`` does.

Reading it never imports anything from the project. Stable: the keys are public.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kbundle.errors import UsageError

__all__ = ["ProjectConfig", "find_project_config"]

_KEYS = ("policy", "severity", "allow-distributions")


@dataclass(frozen=True, kw_only=True, slots=True)
class ProjectConfig:
    """The ``[tool.kbundle]`` table (``path`` is ``None`` when no ``pyproject.toml`` has one)."""

    path: Path | None = None
    policy: str | None = None
    severity: dict[str, str] = field(default_factory=dict)
    allow_distributions: tuple[str, ...] = ()

    @property
    def source(self) -> str:
        return str(self.path) if self.path else "[tool.kbundle]"


def find_project_config(start: Path | None = None) -> ProjectConfig:
    """The ``[tool.kbundle]`` table nearest to ``start`` (the working directory), validated."""
    origin = (start or Path.cwd()).resolve()
    for directory in (origin, *origin.parents):
        candidate = directory / "pyproject.toml"
        if not candidate.is_file():
            continue
        table = _tool_table(candidate)
        if table is not None:
            return _parse(candidate, table)
    return ProjectConfig()


def _tool_table(candidate: Path) -> dict[str, Any] | None:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on Python 3.10 only
        import tomli as tomllib
    try:
        data = tomllib.loads(candidate.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(
            f"{candidate} is not valid TOML: {exc}",
            hint="fix the file or run from another directory",
        ) from None
    tool = data.get("tool", {})
    table = tool.get("kbundle") if isinstance(tool, dict) else None
    if table is not None and not isinstance(table, dict):
        raise UsageError(
            f"{candidate}: [tool.kbundle] must be a table: {table!r}",
            hint='e.g. [tool.kbundle] policy = "strict"',
        )
    return table


def _parse(path: Path, table: dict[str, Any]) -> ProjectConfig:
    unknown = sorted(set(table) - set(_KEYS))
    if unknown:
        raise UsageError(
            f"{path}: unknown key(s) in [tool.kbundle]: {', '.join(unknown)}",
            hint=f"allowed: {', '.join(_KEYS)}",
        )
    policy = table.get("policy")
    if policy is not None and not isinstance(policy, str):
        raise UsageError(
            f"{path}: [tool.kbundle] policy must be a string: {policy!r}",
            hint='e.g. policy = "strict"',
        )
    severity = table.get("severity", {})
    if not isinstance(severity, dict):
        raise UsageError(
            f"{path}: [tool.kbundle.severity] must be a table of FIELD = LEVEL: {severity!r}",
            hint='e.g. "keras.backend" = "warn"',
        )
    allowed = table.get("allow-distributions", [])
    if not isinstance(allowed, list) or not all(isinstance(name, str) for name in allowed):
        raise UsageError(
            f"{path}: [tool.kbundle] allow-distributions must be a list of distribution "
            f"names: {allowed!r}",
            hint='e.g. allow-distributions = ["my-layers"]',
        )
    return ProjectConfig(
        path=path,
        policy=policy,
        severity={str(key): str(value) for key, value in severity.items()},
        allow_distributions=tuple(allowed),  # normalised where they are compared
    )
