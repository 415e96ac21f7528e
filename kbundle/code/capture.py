"""Custom objects at pack time: what a model needs that Keras does not provide, and how it travels.

The saved model's config is walked for every class and function that is not Keras's own
(layers, models, losses, metrics, activations, initializers, regularizers, constraints,
optimizers, schedules). Each is found among what the packing process already has (the
``custom_objects=`` given to pack, the Keras registry, imported modules, the live model, the
modules named with ``custom_modules``) and travels one way:

- ``builtin``: Keras's own ecosystem (``keras_hub``, ``keras_cv``, ``keras_nlp``), which
  Keras's safe-mode deserialiser imports itself: recorded with the distribution providing it
  (pinned in the requirements), found without importing it and without a flag;
- ``distribution``: defined in an installed distribution (a company's package);
  the distribution and its exact version are recorded, the code is not copied;
- ``source``: defined in local source; the defining module and every local module it
  imports (and their packages' ``__init__``) are copied under ``code/``;
- ``pickle``: defined where no importable source exists (a ``__main__`` script, a notebook,
  inside a function); cloudpickled by value under ``objects/``, with the definition's text
  in the manifest (``review_source``) for review when it can be read.

Anything that cannot be captured is one ``PackError`` listing every such object and what to
do. This is the Keras side of packing: it is imported lazily and imports Keras inside its
functions. Nothing from the model file is executed. Stable: internal.
"""

from __future__ import annotations

import importlib
import os
import pickletools
import platform
import re
import sys
import types
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kbundle.code.registry import registered_object
from kbundle.code.sources import (
    KERAS_ECOSYSTEM,
    KERAS_PACKAGES,
    ModuleOrigin,
    ModuleOrigins,
    definition_digest,
    imported_modules,
    live_definition,
    member_path,
    qualified_attribute,
    read_source,
    reserved_module,
)
from kbundle.container.manifest import CustomObject, PickleInfo, SourceFile
from kbundle.container.names import name_problem
from kbundle.container.writer import PayloadFile
from kbundle.errors import PackError, UsageError, exception_summary
from kbundle.findings import Finding
from kbundle.models.formats import read_model_config

__all__ = ["CollectedObjects", "collect_custom_objects", "import_modules", "project_modules"]

# Config keys that say what a function is for (a function entry records only its name).
_KIND_BY_KEY = {
    "activation": "activation",
    "recurrent_activation": "activation",
    "loss": "loss",
    "metrics": "metric",
    "weighted_metrics": "metric",
}
_KIND_BY_SUFFIX = (
    ("_initializer", "initializer"),
    ("_regularizer", "regularizer"),
    ("_constraint", "constraint"),
)

# The ``objects/`` file stem of a registered name: ``acme>Layer`` -> ``acme_Layer``. Only
# characters every file system accepts, so a bundle extracts anywhere.
_UNSAFE_STEM = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True, slots=True)
class Reference:
    """One class or function a model config names that Keras does not provide itself.

    ``name`` is the key Keras looks it up by (the registered name); ``module`` is what the
    config records: ``None`` for ``__main__`` (or a legacy config without modules).
    """

    name: str
    class_name: str
    module: str | None
    function: bool
    kind_hint: str | None = None
    legacy: bool = False
    ecosystem: bool = False  # a built-in of Keras's ecosystem (keras_hub, ...): no lookup


@dataclass(frozen=True, slots=True)
class CollectedObjects:
    """The manifest records and the payload files (under ``code/`` and ``objects/``)."""

    records: tuple[CustomObject, ...] = ()
    payload: tuple[PayloadFile, ...] = ()


# --------------------------------------------------------------------------------------------
# Reading the config


def config_references(config: Any) -> list[Reference]:
    """Every custom class or function named in a Keras config, in config order.

    Iterative, so a deeply nested config cannot exhaust the interpreter's stack. ``key`` is
    the nearest dict key above a node: it tells an activation from a loss.
    """
    found: list[Reference] = []
    pending: list[tuple[Any, str | None]] = [(config, None)]
    while pending:
        node, key = pending.pop()
        if isinstance(node, list):
            pending.extend((item, key) for item in reversed(node))
            continue
        if not isinstance(node, dict):
            continue
        class_name = node.get("class_name")
        if isinstance(class_name, str) and "config" in node:
            if class_name.startswith("__") and class_name.endswith("__"):
                continue  # tensors, lambdas (safe_mode's business), slices: no objects inside
            reference = _reference(node, class_name, key)
            if reference is not None:
                found.append(reference)
        pending.extend((value, child_key) for child_key, value in reversed(list(node.items())))
    return found


