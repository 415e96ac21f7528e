"""Rules for the libraries models depend on: numpy, h5py, cloudpickle, the backend's.

Stable: internal."""

from __future__ import annotations

from collections.abc import Iterator

from kbundle.env.rules.base import (
    BACKEND_LIBRARIES,
    CERTAIN,
    INCIDENTAL,
    LIKELY,
    MISSING,
    NOTE,
    RISK,
    SAME,
    Context,
    Outcome,
    Result,
    compare_version,
    parse_version,
    release,
)

__all__ = ["rules"]


def rules(c: Context) -> Iterator[Result]:
    recorded, current = c.recorded.libraries, c.current.libraries
    backend = (c.current.keras.backend if c.current.keras else None) or "tensorflow"
    backend_libraries = BACKEND_LIBRARIES.get(backend, ())
    for name in sorted(set(recorded) | set(current) | set(backend_libraries), key=_library_order):
        was, now = recorded.get(name), current.get(name)
        location = f"libraries.{name}"
        if name in backend_libraries and now is None:
            yield Result(
                location,
                was,
                MISSING,
                CERTAIN,
                "not installed",
                f"the {backend} backend runs on it",
                f"install {name}" + (f"=={was}" if was else ""),
            )
            continue
        if name == "tf-keras" or was is None:
            continue  # tf-keras is judged by the keras.* rules; an unrecorded library by nothing
        if name == "numpy" and now is not None:
            yield _numpy_rule(c, was, now)
            continue
        role, outcome = _library_role(c, name, backend)
        if now is None:
            if outcome is not INCIDENTAL:
                yield Result(
                    location, was, MISSING, CERTAIN, "not installed", role, f"install {name}=={was}"
                )
            continue
        if name == "cloudpickle" and c.pickles:
            role = "pickles are only guaranteed to load with the cloudpickle that wrote them"
        result = compare_version(
            location,
            name,
            was,
            now,
            older=outcome,
            newer=outcome if outcome is INCIDENTAL else NOTE,
            patch=outcome if outcome is INCIDENTAL else NOTE,
            major=RISK if outcome is RISK else outcome,
            why_older=role,
            why_newer=f"{role}; newer releases read what older ones wrote",
            fix=f"install {name}=={was}",
        )
        if name == "h5py" or result.outcome is not SAME:
            yield result


def _library_order(name: str) -> tuple[int, str]:
    order = ("numpy", "h5py", "cloudpickle")
    return (order.index(name) if name in order else len(order), name)


def _library_role(c: Context, name: str, backend: str) -> tuple[str, Outcome]:
    """What library ``name`` does for this model here, and the outcome of an older version."""
    if name == "numpy":
        return "Keras and TensorFlow need numpy", CERTAIN
    if name == "h5py":
        return "Keras stores weights in HDF5 (.keras and .h5 files) and reads them with h5py", NOTE
    if name == "cloudpickle" and c.pickles:
        return f"{', '.join(c.pickles)} travel as cloudpickle", RISK
    if name in BACKEND_LIBRARIES.get(backend, ()):
        return f"the {backend} backend runs on it", RISK
    if name in ("ml-dtypes", "protobuf") and (c.current.tensorflow or c.current.keras):
        return (
            f"TensorFlow/Keras depend on {name}; the recorded versions were installed together",
            NOTE,
        )
    return f"{name} is not used to load this model here", INCIDENTAL


def _numpy_rule(c: Context, was: str, now: str) -> Result:
    fix = f"install numpy=={was}"
    old, new = parse_version(was), parse_version(now)
    if old is not None and new is not None and release(old, 1) != release(new, 1):
        if c.pickles:
            return Result(
                "libraries.numpy",
                was,
                now,
                LIKELY,
                "numpy major version differs and the bundle carries pickles",
                "numpy 2 pickles name numpy._core, which numpy 1 lacks; arrays pickled by one "
                "major may not load in the other",
                fix,
            )
        return Result(
            "libraries.numpy",
            was,
            now,
            RISK,
            "numpy major version differs",
            "numpy 1 and 2 differ in C API and type promotion; TensorFlow and custom code built "
            "for one may fail or compute differently",
            fix,
        )
    return compare_version(
        "libraries.numpy",
        "numpy",
        was,
        now,
        older=NOTE,
        why_older="weights are read as plain arrays by any numpy of the same major",
        why_newer="weights are read as plain arrays by any numpy of the same major",
        fix=fix,
    )
