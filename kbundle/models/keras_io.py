"""The one module that imports Keras (and with it the backend, TensorFlow), only inside its
functions: saving a live model, describing it, and loading a verified model file.

Every other module that needs Keras asks :func:`keras` for it, so TensorFlow's native
start-up logs are filtered on every path (the CLI turns that on) and a missing Keras is one
clear error. (Environment capture reads TensorFlow's runtime build info only when TensorFlow
is already imported or a runtime capture is asked for: kbundle.env.capture.) Keras errors are
translated into kbundle errors with the original message kept. Stable: internal.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from kbundle.container.manifest import TensorSpec
from kbundle.errors import EnvironmentMismatchError, ModelLoadError, PackError, first_sentence

__all__ = [
    "LoadedModel",
    "describe_live_model",
    "input_structure",
    "is_keras_model",
    "keras",
    "load_model",
    "load_model_file",
    "loads_unzipped_keras",
    "native_logs",
    "save_model",
    "tensor_specs",
    "weight_bytes",
]


# Set by the CLI: run Keras imports and loads inside native_logs.filtered_native_stderr.
filter_native_logs = False


def native_logs() -> Any:
    """A context in which TensorFlow's native start-up logs are filtered from stderr, when the
    CLI asked for that (``filter_native_logs``); a no-op for library callers."""
    if filter_native_logs:
        from kbundle.models.native_logs import filtered_native_stderr

        return filtered_native_stderr()
    import contextlib

    return contextlib.nullcontext()


def keras() -> Any:
    """The ``keras`` module, imported here (the one place), TensorFlow's native start-up
    logs filtered when the CLI asked for it; a clear error when it does not import."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # Python-side TensorFlow logging
    try:
        with native_logs():
            import keras
    except ImportError as exc:
        raise EnvironmentMismatchError(
            f"Keras is needed to load or run the model and does not import here: {exc}",
            hint="install Keras with a backend (pip install 'kbundle[tensorflow-cpu]', or "
            "keras with jax or torch); 'kbundle unpack --no-load' only verifies and extracts",
        ) from exc
    return keras


def loads_unzipped_keras() -> bool:
    """True when ``keras.saving.load_model`` reads the unzipped ``.keras`` directory form
    (Keras 3 since ``save_model(..., zipped=False)`` exists; not Keras 2 or tf-keras)."""
    import inspect

    module = keras()
    return "zipped" in inspect.signature(module.saving.save_model).parameters


def is_keras_model(obj: object) -> bool:
    """True for a live ``keras.Model`` (without importing Keras when it is not loaded)."""
    import sys

    keras = sys.modules.get("keras")
    return keras is not None and isinstance(obj, keras.Model)


def save_model(model: Any, directory: Path) -> Path:
    """Save ``model`` as ``model.keras`` in ``directory`` and return the file's path."""
    path = directory / "model.keras"
    try:
        with native_logs():
            model.save(path)
    except Exception as exc:
        raise PackError(
            f"Keras could not save the model: {_first_line(exc)}",
            hint="make every custom layer serialisable (get_config) and register it with "
            "keras.saving.register_keras_serializable",
        ) from exc
    return path


def tensor_specs(tensors: Any) -> list[TensorSpec] | None:
    """Name, shape and dtype of each symbolic tensor in ``tensors`` (None: not a sequence)."""
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
                dtype=str(getattr(tensor, "dtype", None))
                if getattr(tensor, "dtype", None)
                else None,
            )
        )
    return specs


def _producer_name(tensor: Any) -> str | None:
    """The name of the layer that makes a symbolic tensor (Keras 3 and tf.keras)."""
    history = getattr(tensor, "_keras_history", None)
    producer = getattr(history, "operation", None) or getattr(history, "layer", None)
    name = getattr(producer, "name", None)
    return name if isinstance(name, str) else None


def input_structure(model: Any) -> Any:
    """The structure ``model`` takes its inputs in, leaves symbolic tensors with shape and
    dtype; ``None`` when Keras cannot tell.

    A functional model (Keras 3 or tf-keras) declares it (``model.input``: a dict by input
    name, nested lists as declared); a Sequential model takes its one input; a subclassed
    model that has been called knows the shapes it was built for (``get_build_config()``,
    saved with it and restored at load), its inputs taken in the model's input dtype.
    ``keras.tree.flatten`` of the structure is the order of ``model.inputs`` (dict keys
    sorted): the order the probe stores its arrays in.
    """
    module = keras()
    for attribute in ("input", "inputs"):
        try:
            structure = getattr(model, attribute)
        except (AttributeError, ValueError):  # never called symbolically
            continue
        if attribute == "inputs" and isinstance(structure, list | tuple) and len(structure) == 1:
            structure = structure[0]
        if structure is not None and (not isinstance(structure, list | tuple) or structure):
            return structure
    try:
        build = model.get_build_config() or {}
    except (AttributeError, TypeError, ValueError):
        return None
    shapes = build.get("input_shape") if set(build) == {"input_shape"} else None
    if shapes is None:
        return None  # never built, or built from several call arguments
    dtype = str(getattr(model, "input_dtype", None) or "float32")
    try:
        return module.tree.map_shape_structure(
            lambda shape: module.KerasTensor(tuple(shape), dtype=dtype), shapes
        )
    except (TypeError, ValueError):
        return None


