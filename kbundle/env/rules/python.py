"""Rules for python: version and implementation. Stable: internal."""

from __future__ import annotations

from collections.abc import Iterator

from kbundle.env.rules.base import (
    CERTAIN,
    NOTE,
    RISK,
    RULES,
    SAME,
    Context,
    Result,
    minor,
    parse_version,
    release,
)

__all__ = ["rules"]


def rules(c: Context) -> Iterator[Result]:
    rp, cp = c.recorded.python, c.current.python
    was, now = parse_version(rp.version), parse_version(cp.version)
    fix = f"use Python {minor(rp.version)}: 'kbundle env create' builds an environment with it"
    if rp.version == cp.version or was is None or now is None:
        yield Result(
            "python.version",
            rp.version,
            cp.version,
            SAME if rp.version == cp.version else NOTE,
            "same Python" if rp.version == cp.version else "Python differs",
        )
    elif release(was, 2) == release(now, 2):
        yield Result(
            "python.version",
            rp.version,
            cp.version,
            NOTE,
            "Python patch release differs",
            "patch releases keep bytecode and wheels compatible",
        )
    elif c.pickles:
        yield Result(
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
        yield Result(
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
        yield Result(
            "python.version",
            rp.version,
            cp.version,
            NOTE,
            "Python minor differs",
            "the model file is independent of Python; compiled wheels are built per Python minor",
            fix,
        )
    if rp.implementation != cp.implementation:
        yield Result(
            "python.implementation",
            rp.implementation,
            cp.implementation,
            CERTAIN if c.pickles else RISK,
            "another Python implementation",
            RULES["python.implementation"],
            f"use {rp.implementation}",
        )
