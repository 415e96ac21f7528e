"""Rules for the platform: operating system, CPU architecture, C library, GPUs. Stable: internal."""

from __future__ import annotations

from collections.abc import Iterator

from kbundle.env.rules.base import (
    INCIDENTAL,
    NOTE,
    RULES,
    SAME,
    Context,
    Result,
)

__all__ = ["rules"]


def rules(c: Context) -> Iterator[Result]:
    rp, cp = c.recorded.platform, c.current.platform
    for name in ("system", "machine"):
        was, now = getattr(rp, name), getattr(cp, name)
        yield Result(
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
        yield Result(
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
        yield Result(
            "gpus",
            ", ".join(c.recorded.gpus),
            "none",
            INCIDENTAL,
            "no GPU visible",
            "the model runs on the CPU: slower, and numerics may differ in the last digits",
            "run on a machine with a GPU and a CUDA build of TensorFlow for the recorded speed",
        )