def weight_bytes(model: Any) -> int:
    """The bytes of ``model``'s weights (what saving it writes, about)."""
    import numpy as np

    total = 0
    for variable in model.weights:
        try:
            itemsize = np.dtype(str(variable.dtype)).itemsize
        except TypeError:  # bfloat16 and other types numpy does not name
            itemsize = 4
        total += int(np.prod(variable.shape)) * itemsize
    return total


def describe_live_model(model: Any) -> dict[str, Any]:
    """Class, name, inputs, outputs and parameter count of a live model."""
    try:
        inputs = tensor_specs(model.inputs)
        outputs = tensor_specs(model.outputs)
    except (AttributeError, ValueError):  # a subclassed model that was never called
        inputs = outputs = None
    # An output tensor's own name is generated ("keras_tensor_7"); the layer that makes it
    # names it for the user, as Keras's output_names does (a Sequential has none).
    names = getattr(model, "output_names", None)
    if not isinstance(names, list | tuple):
        names = [_producer_name(tensor) for tensor in model.outputs] if outputs else None
    if outputs and names and len(names) == len(outputs):
        outputs = [
            replace(spec, name=str(name)) if name else spec
            for spec, name in zip(outputs, names, strict=True)
        ]
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
    fmt: str | None = None,
    custom_objects: dict[str, Any] | None = None,
    safe_mode: bool = True,
    compile: bool = True,
) -> Any:
    """Load a verified model file or directory; ``fmt`` as in ``manifest.model.format``.

    Returns what :func:`load_model_file` documents per format (``.model`` of its result).
    """
    return load_model_file(
        path, fmt=fmt, custom_objects=custom_objects, safe_mode=safe_mode, compile=compile
    ).model


