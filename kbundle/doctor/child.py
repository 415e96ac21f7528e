"""The child process of ``kbundle doctor``: the steps that may crash, hang or need Keras.

Run as ``python -I -c BOOTSTRAP ROOT FORMAT PATH LABEL TRUST`` by kbundle.doctor.diagnose (TRUST is
``trusted`` or ``untrusted``). It checks the file (h5py can crash on a malformed HDF5 file),
describes it, resolves every class and function its config names against this environment's
Keras, and finally attempts the real load with safe mode on and no custom objects; a
SavedModel only when trusted, because loading one runs its graph. Nothing named by the file
is imported except Keras's own modules (through kbundle.code.gate); bundled code never is.

Protocol: one JSON object per line on the original stdout, written as each stage starts and
ends, so the parent knows how far the child got if it dies. Anything else the libraries print
is sent to stderr. This is the Keras side of doctor (it imports Keras); the parent,
``kbundle.doctor.diagnose``, does not. Stable: internal; the protocol changes with kbundle.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import IO, Any

from kbundle.code.gate import ImportGate
from kbundle.code.sources import KERAS_ECOSYSTEM, find_spec, read_source, registered_classes
from kbundle.findings import Severity
from kbundle.models.checks import check_model_file
from kbundle.models.formats import describe_model_file, read_model_config
from kbundle.models.references import ObjectReference, marshalled_code, object_references

__all__ = ["KERAS2_ONLY_CLASSES", "main"]

BUNDLED_CODE_NEEDS_TRUST = (
    "the model needs the code the bundle carries ({}), and doctor runs it only when trusted"
)
BUNDLED_CODE_NEEDS_FILE = (
    "the model needs the code the bundle carries ({}), which doctor loads from a bundle file "
    "only: download the bundle and run 'kbundle doctor' on the file"
)
SAVEDMODEL_NEEDS_TRUST = (
    "loading a SavedModel runs its graph (functions and resource initialisers can read and "
    "write files), and doctor runs it only when trusted"
)
# Layers Keras 2 (tf-keras) writes that Keras 3 does not have. TFOpLambda/SlicingOpLambda are
# made implicitly when a Keras 2 functional model calls a TensorFlow op on a Keras tensor.
KERAS2_ONLY_CLASSES = frozenset(
    {
        "TFOpLambda",
        "SlicingOpLambda",
        "LocallyConnected1D",
        "LocallyConnected2D",
        "DenseFeatures",
        "ThresholdedReLU",
    }
)
# Module prefixes that exist only in Keras 2: its engine package and tf-keras itself.
KERAS2_MODULE_PREFIXES = ("keras.engine", "keras.src.engine", "keras.layers.core", "tf_keras")
# Where Keras 3 keeps what a config may name, searched for names without a usable module.
_CLASS_NAMESPACES = (
    "keras.layers",
    "keras.models",
    "keras.initializers",
    "keras.regularizers",
    "keras.constraints",
    "keras.losses",
    "keras.metrics",
    "keras.optimizers",
    "keras.optimizers.schedules",
    "keras.dtype_policies",
    "keras",
)
_FUNCTION_NAMESPACES = (
    "keras.activations",
    "keras.losses",
    "keras.metrics",
    "keras.initializers",
    "keras.regularizers",
    "keras.constraints",
    "keras.ops",
)
# Keras 2 model classes Keras 3 reads under other names.
_MODEL_ALIASES = frozenset({"Functional", "Model", "Sequential"})


def _emit(out: IO[str], **record: Any) -> None:
    out.write(json.dumps(record, default=str) + "\n")
    out.flush()


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    fmt, path_text, label, trust = args[:4]
    bundle, carried = (args[4], args[5]) if len(args) >= 6 else ("-", "")
    path = Path(path_text)
    # Keep the protocol on the real stdout; everything libraries print goes to stderr.
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    _emit(out, stage="preload", started=True)
    findings = check_model_file(path, fmt, label=label)
    _emit(out, stage="preload", findings=[f.to_dict() for f in findings])
    if any(f.severity >= Severity.ERROR for f in findings):
        return 0  # a corrupt or hostile file is never handed to Keras

    description = describe_model_file(path, fmt)
    config = (
        read_model_config(path, fmt)
        if fmt != "savedmodel" or description.get("class_name")
        else None
    )
    _emit(
        out,
        stage="describe",
        saved_by=description.get("saved_by", {}),
        class_name=description.get("class_name"),
        # An HDF5 file without a model config: what save_weights writes (Keras 2 and 3).
        weights_only=fmt == "h5" and not config,
    )

    _emit(out, stage="resolve", started=True)
    from kbundle.models import keras_io

    keras = keras_io.keras()

    references = object_references(config) if config and fmt != "savedmodel" else []
    unresolved = [item for ref in references if (item := _unresolved(keras, ref)) is not None]
    _emit(
        out,
        stage="resolve",
        keras_version=keras.__version__,
        backend=keras.backend.backend(),
        unresolved=unresolved,
        lambdas=marshalled_code(config) if config and fmt != "savedmodel" else [],
    )

    if fmt == "savedmodel" and trust != "trusted":
        # Loading a SavedModel runs its graph: resource initialisers and functions that can
        # read and write files (THREATS row 19).
        _emit(out, stage="load", skipped=SAVEDMODEL_NEEDS_TRUST)
        return 0
    if carried and trust != "trusted":
        _emit(out, stage="load", skipped=BUNDLED_CODE_NEEDS_TRUST.format(carried))
        return 0
    if carried and bundle == "-":  # read from a URL or standard input: no file to load
        _emit(out, stage="load", skipped=BUNDLED_CODE_NEEDS_FILE.format(carried))
        return 0
    _emit(out, stage="load", started=True)
    try:
        if carried:  # trusted: load as kbundle.load does, the bundle's own code included
            loaded = _load_trusted_bundle(Path(bundle))
        else:
            loaded = keras_io.load_model_file(path, fmt=fmt, safe_mode=True, compile=True)
    except Exception as exc:
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        _emit(
            out,
            stage="load",
            ok=False,
            error_type=type(cause).__name__,
            # Keras wraps the real cause of a failed deserialization after this phrase.
            error=" ".join(str(cause).rsplit("Exception encountered:", 1)[-1].split())[:2000],
            message=getattr(exc, "message", str(exc)),
            hint=getattr(exc, "hint", None),
            loads_uncompiled=fmt != "savedmodel" and _loads_uncompiled(keras_io, path, fmt),
        )
        return 0
    _emit(
        out,
        stage="load",
        ok=True,
        loader=loaded.loader,
        note=loaded.note,
        class_name=type(loaded.model).__name__,
    )
    return 0


def _load_trusted_bundle(bundle: Path) -> Any:
    """Load ``bundle`` the way ``kbundle.load(..., trust_code=True)`` does (its bundled code
    imported and unpickled), without the environment gate or the probe: doctor reports
    those itself."""
    from kbundle.models.keras_io import LoadedModel
    from kbundle.pipelines.load import load

    model = load(bundle, trust_code=True, ignore_env=True, probe=False)
    return LoadedModel(model, "kbundle.load", "with the bundle's own code (trusted)")


def _loads_uncompiled(keras_io: Any, path: Path, fmt: str) -> bool:
    """Whether the model loads without its training config (loss, metrics, optimizer): then
    only that config is what failed, and ``compile=False`` is the way to load it."""
    try:
        keras_io.load_model_file(path, fmt=fmt, safe_mode=True, compile=False)
    except Exception:
        return False
    return True


# --------------------------------------------------------------------------------------------
# Resolving what a config names, without importing anything but Keras's own modules


def _unresolved(keras: Any, ref: ObjectReference) -> dict[str, Any] | None:
    """``None`` when Keras here can construct ``ref``; otherwise the evidence why not."""
    for key in (ref.registered_name, ref.name):
        if key and key != "function" and keras.saving.get_registered_object(key) is not None:
            return None
    module = ref.module
    keras2_only = ref.name in KERAS2_ONLY_CLASSES or bool(
        module and module.startswith(KERAS2_MODULE_PREFIXES)
    )
    from_keras = module is not None and module.split(".")[0] in KERAS_ECOSYSTEM
    if not keras2_only and from_keras and _attribute(str(module), ref.name) is not None:
        return None
    if (
        not keras2_only
        and (module in (None, "builtins") or from_keras)
        and _in_namespaces(keras, ref)
    ):
        return None
    status = _module_status(module)
    defined = _defined_in(str(module)) if status == "installed" and not from_keras else {}
    return {
        "name": ref.name,
        "kind": ref.kind,
        "module": module,
        "registered_name": ref.registered_name,
        "location": ref.location,
        "keras2_only": keras2_only,
        "keras_own": from_keras and not keras2_only,
        "module_status": status,
        "defined": defined,
        "similar": _similar(keras, ref, defined, str(module)),
    }


def _defined_in(module: str) -> dict[str, str | None]:
    """The classes ``module``'s source defines at its top level, with the name each registers
    with Keras: read from the file, never imported (importing it would run it)."""
    spec = find_spec(module)
    origin = getattr(spec, "origin", None)
    if not origin or not origin.endswith(".py"):
        return {}
    source = read_source(Path(origin))
    return registered_classes(source) if source is not None else {}


# Doctor is given no trust: it imports only what Keras's safe-mode deserialiser would.
_GATE = ImportGate()


def _attribute(module: str, name: str) -> Any:
    """``module.name`` when the gate lets ``module`` be imported and it imports; else None."""
    if not _GATE.verdict(module).allowed:
        return None
    try:
        return getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None


def _in_namespaces(keras: Any, ref: ObjectReference) -> bool:
    if ref.kind == "class" and ref.name in _MODEL_ALIASES:
        return True
    if ref.kind == "function":
        try:
            keras.activations.get(ref.name)
        except (ValueError, TypeError):
            pass
        else:
            return True
    namespaces = _FUNCTION_NAMESPACES if ref.kind == "function" else _CLASS_NAMESPACES
    return any(_attribute(namespace, ref.name) is not None for namespace in namespaces)


def _module_status(module: str | None) -> str:
    """``installed``, ``missing``, ``main`` (the training script) or ``none``; never imports."""
    if not module or module == "builtins":
        return "none"
    if module == "__main__":
        return "main"
    top = module.split(".")[0]
    try:
        return "installed" if importlib.util.find_spec(top) is not None else "missing"
    except (ImportError, ValueError):
        return "missing"


# How close a name in the module a config names must be to count as "similarly named": a
# class renamed with a suffix (Foo -> FooV2: 0.75) is, an unrelated one (Foo -> Bar) is not.
_SIMILAR_IN_MODULE = 0.6


def _similar(
    keras: Any, ref: ObjectReference, defined: dict[str, str | None], module: str
) -> list[str]:
    """Importable objects whose names are close to ``ref``'s (a rename, a typo, a package):
    classes its own module now defines (read, not imported) first, then Keras's."""
    wanted = (ref.registered_name or ref.name).split(">")[-1]
    nearby = [
        f"{module}.{name}" + (f" (registered as {defined[name]!r})" if defined[name] else "")
        for name in difflib.get_close_matches(
            wanted, [n for n in defined if n != ref.name], n=3, cutoff=_SIMILAR_IN_MODULE
        )
    ]
    candidates: dict[str, str] = {}
    for namespace in _FUNCTION_NAMESPACES if ref.kind == "function" else _CLASS_NAMESPACES:
        try:
            keras_module = importlib.import_module(namespace)  # Keras's own, fixed above
        except ImportError:
            continue
        for name in dir(keras_module):
            if not name.startswith("_"):
                candidates.setdefault(name, f"{namespace}.{name}")
    for registered in keras.saving.get_custom_objects():
        candidates.setdefault(registered.split(">")[-1], f"registered as {registered!r}")
    return nearby + [
        candidates[name]
        for name in difflib.get_close_matches(wanted, list(candidates), n=3, cutoff=0.8)
    ]


if __name__ == "__main__":  # pragma: no cover - run by kbundle.doctor.diagnose
    sys.exit(main())