def _is_keras_module(module: Any) -> bool:
    """Keras's, TensorFlow's or the Keras ecosystem's (keras_hub, ...): never custom."""
    return isinstance(module, str) and module.split(".")[0] in KERAS_PACKAGES | KERAS_ECOSYSTEM


def _kind_from_key(key: str | None) -> str | None:
    if key is None:
        return None
    if key in _KIND_BY_KEY:
        return _KIND_BY_KEY[key]
    return next((kind for suffix, kind in _KIND_BY_SUFFIX if key.endswith(suffix)), None)


def _reference(node: dict[str, Any], class_name: str, key: str | None) -> Reference | None:
    module = node.get("module")
    if isinstance(module, str) and module.split(".")[0] in KERAS_PACKAGES:
        return None
    if _is_keras_module(module):  # keras_hub and the like: recorded, never looked up
        registered = node.get("registered_name") or class_name
        function = class_name == "function"
        name = node.get("config") if function else registered
        if not isinstance(name, str):
            return None
        return Reference(
            name,
            name if function else class_name,
            str(module),
            function=function,
            kind_hint=_kind_from_key(key),
            ecosystem=True,
        )
    if class_name == "function":
        name = node.get("config")
        if not isinstance(name, str):
            return None
        where = module if isinstance(module, str) and module != "builtins" else None
        return Reference(name, name, where, function=True, kind_hint=_kind_from_key(key))
    registered = node.get("registered_name") or class_name
    return Reference(
        str(registered),
        class_name,
        module if isinstance(module, str) else None,
        function=False,
        legacy="module" not in node,
    )


# --------------------------------------------------------------------------------------------
# Finding the objects


# Class names a legacy config may use for Keras's own models besides the public API's names.
_LEGACY_MODEL_NAMES = frozenset({"Functional", "Sequential", "Model"})


def _keras_builtin(name: str, *, function: bool) -> bool:
    """Whether Keras itself provides a function (or, for legacy configs, a class) of this name."""
    from kbundle.models.keras_io import keras as keras_module

    keras = keras_module()

    modules = [
        keras.activations,
        keras.losses,
        keras.metrics,
        keras.initializers,
        keras.regularizers,
        keras.constraints,
    ]
    if not function:
        if name in _LEGACY_MODEL_NAMES:
            return True
        modules += [keras.layers, keras.optimizers, keras.optimizers.schedules]
    return any(callable(getattr(module, name, None)) for module in modules)