# --------------------------------------------------------------------------------------------
# Loading each format (docs/model-formats.md says what each returns)


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A loaded model, which loader produced it (``keras``, ``tf-keras``, ``TFSMLayer``), and
    why a fallback was taken (``note``)."""

    model: Any
    loader: str
    note: str | None = None


def load_model_file(
    path: Path,
    *,
    fmt: str | None = None,
    custom_objects: dict[str, Any] | None = None,
    safe_mode: bool = True,
    compile: bool = True,
) -> LoadedModel:
    """Load a model file with the loader its format needs.

    * ``.keras`` (zip or directory) and ``.h5``: ``keras.saving.load_model`` -> ``keras.Model``.
      A file written by Keras 2 that Keras 3 cannot read is loaded with tf-keras when it is
      installed (a ``tf_keras.Model``); a clear :class:`ModelLoadError` when neither can.
    * SavedModel: ``keras.layers.TFSMLayer`` bound to the ``serve`` signature
      (``model.export``), else ``serving_default`` (``tf.saved_model.save``, tf-keras), else
      the only signature there is. Needs the TensorFlow backend.
    """
    from kbundle.models.formats import identify_format

    fmt = fmt or identify_format(path)
    with native_logs():
        if fmt == "savedmodel":
            return _load_saved_model(path)
        module = keras()
        try:
            model = module.saving.load_model(
                path, custom_objects=custom_objects, compile=compile, safe_mode=safe_mode
            )
        except (KeyboardInterrupt, GeneratorExit):
            raise
        except BaseException as exc:  # custom code runs inside; SystemExit is its failure too
            if not isinstance(exc, Exception):
                raise ModelLoadError(_load_message(exc), hint=_load_hint(exc)) from exc
            return _load_keras2_fallback(path, fmt, exc, custom_objects, safe_mode, compile)
    return LoadedModel(model, "keras")


def _load_keras2_fallback(
    path: Path,
    fmt: str,
    keras3_error: Exception,
    custom_objects: dict[str, Any] | None,
    safe_mode: bool,
    compile: bool,
) -> LoadedModel:
    """Keras 3 failed: try tf-keras when the file says Keras 2 wrote it, else explain."""
    from kbundle.models.formats import keras_major, model_saved_by, read_model_config
    from kbundle.models.references import marshalled_code

    saved_by = model_saved_by(path, fmt)
    if fmt not in ("keras", "h5") or keras_major(saved_by) != 2 or "safe_mode" in str(keras3_error):
        raise ModelLoadError(
            _load_message(keras3_error), hint=_load_hint(keras3_error)
        ) from keras3_error
    written = f"written by Keras {saved_by['keras_version']}"
    if safe_mode and marshalled_code(read_model_config(path, fmt) or {}):
        # tf-keras ignores safe_mode for .h5 files: it would unmarshal the Lambda's bytecode.
        raise ModelLoadError(
            f"this model was {written}; Keras 3 cannot load it "
            f"({first_sentence(str(keras3_error))}) and "
            "tf-keras would run its Lambda layer's Python bytecode, which safe mode forbids",
            hint="if you trust the file, load it with --unsafe-lambda (safe_mode=False)",
        ) from keras3_error
    try:
        import tf_keras
    except ImportError:
        raise ModelLoadError(
            f"this model was {written} and Keras 3 cannot load it: "
            f"{first_sentence(str(keras3_error))}; "
            "tf-keras (Keras 2) is not installed",
            hint=f"install tf-keras to load Keras 2 files: {_tf_keras_requirement()}",
        ) from keras3_error
    if fmt == "keras":
        _require_tf_keras_functions(tf_keras, read_model_config(path, fmt) or {}, custom_objects)
    try:
        model = tf_keras.models.load_model(
            path, custom_objects=custom_objects, compile=compile, safe_mode=safe_mode
        )
    except (KeyboardInterrupt, GeneratorExit):
        raise
    except BaseException as exc:
        raise ModelLoadError(
            f"this model was {written}; neither Keras 3 ({type(keras3_error).__name__}: "
            f"{first_sentence(str(keras3_error))}) nor tf-keras ({type(exc).__name__}: "
            f"{first_sentence(str(exc))}) "
            "could load it",
            hint=_load_hint(exc),
        ) from exc
    note = (
        f"Keras 3 could not load this Keras 2 file ({first_sentence(str(keras3_error))}); "
        "loaded with tf-keras"
    )
    return LoadedModel(model, "tf-keras", note)


# Where tf-keras looks up a function a .keras config records under module "builtins" before
# it falls back to Python's builtins module itself (tf_keras serialization_lib).
_TF_KERAS_FUNCTION_MODULES = (
    "activations",
    "constraints",
    "initializers",
    "losses",
    "metrics",
    "optimizers",
    "regularizers",
)


def _require_tf_keras_functions(
    tf_keras: Any, config: Any, custom_objects: dict[str, Any] | None
) -> None:
    """Refuse a ``.keras`` config naming a ``builtins`` function that neither the load's custom
    objects, tf-keras's registry nor its built-in modules define: tf-keras would hand Python's
    own (``eval``, ``exit``, ``breakpoint``) to the model."""
    from kbundle.errors import UntrustedCodeError
    from kbundle.models.references import object_references

    given = custom_objects or {}
    for reference in object_references(config):
        name = reference.name
        if reference.kind != "function" or reference.module != "builtins":
            continue
        if any(key.endswith(name) for key in given):
            continue  # tf-keras takes a custom object first
        if tf_keras.saving.get_registered_object(name) is not None:
            continue
        if not any(
            callable(getattr(getattr(tf_keras, where, None), name, None))
            for where in _TF_KERAS_FUNCTION_MODULES
        ):
            raise UntrustedCodeError(
                f"the model's config names function {name!r} of module builtins, which "
                "tf-keras does not define: it would hand Python's own built-in to the model",
                hint="the file was not written by tf-keras; do not load it",
            )


def _tf_keras_requirement() -> str:
    """The tf-keras release matching the installed TensorFlow (tf-keras versions track it)."""
    from kbundle.env.capture import TENSORFLOW_DISTRIBUTIONS
    from kbundle.env.distributions import version

    for distribution in TENSORFLOW_DISTRIBUTIONS:
        installed = version(distribution)
        if installed is None:
            continue
        major_minor = ".".join(installed.split(".")[:2])
        return f"pip install 'tf-keras=={major_minor}.*' (add --no-deps with {distribution})"
    return "pip install tf-keras"


def _load_saved_model(path: Path) -> LoadedModel:
    from kbundle.models.formats import read_saved_model, serving_endpoint

    info = read_saved_model(path)
    endpoint = serving_endpoint(info)
    if endpoint is None:
        raise ModelLoadError(
            f"the SavedModel has no serving signature to call (signatures: "
            f"{', '.join(info.signatures) or 'none'})",
            hint="unpack it with 'kbundle unpack --no-load' "
            "and use tf.saved_model.load() on the directory",
        )
    module = keras()
    if module.backend.backend() != "tensorflow":
        raise EnvironmentMismatchError(
            "a SavedModel loads only with the TensorFlow backend; "
            f"KERAS_BACKEND is {module.backend.backend()}",
            hint="set KERAS_BACKEND=tensorflow",
        )
    try:
        layer = module.layers.TFSMLayer(str(path), call_endpoint=endpoint)
    except Exception as exc:
        raise ModelLoadError(_load_message(exc), hint=_load_hint(exc)) from exc
    return LoadedModel(layer, "TFSMLayer", f"called through its {endpoint!r} signature")


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
        return (
            "a custom object is missing; pack it with the model or install the package defining it"
        )
    return "run 'kbundle doctor' on the bundle for a diagnosis"
