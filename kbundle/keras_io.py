"""The only module that imports Keras or TensorFlow, and only inside its functions.

Saving a live model, describing it, and loading a verified model file. Keras errors are
translated into kbundle errors with the original message kept. Stable: internal.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kbundle.errors import ModelLoadError, PackError
from kbundle.manifest import TensorSpec

__all__ = ["describe_live_model", "is_keras_model", "load_model", "save_model"]


def _keras() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ banner off stderr
    import keras  # noqa: PLC0415 - lazy by design: importing Keras costs seconds

    return keras


def is_keras_model(obj: object) -> bool:
    """True for a live ``keras.Model`` (without importing Keras when it is not loaded)."""
    import sys  # noqa: PLC0415

    keras = sys.modules.get("keras")
    return keras is not None and isinstance(obj, keras.Model)


def save_model(model: Any, directory: Path) -> Path:
    """Save ``model`` as ``model.keras`` in ``directory`` and return the file's path."""
    path = directory / "model.keras"
    try:
        model.save(path)
    except Exception as exc:
        raise PackError(
            f"Keras could not save the model: {_first_line(exc)}",
            hint="make every custom layer serialisable (get_config) and register it with "
            "keras.saving.register_keras_serializable",
        ) from exc
    return path


def _specs(tensors: Any) -> list[TensorSpec] | None:
    if tensors is None:
        return None
    try:
        items = list(tensors)
    except TypeError:
        return None
    specs = []
    for tensor in items:
        shape = getattr(tensor, "shape", None)
        specs.append(
            TensorSpec(
                name=getattr(tensor, "name", None),
                shape=[None if d is None else int(d) for d in shape] if shape is not None else None,
                dtype=str(getattr(tensor, "dtype", None)) if getattr(tensor, "dtype", None) else None,
            )
        )
    return specs


def describe_live_model(model: Any) -> dict[str, Any]:
    """Class, name, inputs, outputs and parameter count of a live model."""
    try:
        inputs = _specs(model.inputs)
        outputs = _specs(model.outputs)
    except (AttributeError, ValueError):  # a subclassed model that was never called
        inputs = outputs = None
    try:
        parameters: int | None = int(model.count_params())
    except ValueError:  # an unbuilt model has no weights yet
        parameters = None
    return {
        "class_name": type(model).__name__,
        "name": getattr(model, "name", None),
        "inputs": inputs,
        "outputs": outputs,
        "parameter_count": parameters,
    }


def load_model(
    path: Path,
    *,
    custom_objects: dict[str, Any] | None = None,
    safe_mode: bool = True,
    compile: bool = True,
) -> Any:
    """Load a verified ``.keras`` / ``.h5`` model file with Keras."""
    keras = _keras()
    try:
        return keras.saving.load_model(
            path, custom_objects=custom_objects, compile=compile, safe_mode=safe_mode
        )
    except Exception as exc:
        raise ModelLoadError(_load_message(exc), hint=_load_hint(exc)) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def _load_message(exc: BaseException) -> str:
    return f"the verified model failed to load in Keras: {type(exc).__name__}: {_first_line(exc)}"


def _load_hint(exc: BaseException) -> str:
    text = str(exc)
    if "safe_mode" in text or "Lambda" in text:
        return (
            "the model contains a Lambda layer or other marshalled code, which Keras refuses in "
            "safe mode; if you trust the bundle, load it with --unsafe-lambda (safe_mode=False)"
        )
    if "Could not locate" in text or "Unknown" in text:
        return "a custom object is missing; pack it with the model or install the package defining it"
    return "run 'kbundle doctor' on the bundle for a diagnosis"