class _Resolver:
    """Finds the object behind each reference; records why when it cannot.

    A name without a module (a function; a class in a legacy config) is looked for only
    where the user put it: the live model's own layers, the modules named for the purpose
    (``custom_modules``) and ``__main__`` — never in unrelated modules that happen to define
    the same name.
    """

    def __init__(
        self, given: Mapping[str, Any], capture: _Capture, model: Any, modules: Sequence[str]
    ) -> None:
        self.given = given
        self.problem = capture.problem
        self.live = _live_objects(model)
        self.modules = ["__main__", *modules]

    def __call__(self, ref: Reference) -> Any:
        for key in (ref.name, ref.class_name):
            if key in self.given:
                return self.given[key]
        if ref.legacy and "keras" not in sys.modules:
            # No Keras class can have been defined or registered in this process, so nothing
            # of this name can be found; and Keras (seconds to import) is not needed.
            return None
        found = registered_object(ref.name)
        if found is not None:
            return found
        if ref.function or ref.legacy:
            return self._by_name_only(ref)
        holder = sys.modules.get(ref.module or "__main__")
        found = qualified_attribute(holder, ref.class_name)
        if isinstance(found, type):
            return found
        live = [
            c
            for c in self.live.get(ref.class_name, ())
            if c.__module__ == (ref.module or "__main__")
        ]
        if len(live) == 1:  # a class the live model uses but no module holds by name
            return live[0]
        self._missing_class(ref)
        return None

    def _by_name_only(self, ref: Reference) -> Any:
        """A function (Keras records only its name), or a class in a legacy config (no module):
        Keras's own, or the one definition of that name where the user put it."""
        if ref.module is not None:
            found = qualified_attribute(sys.modules.get(ref.module), ref.name)
            if callable(found):
                return found
        elif _keras_builtin(ref.class_name, function=ref.function):
            return None
        what = "function" if ref.function else "class"
        wanted = types.FunctionType if ref.function else type
        candidates = {
            f"{o.__module__}.{o.__qualname__}": o
            for o in self.live.get(ref.name, ())
            if isinstance(o, wanted)
        }
        if not candidates:
            candidates = {
                f"{obj.__module__}.{obj.__qualname__}": obj
                for module_name in self.modules
                for obj in [
                    getattr(sys.modules.get(module_name), "__dict__", {}).get(ref.class_name)
                ]
                if isinstance(obj, wanted)
            }
        if len(candidates) == 1:
            return next(iter(candidates.values()))
        if not candidates and ref.legacy:
            # A legacy config may name a class of another Keras version (Keras 2's
            # TFOpLambda): not provably custom, so it is left to Keras and 'kbundle doctor'.
            return None
        python_name = ref.class_name.rpartition(">")[2]  # registered names are package>name
        hint = (
            f"pass it with custom_objects={{{ref.name!r}: {python_name}}} (CLI: --custom-objects "
            "MODULE), or register it with @keras.saving.register_keras_serializable()"
        )
        if candidates:
            self.problem(
                ref.name,
                f"{what} {ref.class_name!r} is defined in several places: "
                f"{', '.join(sorted(candidates))}",
                hint,
            )
        else:
            self.problem(
                ref.name,
                f"{what} {ref.class_name!r} is not Keras's, not registered, "
                "and not found in the model or the modules named for it",
                hint,
            )
        return None

    def _missing_class(self, ref: Reference) -> None:
        if ref.module is None:
            self.problem(
                ref.name,
                f"class {ref.class_name!r} comes from a __main__ module (a script or notebook) "
                "but is not a top-level name of the running one",
                "pack the live model where the class is defined (kbundle.pack(model, ...), "
                f"or with custom_objects={{{ref.name!r}: {ref.class_name}}}): "
                "it travels as a pickle; or move it into a module and pass --custom-objects MODULE",
            )
            return
        self.problem(
            ref.name,
            f"class {ref.class_name!r} (module {ref.module}) is not defined in the packing process",
            f"import it (kbundle pack --custom-objects {ref.module}) or pass it with "
            f"custom_objects={{{ref.name!r}: {ref.class_name}}}; pack imports a module by itself "
            "only when it is a file under the current directory or a PYTHONPATH entry",
        )


# A model's layers and their attributes are a few thousand objects; the walk stops far
# beyond that, so an unusual object graph cannot make packing crawl.
_MAX_LIVE_OBJECTS = 200_000


def _live_objects(model: Any) -> dict[str, list[Any]]:
    """The custom classes and plain functions a live model holds (its layers' classes,
    activations, losses and metrics), by name: found by walking its Keras objects'
    attributes, never by running anything."""
    if model is None:
        return {}
    from kbundle.models.keras_io import keras as keras_module

    keras = keras_module()

    containers = (
        keras.layers.Layer,
        keras.losses.Loss,
        keras.metrics.Metric,
        keras.optimizers.Optimizer,
        keras.optimizers.schedules.LearningRateSchedule,
        keras.initializers.Initializer,
        keras.regularizers.Regularizer,
        keras.constraints.Constraint,
    )
    found: dict[str, dict[int, Any]] = {}
    seen: set[int] = set()
    pending: list[Any] = [model]
    while pending and len(seen) < _MAX_LIVE_OBJECTS:
        obj = pending.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, types.FunctionType):
            if not _is_keras_module(obj.__module__):
                found.setdefault(obj.__name__, {})[id(obj)] = obj
        elif isinstance(obj, list | tuple | set | frozenset):
            pending.extend(obj)
        elif isinstance(obj, dict):
            pending.extend(obj.values())
        elif isinstance(obj, containers) or (
            _is_keras_module(type(obj).__module__) and not isinstance(obj, keras.Variable)
        ):
            if not _is_keras_module(type(obj).__module__):
                found.setdefault(type(obj).__name__, {})[id(type(obj))] = type(obj)
            pending.extend(getattr(obj, "__dict__", {}).values())
    return {name: list(objects.values()) for name, objects in found.items()}


def _kind(obj: Any, hint: str | None) -> str:
    if not isinstance(obj, type):
        return hint or "function"
    from kbundle.models.keras_io import keras as keras_module

    keras = keras_module()

    bases = (
        (keras.Model, "model"),
        (keras.layers.Layer, "layer"),
        (keras.losses.Loss, "loss"),
        (keras.metrics.Metric, "metric"),
        (keras.optimizers.schedules.LearningRateSchedule, "schedule"),
        (keras.optimizers.Optimizer, "optimizer"),
        (keras.initializers.Initializer, "initializer"),
        (keras.regularizers.Regularizer, "regularizer"),
        (keras.constraints.Constraint, "constraint"),
    )
    return next((kind for base, kind in bases if issubclass(obj, base)), "class")


