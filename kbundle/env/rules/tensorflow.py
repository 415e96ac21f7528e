"""Rules for tensorFlow: version, distribution, build (CPU, CUDA, ROCm). Stable: internal."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from kbundle.container.manifest import Environment
from kbundle.env.capture import installed_tensorflows
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

__all__ = ["rules", "shadowing"]


def _build_label(info: Mapping[str, Any]) -> str:
    if not info:
        return "unknown"
    if info.get("is_rocm_build"):
        return f"ROCm {info.get('rocm_version', '?')}"
    if info.get("is_cuda_build"):
        return f"CUDA {info.get('cuda_version', '?')}, cuDNN {info.get('cudnn_version', '?')}"
    return "CPU"


def _installed(env: Environment) -> list[str]:
    """``name version`` of each TensorFlow distribution installed in ``env``."""
    return [f"{d} {env.distributions[d]}" for d in installed_tensorflows(env.distributions)]


def shadowing(env: Environment) -> str | None:
    """What to tell the user when several TensorFlow distributions are installed in ``env``
    (one line: which ones, and whose files the ``tensorflow`` package really holds)."""
    several = _installed(env)
    if len(several) <= 1:
        return None
    imported = env.tensorflow.distribution if env.tensorflow else "?"
    return (
        f"{len(several)} TensorFlow distributions shadow each other ({', '.join(several)}): "
        f"they share one tensorflow package, whose files are {imported}'s (recorded); "
        f"uninstall all of them and install only the one you want"
    )


def rules(c: Context) -> Iterator[Result]:
    rt, ct = c.recorded.tensorflow, c.current.tensorflow
    several = _installed(c.current)
    if len(several) > 1:
        same = (
            several == _installed(c.recorded)
            and rt is not None
            and ct is not None
            and rt.distribution == ct.distribution
        )
        # The same shadowing as when packing, with the same files imported, is the same
        # environment: said (packing warned about it), never called a difference.
        yield Result(
            "tensorflow.distribution",
            ", ".join(_installed(c.recorded)) or (rt.distribution if rt else None),
            ", ".join(several),
            SAME if same else RISK,
            "several TensorFlow distributions are installed, as when packing"
            if same
            else "several TensorFlow distributions are installed",
            "they share the tensorflow package directory, so the last one installed silently wins "
            "(keras-hub's tensorflow-text, or tf-keras installed with its dependencies, pulls "
            "plain tensorflow, the CUDA build, over tensorflow-cpu)",
            None
            if same
            else f"uninstall all of them and install only {rt.distribution if rt else 'one'}",
        )
    if rt is None:
        if ct is not None:
            yield Result(
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
        yield Result(
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
    yield compare_version(
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
        yield Result(
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
) -> Result:
    was, now = _build_label(recorded), _build_label(current)
    fix = f"install {distribution}=={version}"
    if was == now or "unknown" in (was, now):
        return Result(
            "tensorflow.build",
            was,
            now,
            SAME if was == now else NOTE,
            "same build" if was == now else "build unknown",
        )
    gpu_before = bool(recorded.get("is_cuda_build") or recorded.get("is_rocm_build"))
    gpu_now = bool(current.get("is_cuda_build") or current.get("is_rocm_build"))
    if gpu_before and not gpu_now:
        return Result(
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
        return Result(
            "tensorflow.build",
            was,
            now,
            NOTE,
            "CPU build recorded, GPU build installed",
            "GPU kernels give slightly different numerics than the CPU kernels used when packing",
            fix,
        )
    return Result(
        "tensorflow.build",
        was,
        now,
        NOTE,
        "another CUDA/cuDNN or ROCm version",
        "kernels differ between CUDA/cuDNN versions; results may differ in the last digits",
        fix,
    )
