"""Rules for the distributions custom objects import. Stable: internal."""

from __future__ import annotations

from collections.abc import Iterator

from kbundle.env.rules.base import (
    CERTAIN,
    MISSING,
    NOTE,
    RISK,
    SAME,
    Context,
    Result,
    compare_version,
)

__all__ = ["rules"]


def rules(c: Context) -> Iterator[Result]:
    installed = c.current.distributions
    for name, need in c.needed.items():
        location = f"distributions.{name}"
        objects = ", ".join(need.objects)
        now = installed.get(name)
        fix = f"install {name}=={need.version}" if need.version else f"install {name}"
        if now is None:
            yield Result(
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
            yield Result(location, need.version, now, SAME, "installed")
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
        yield compare_version(
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