# --------------------------------------------------------------------------------------------
# How each object travels


@dataclass(slots=True)
class _Needs:
    """What one object's code needs: bundled sources, and installed modules it imports."""

    sources: list[SourceFile] = field(default_factory=list)
    imports: set[str] = field(default_factory=set)
    distributions: dict[str, str] = field(default_factory=dict)

    def add_external(self, name: str, origin: ModuleOrigin) -> None:
        if origin.kind in ("distribution", "installed"):
            self.imports.add(name.split(".")[0])
        if origin.distribution is not None:
            self.distributions[origin.distribution[0]] = origin.distribution[1]

    def fields(self) -> dict[str, Any]:
        return {
            "sources": self.sources,
            "imports": sorted(self.imports),
            "distributions": dict(sorted(self.distributions.items())),
        }


@dataclass(slots=True)
class _Capture:
    """The state of one collection: origins, problems, files written so far."""

    scratch: Path
    origins: ModuleOrigins
    problems: list[Finding] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)
    stems: set[str] = field(default_factory=set)

    def problem(self, name: str, problem: str, fix: str) -> None:
        self.problems.append(Finding(location=f"custom object {name}", problem=problem, fix=fix))

    def write(self, member: str, data: bytes) -> None:
        if member not in self.files:
            target = self.scratch / member
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            self.files[member] = target

    def local_sources(self, start: Sequence[str], owner: str) -> _Needs:
        """The local modules ``start`` needs (transitively, with parent packages), copied
        under ``code/``; and the other modules they import, with their distributions."""
        needs = _Needs()
        sources: dict[str, SourceFile] = {}
        pending = list(start)
        seen: set[str] = set()
        while pending:
            name = pending.pop()
            if name in seen or name == "__main__":
                continue
            seen.add(name)
            origin = self.origins(name)
            parent = name.rpartition(".")[0]
            if parent:
                pending.append(parent)
            if origin.kind == "local" and reserved_module(name):
                continue  # never served from a bundle, so never copied (kbundle from a checkout)
            if origin.kind == "local" and origin.file is not None:
                source = self._copy_module(name, origin, owner)
                if source is not None:
                    sources[name] = source
                    text = read_source(self.files[source.path]) or ""  # the bytes bundled
                    pending.extend(imported_modules(text, name, is_package=origin.is_package))
            elif origin.kind == "compiled":
                self.problem(
                    owner,
                    f"needs {name}, a compiled module ({origin.file}) "
                    "that no installed distribution provides",
                    "kbundle carries Python source only: "
                    "install that module as a distribution, or make it pure Python",
                )
            else:
                needs.add_external(name, origin)
        needs.sources = [sources[name] for name in sorted(sources)]
        return needs

    def _copy_module(self, name: str, origin: ModuleOrigin, owner: str) -> SourceFile | None:
        assert origin.file is not None
        path = member_path(name, is_package=origin.is_package)
        bad_name = next((part for part in name.split(".") if not part.isidentifier()), None)
        problem = (
            f"module name part {bad_name!r} is not an identifier"
            if bad_name
            else name_problem(path)
        )
        if problem:
            self.problem(
                owner, f"module {name} cannot travel as {path}: {problem}", "rename the module"
            )
            return None
        try:
            self.write(path, origin.file.read_bytes())
        except OSError as exc:
            self.problem(
                owner, f"cannot read {origin.file}: {exc.strerror}", "check the file's permissions"
            )
            return None
        return SourceFile(module=name, path=path)

    def stem(self, name: str) -> str:
        base = _UNSAFE_STEM.sub("_", name).strip(".") or "object"
        stem, count = base, 1
        while stem.casefold() in self.stems:
            count += 1
            stem = f"{base}_{count}"
        self.stems.add(stem.casefold())
        return stem


