"""Rules for keras: generation (Keras 2 or 3), version, backend, configuration. Stable: internal."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from kbundle.env.rules.base import (
    CERTAIN,
    LIKELY,
    MISSING,
    NOTE,
    RISK,
    RULES,
    SAME,
    Context,
    Result,
    compare_version,
    minor,
    parse_version,
    release,
)

__all__ = ["rules"]


def _keras_label(info: Any) -> str | None:
    return f"Keras {info.major} ({info.distribution})" if info else None


def rules(c: Context) -> Iterator[Result]:
    rk, ck = c.recorded.keras, c.current.keras
    if rk is None:
        return
    if ck is None:
        yield Result(
            "keras.major",
            _keras_label(rk),
            MISSING,
            CERTAIN,
            "Keras is not installed",
            "the model can only be loaded by Keras",
            f"install {rk.distribution}=={rk.version}",
        )
        return
    if rk.major != ck.major:
        yield _keras_major(c, rk, ck)
    else:
        yield Result(
            "keras.major", _keras_label(rk), _keras_label(ck), SAME, "same Keras generation"
        )
        # The Keras that wrote the file is the better reference, unless it is another generation
        # (a Keras 2 .h5 packed under Keras 3): then the packing environment is what the bundle
        # was proven to load in.
        saved = parse_version(c.saved_by_keras)
        same_generation = saved is not None and release(saved, 1) == (rk.major,)
        saver = c.saved_by_keras if rk.distribution == "keras" and same_generation else rk.version
        yield compare_version(
            "keras.version",
            "Keras",
            saver,
            ck.version,
            older=LIKELY,
            why_older="a file written by a newer Keras may use layers, arguments or config fields "
            "an older Keras does not know",
            why_newer="newer Keras releases read the files of older ones",
            fix=f"install {rk.distribution}=={saver}",
        )
    yield from _tf_keras_consistency(c)
    rb, cb = rk.backend or "tensorflow", ck.backend or "tensorflow"
    yield _backend_rule(c, rb, cb)
    for name in ("floatx", "image_data_format"):
        was, now = getattr(rk, name), getattr(ck, name)
        if was is not None and now is not None and was != now:
            yield Result(
                f"keras.{name}",
                was,
                now,
                NOTE,
                "Keras configuration differs",
                RULES[f"keras.{name}"] + "; saved layers keep their own setting",
                f'set "{name}": "{was}" in ~/.keras/keras.json if custom code depends on it',
            )


def _keras_major(c: Context, rk: Any, ck: Any) -> Result:
    recorded, current = _keras_label(rk), _keras_label(ck)
    fix = f"install {rk.distribution}=={rk.version}" + (
        " (with --no-deps, or it replaces tensorflow-cpu)" if rk.distribution == "tf-keras" else ""
    )
    installed_keras = parse_version(c.current.distributions.get("keras"))
    if ck.distribution == "tf-keras" and installed_keras and release(installed_keras, 1) >= (3,):
        fix = f"unset TF_USE_LEGACY_KERAS so that the installed Keras 3 is used, or {fix}"
    elif rk.distribution == "tf-keras" and "tf-keras" in c.current.distributions:
        fix = f"set TF_USE_LEGACY_KERAS=1 so that the installed tf-keras is used, or {fix}"
    if rk.major > ck.major:
        why = "Keras 2 (tf-keras) cannot read models saved by Keras 3"
        outcome = CERTAIN
    elif c.model_format == "savedmodel":
        why = (
            "Keras 3 cannot load a Keras 2 SavedModel as a model (only for "
            "inference, through keras.layers.TFSMLayer)"
        )
        outcome = CERTAIN
    elif c.model_format == "h5":
        why = (
            "Keras 3 reads legacy .h5 files of built-in layers, but custom layers "
            "and optimizers written for Keras 2 often fail"
        )
        outcome = RISK
    else:
        why = (
            "Keras 3 reads Keras 2 files only partly: custom objects and training "
            "configuration often fail"
        )
        outcome = LIKELY
    return Result("keras.major", recorded, current, outcome, "Keras generation differs", why, fix)


def _tf_keras_consistency(c: Context) -> Iterator[Result]:
    ck, ct = c.current.keras, c.current.tensorflow
    if ck is None or ck.distribution != "tf-keras" or ct is None:
        return
    if minor(ck.version) != minor(ct.version):
        yield Result(
            "keras.distribution",
            f"tensorflow {minor(ck.version)}",
            f"tensorflow {ct.version}",
            CERTAIN,
            f"tf-keras {ck.version} does not match the installed TensorFlow",
            RULES["keras.distribution"],
            f"install tf-keras=={minor(ct.version)}.* with --no-deps, or TensorFlow "
            f"{minor(ck.version)}",
        )


def _backend_rule(c: Context, recorded: str, current: str) -> Result:
    if recorded == current:
        return Result("keras.backend", recorded, current, SAME, "same backend")
    if c.model_format == "savedmodel":
        outcome, why = (
            CERTAIN,
            "a SavedModel is a TensorFlow graph; only the tensorflow backend runs it",
        )
    elif c.tf_code:
        outcome = CERTAIN
        why = (
            f"custom code of {', '.join(c.tf_code)} imports tensorflow; "
            f"tf. ops do not run on {current} tensors"
        )
    elif c.bundled_code:
        outcome = RISK
        why = f"custom code of {', '.join(c.bundled_code)} may call {recorded}-only ops"
    else:
        outcome = NOTE
        why = (
            "a .keras model of built-in layers loads on any backend; "
            "results may differ in the last digits"
        )
    fix = f"set KERAS_BACKEND={recorded}"
    return Result("keras.backend", recorded, current, outcome, "backend differs", why, fix)
