"""Reading Python source without running it.

Where a module would be imported from (found through the path finders, never by importing
it) and whether it is project source, part of an installed distribution or the standard
library; which modules a source file imports (read from its syntax tree), and the text of one
class or function definition in a file (with its digest). Packing uses these to decide what
source travels with a model; loading uses them to compare a bundled definition with one the
loading environment already has, before any of either runs. Stable: internal.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.machinery
import importlib.util
import inspect
import linecache
import site
import sys
import sysconfig
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib.machinery import ModuleSpec
from pathlib import Path
from typing import Any

from kbundle.container.manifest import format_digest
from kbundle.env import distributions
from kbundle.env.distributions import canonical_name

__all__ = [
    "KERAS_ECOSYSTEM",
    "KERAS_PACKAGES",
    "ModuleOrigin",
    "ModuleOrigins",
    "definition_digest",
    "definition_source",
    "find_spec",
    "imported_modules",
    "live_definition",
    "member_path",
    "qualified_attribute",
    "read_source",
    "registered_classes",
    "reserved_module",
]


# Packages whose objects Keras resolves by itself: never custom objects, never bundled.
KERAS_PACKAGES = frozenset({"keras", "tf_keras", "tensorflow"})
# The packages Keras 3's safe-mode deserialiser itself imports a config's ``module`` from
# (keras.src.saving.serialization_lib): the ecosystem's own built-ins. Never bundled; their
# objects are recorded as built-ins, with the distribution that provides them.
KERAS_ECOSYSTEM = frozenset({"keras", "keras_hub", "keras_cv", "keras_nlp"})


def reserved_module(name: str) -> str | None:
    """Why a module of this name must never be served from a bundle (``None`` if it may):
    it would stand in for the standard library, Keras, TensorFlow or kbundle itself."""
    top = name.split(".")[0]
    if top in sys.stdlib_module_names:
        return "a standard-library module"
    if top in KERAS_PACKAGES or top in KERAS_ECOSYSTEM or top == "kbundle":
        return f"part of {top}"
    return None


def find_spec(name: str) -> ModuleSpec | None:
    """The spec ``name`` would be imported from, without executing any module.

    An already-imported module gives its own spec; otherwise ``sys.path`` (or the parent
    package's search locations) is searched with the path finder, which only looks at files.
    Finders installed on ``sys.meta_path`` by other tools are not consulted, because asking
    them may run code; such modules count as not found.
    """
    module = sys.modules.get(name)
    if module is not None:
        return getattr(module, "__spec__", None)
    parent, _, _ = name.rpartition(".")
    path: list[str] | None = None
    if parent:
        parent_spec = find_spec(parent)
        if parent_spec is None or parent_spec.submodule_search_locations is None:
            return None
        path = list(parent_spec.submodule_search_locations)
    try:
        return importlib.machinery.PathFinder.find_spec(name, path)
    except (ImportError, ValueError, OSError):
        return None


@dataclass(frozen=True, slots=True)
class ModuleOrigin:
    """Where a module comes from.

    ``kind`` is ``local`` (project source: a ``.py`` file outside every installation
    directory), ``distribution`` (a file an installed distribution's RECORD lists; its
    normalised name and version in ``distribution``), ``installed`` (under site-packages or
    the standard library directories but owned by no distribution), ``compiled`` (a local
    non-``.py`` file), ``namespace``, ``stdlib`` or ``missing``.
    """

    kind: str
    file: Path | None = None
    is_package: bool = False
    distribution: tuple[str, str] | None = None


# A distribution's install base, the files its RECORD lists (relative to it), its version.
_Record = tuple[Path, frozenset[str], str]


class ModuleOrigins:
    """Classifies modules without importing them; each module and each distribution's file
    list is looked at once per instance (one pack, one load)."""

    def __init__(self) -> None:
        self._cache: dict[str, ModuleOrigin] = {}
        self._owners: Mapping[str, list[str]] | None = None
        self._records: dict[str, _Record | None] = {}
        self._roots = _installed_roots()

    def __call__(self, name: str) -> ModuleOrigin:
        if name not in self._cache:
            self._cache[name] = self._classify(name)
        return self._cache[name]

    def _classify(self, name: str) -> ModuleOrigin:
        top = name.split(".")[0]
        if top in sys.stdlib_module_names or name in sys.builtin_module_names:
            return ModuleOrigin("stdlib")
        spec = find_spec(name)
        if spec is None:
            return ModuleOrigin("missing")
        if not spec.has_location or not spec.origin:
            kind = "namespace" if spec.submodule_search_locations is not None else "stdlib"
            return ModuleOrigin(kind)
        file = Path(spec.origin).resolve()
        is_package = spec.submodule_search_locations is not None
        owner = self._owner(top, file)
        if owner is not None:
            return ModuleOrigin("distribution", file, is_package, owner)
        if any(file.is_relative_to(root) for root in self._roots):
            return ModuleOrigin("installed", file, is_package)
        if file.suffix != ".py":
            return ModuleOrigin("compiled", file, is_package)
        return ModuleOrigin("local", file, is_package)

    def _owner(self, top: str, file: Path) -> tuple[str, str] | None:
        if self._owners is None:
            self._owners = distributions.packages_distributions()
        for dist_name in self._owners.get(top, []):
            if dist_name not in self._records:
                self._records[dist_name] = _record(dist_name)
            record = self._records[dist_name]
            if record is None:
                continue
            base, files, version = record
            if file.is_relative_to(base) and file.relative_to(base).as_posix() in files:
                return canonical_name(dist_name), version
        return None


def _record(dist_name: str) -> _Record | None:
    dist = distributions.find(dist_name)
    if dist is None:
        return None
    return dist.locate("").resolve(), dist.files(), dist.version


def _installed_roots() -> list[Path]:
    paths = sysconfig.get_paths()
    roots = {paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths}
    roots.update(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        roots.add(site.getusersitepackages())
    return [Path(root).resolve() for root in roots]


def read_source(path: Path) -> str | None:
    """A Python source file's text, decoded as Python decodes it (coding cookie, BOM)."""
    try:
        return importlib.util.decode_source(path.read_bytes())
    except (OSError, UnicodeDecodeError, SyntaxError):
        return None


def member_path(module: str, *, is_package: bool) -> str:
    """Where a module's source lives in a bundle: ``code/pkg/mod.py``, ``code/pkg/__init__.py``."""
    stem = "code/" + module.replace(".", "/")
    return f"{stem}/__init__.py" if is_package else f"{stem}.py"


def imported_modules(source: str, module: str, *, is_package: bool) -> set[str]:
    """Every module name the source may import, relative imports resolved.

    Imports anywhere in the file count (inside functions too: they run later, at call time).
    ``from a import b`` yields ``a`` and ``a.b``, because ``b`` may be a submodule; names that
    are not modules are simply not found later.
    """
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return set()
    package = module if is_package else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                names.update(_with_parents(alias.name))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                try:
                    base = importlib.util.resolve_name("." * node.level + base, package)
                except (ImportError, ValueError):
                    continue  # a relative import beyond the top-level package
            if not base:
                continue
            names.update(_with_parents(base))
            names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return names


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


_DEFINITIONS = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def definition_source(source: str, qualname: str) -> str | None:
    """The text of the definition of ``qualname`` in ``source``, decorators included.

    Follows ``Outer.Inner`` through nested classes; the last definition of a name wins, as it
    does when the module runs. ``None`` when the definition is not a plain top-level (or
    class-nested) statement, for example inside a function (``<locals>``) or an ``if``.
    """
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    body: list[ast.stmt] = tree.body
    node: ast.stmt | None = None
    for part in qualname.split("."):
        matches = [n for n in body if isinstance(n, _DEFINITIONS) and n.name == part]
        if not matches:
            return None
        node = matches[-1]
        body = node.body
    if node is None or node.end_lineno is None:
        return None
    assert isinstance(node, _DEFINITIONS)
    start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
    lines = source.splitlines(keepends=True)
    return "".join(lines[start - 1 : node.end_lineno])


# The decorator that registers a class with Keras (keras.saving.register_keras_serializable,
# keras.utils.register_keras_serializable in Keras 2), and the package it defaults to.
_REGISTER = "register_keras_serializable"
_DEFAULT_PACKAGE = "Custom"


def registered_classes(source: str) -> dict[str, str | None]:
    """The top-level classes a module's source defines, each with the name its
    ``@register_keras_serializable(package, name)`` decorator registers it under with Keras
    (``package>name``; ``None`` when it is not decorated so, or its arguments are not
    literals). Read from the syntax tree: nothing runs."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError):
        return {}
    found: dict[str, str | None] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            found[node.name] = next(
                (
                    name
                    for decorator in node.decorator_list
                    if (name := _registered_as(decorator, node.name)) is not None
                ),
                None,
            )
    return found


def _registered_as(decorator: ast.expr, class_name: str) -> str | None:
    call = decorator if isinstance(decorator, ast.Call) else None
    target = call.func if call else decorator
    called = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", None)
    if called != _REGISTER or call is None:
        return None
    values: dict[str, Any] = dict(zip(("package", "name"), call.args, strict=False))
    values.update({k.arg: k.value for k in call.keywords if k.arg in ("package", "name")})
    literal: dict[str, str | None] = {}
    for key, node in values.items():
        if not isinstance(node, ast.Constant) or not isinstance(node.value, str | None):
            return None
        literal[key] = node.value
    return f"{literal.get('package') or _DEFAULT_PACKAGE}>{literal.get('name') or class_name}"


def qualified_attribute(holder: Any, qualname: str) -> Any:
    """The object ``qualname`` (``Outer.Inner``) names inside ``holder``, or ``None``."""
    for part in qualname.split("."):
        holder = getattr(holder, part, None)
    return holder


def live_definition(obj: Any) -> str | None:
    """The text of a class's or function's definition, for an object this process has.

    Read from its module's file, else from the file its code was compiled from (``linecache``
    also knows the text of modules kbundle loaded from a bundle), else through ``inspect``.
    """
    qualname = getattr(obj, "__qualname__", None)
    if not isinstance(qualname, str):
        return None
    for filename in _definition_files(obj):
        lines = linecache.getlines(filename)
        found = definition_source("".join(lines), qualname) if lines else None
        if found is not None:
            return found
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        return None


def _definition_files(obj: Any) -> Iterator[str]:
    file = getattr(sys.modules.get(getattr(obj, "__module__", "") or ""), "__file__", None)
    if isinstance(file, str):
        yield file
    members = vars(obj).values() if isinstance(obj, type) else [obj]
    for member in members:
        code = getattr(getattr(member, "__func__", member), "__code__", None)
        if code is not None:
            yield code.co_filename
            return


def definition_digest(text: str) -> str:
    """``sha256:`` of a definition's text, the digest compared between pack and load."""
    return format_digest(hashlib.sha256(text.encode("utf-8")).hexdigest())