def _travel(name: str, obj: Any, kind: str, capture: _Capture) -> CustomObject | None:
    module_name = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not isinstance(obj, type | types.FunctionType) or not module_name or not qualname:
        capture.problem(
            name,
            f"is a {type(obj).__name__}, not a class or function",
            "pass classes and functions in custom_objects, not instances",
        )
        return None
    common: dict[str, Any] = {
        "name": name,
        "kind": kind,
        "module": module_name,
        "qualname": qualname,
    }
    text = live_definition(obj)
    if text is not None:
        common["source_digest"] = definition_digest(text)
    if _is_keras_module(module_name):
        distributions = _ecosystem_distribution(module_name, capture)
        return CustomObject(transport="builtin", distributions=distributions, **common)
    importable = (
        module_name != "__main__"
        and qualified_attribute(sys.modules.get(module_name), qualname) is obj
    )
    origin = capture.origins(module_name) if importable else None
    if origin is not None and origin.kind == "distribution" and origin.distribution:
        dist, version = origin.distribution
        return CustomObject(
            transport="distribution",
            requirement=f"{dist}=={version}",
            distributions={dist: version},
            **common,
        )
    if origin is not None and origin.kind == "local":
        needs = capture.local_sources([module_name], name)
        return CustomObject(transport="source", **needs.fields(), **common)
    if origin is not None and origin.kind == "installed":
        capture.problem(
            name,
            f"is defined in {origin.file}, under the installation directories "
            "but listed by no installed distribution",
            "reinstall the package that provides it with pip, so that its version can be recorded",
        )
        return None
    if origin is not None and origin.kind == "compiled":
        capture.problem(
            name,
            f"is defined in {origin.file}, "
            "a compiled module that no installed distribution provides",
            "kbundle carries Python source only: "
            "install that module as a distribution, or make it pure Python",
        )
        return None
    return _pickled(obj, text, common, capture)


def _ecosystem_distribution(module: str, capture: _Capture) -> dict[str, str]:
    """``{distribution: version}`` of a Keras-ecosystem module (``keras_hub`` ->
    ``keras-hub``), found without importing it; empty for Keras's own or when not installed."""
    if module.split(".")[0] in KERAS_PACKAGES:
        return {}
    origin = capture.origins(module.split(".")[0])
    return dict([origin.distribution]) if origin.distribution else {}


def _builtin_record(ref: Reference, capture: _Capture) -> CustomObject:
    """The record of an object of Keras's ecosystem a config names (``keras_hub>Backbone``):
    what the config says, with the distribution providing it. Nothing is imported: Keras
    imports it itself when it loads the model."""
    assert ref.module is not None
    return CustomObject(
        name=ref.name,
        kind=ref.kind_hint or ("function" if ref.function else "class"),
        module=ref.module,
        qualname=ref.class_name.rpartition(">")[2],
        transport="builtin",
        distributions=_ecosystem_distribution(ref.module, capture),
    )


def _pickled(
    obj: Any, text: str | None, common: dict[str, Any], capture: _Capture
) -> CustomObject | None:
    name = common["name"]
    try:
        import cloudpickle
    except ImportError:
        capture.problem(
            name,
            f"is defined in {common['module']} where no source file can be had, "
            "so it must be cloudpickled, but cloudpickle is not installed",
            "pip install cloudpickle, or move the definition into a module of your project",
        )
        return None
    protocol = int(cloudpickle.DEFAULT_PROTOCOL)
    try:
        data = cloudpickle.dumps(obj, protocol=protocol)
    except Exception as exc:
        capture.problem(
            name,
            f"cannot be cloudpickled: {exception_summary(exc)}",
            "move the definition into a module of your project so that its source travels",
        )
        return None
    pickle_path = f"objects/{capture.stem(name)}.pkl"
    capture.write(pickle_path, data)
    referenced = [m for m in _pickled_strings(data) if m in sys.modules and m != "__main__"]
    needs = capture.local_sources(referenced, name)
    info = PickleInfo(
        path=pickle_path,
        python=platform.python_version(),
        protocol=protocol,
        cloudpickle=str(cloudpickle.__version__),
    )
    return CustomObject(
        transport="pickle", pickle=info, review_source=text, **needs.fields(), **common
    )


def _pickled_strings(data: bytes) -> Iterator[str]:
    """The strings in a pickle: the modules it imports by name are among them."""
    seen: set[str] = set()
    for _opcode, argument, _position in pickletools.genops(data):
        if isinstance(argument, str) and argument not in seen:
            seen.add(argument)
            yield argument


# --------------------------------------------------------------------------------------------
# Entry points


def collect_custom_objects(
    model_path: Path,
    fmt: str,
    *,
    custom_objects: Mapping[str, Any] | None,
    scratch: Path,
    model: Any = None,
    modules: Sequence[str] = (),
) -> CollectedObjects:
    """Find the model's custom objects and capture each; write their files under ``scratch``.

    Every object given in ``custom_objects`` travels, as do those the config names. A name
    the config records without its module is looked for in the live ``model`` (when packing
    one), in ``modules`` (imported with :func:`import_modules`) and in ``__main__``. Raises
    :class:`PackError` listing every object that cannot be found or captured.
    """
    given = dict(custom_objects or {})
    try:
        config = read_model_config(model_path, fmt) or {}
    except (OSError, ValueError, zipfile.BadZipFile):
        config = {}  # an unreadable config is the pre-load checks' finding, not ours
    references = config_references(config)
    if not references and not given:
        return CollectedObjects()  # nothing custom: Keras is not even imported
    capture = _Capture(scratch=scratch, origins=ModuleOrigins())
    resolve = _Resolver(given, capture, model, modules)
    wanted: dict[str, tuple[Any, str | None]] = {key: (obj, None) for key, obj in given.items()}
    resolved: set[str] = set()  # each name is looked up (and reported) once
    builtins: dict[str, CustomObject] = {}
    for ref in references:
        if ref.ecosystem:
            if ref.name not in given and ref.name not in builtins:
                builtins[ref.name] = _builtin_record(ref, capture)
            continue
        if ref.name in wanted and wanted[ref.name][1] is None:
            wanted[ref.name] = (wanted[ref.name][0], ref.kind_hint)
        if ref.name in wanted or ref.name in resolved:
            continue
        resolved.add(ref.name)
        obj = resolve(ref)
        if obj is not None and not _is_keras_module(getattr(obj, "__module__", None)):
            wanted[ref.name] = (obj, ref.kind_hint)
    records = []
    for name in sorted([*wanted, *builtins]):
        if name in builtins:
            records.append(builtins[name])
            continue
        obj, hint = wanted[name]
        record = _travel(name, obj, _kind(obj, hint), capture)
        if record is not None:
            records.append(record)
    if capture.problems:
        first = capture.problems[0]
        raise PackError.from_findings(
            capture.problems, f"cannot capture {first.location}: {first.problem}"
        )
    payload = tuple(
        PayloadFile(member, path, path.stat().st_size)
        for member, path in sorted(capture.files.items())
    )
    return CollectedObjects(tuple(records), payload)


def _project_path() -> None:
    """Put the current directory first on ``sys.path`` if it is not there, as ``python -m``
    does, so that a project's own modules import from where kbundle runs (the ``kbundle``
    script's ``sys.path`` does not hold it)."""
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        sys.path.insert(0, here)


def _project_roots() -> list[Path]:
    """The author's project tree: the current directory and every ``PYTHONPATH`` entry."""
    entries = [os.getcwd(), *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    return [Path(entry).resolve() for entry in entries if entry]


def project_modules(model_path: Path, fmt: str) -> list[str]:
    """The modules a model file's config names that are the author's own source: ``.py``
    files under the current directory or a ``PYTHONPATH`` entry, not yet imported. Packing
    imports them so that their ``@register_keras_serializable`` runs (the author's side, in
    the author's environment); a module of an installed distribution, the standard library
    or anywhere else is never imported for a model file."""
    try:
        config = read_model_config(model_path, fmt) or {}
    except (OSError, ValueError, zipfile.BadZipFile):
        return []
    _project_path()
    origins = ModuleOrigins()
    roots = _project_roots()
    found: list[str] = []
    for ref in config_references(config):
        module = ref.module
        if module is None or module in sys.modules or module in found:
            continue
        if "__main__" in module.split(".") or not all(p.isidentifier() for p in module.split(".")):
            continue
        origin = origins(module)
        if origin.kind != "local" or origin.file is None:
            continue
        if any(origin.file.is_relative_to(root) for root in roots):
            found.append(module)
    return found


def import_modules(names: Sequence[str]) -> None:
    """Import the modules that define (or register) a model file's custom objects, from the
    current directory or ``PYTHONPATH`` (see :func:`_project_path`)."""
    if not names:
        return
    _project_path()
    for name in names:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            raise UsageError(
                f"cannot import custom-objects module {name}: no module named {exc.name!r}",
                hint="run kbundle from the directory that contains it, "
                "or add that directory to PYTHONPATH",
            ) from None
        except Exception as exc:
            raise PackError(
                f"importing custom-objects module {name} failed: {exception_summary(exc)}",
                hint="fix the module so that it imports cleanly, then pack again",
            ) from exc
