"""The code a bundle carries, after packing: shown for review, and run only when trusted.

Review (``code_listings``; kbundle.cli.render.render_listings is the text ``kbundle show-code``
prints) reads the verified files and the manifest; it never imports nor unpickles anything.
Running (``check_runnable`` then ``bundled_objects``) happens only after
the caller has established trust (``kbundle.pipelines.load._require_trust``):

- ``check_runnable`` refuses, before anything runs, what cannot work here: a pickle written
  under another Python minor or another cloudpickle major version, a missing cloudpickle, a
  missing distribution, a module that is not part of the distribution recorded for it.
- ``bundled_objects`` imports the bundled source in isolation and unpickles the pickles,
  yielding the name -> object map Keras needs. Bundled modules are compiled from the verified
  bytes in memory and served by a finder placed first on ``sys.meta_path`` for the duration
  of the load only; a same-named module the process already imported is set aside for that
  time and put back afterwards. ``sys.path`` is never touched. Afterwards ``sys.modules``
  holds none of the bundled modules (the loaded objects keep their modules' globals alive);
  ``linecache`` keeps their text so tracebacks and ``inspect`` still show the source.
  Every clash with the loading environment (a same-named module, an object whose definition
  differs) is reported as a :class:`CodeConflictWarning` naming both sides.

This module does not import Keras or TensorFlow. Stable: internal; the warning is public.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.abc
import importlib.util
import linecache
import pickle
import sys
import types
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.machinery import ModuleSpec
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement

from kbundle.code.gate import ImportGate
from kbundle.code.sources import (
    ModuleOrigins,
    definition_digest,
    definition_source,
    find_spec,
    live_definition,
    qualified_attribute,
    read_source,
    reserved_module,
)
from kbundle.container.manifest import CustomObject, Manifest
from kbundle.env.distributions import canonical_name, version
from kbundle.errors import (
    BundleFormatError,
    EnvironmentMismatchError,
    ModelLoadError,
    UntrustedCodeError,
    UsageError,
    exception_summary,
)
from kbundle.findings import Finding

__all__ = [
    "CARRIED",
    "CodeConflictWarning",
    "CodeFile",
    "CodeListing",
    "bundled_objects",
    "check_runnable",
    "code_listings",
]

# Transports whose code is inside the bundle: running it needs trust.
CARRIED = ("source", "pickle")
# The location of a finding about one custom object: "custom object NAME".
_WHERE = "custom object "


class CodeConflictWarning(UserWarning):
    """Loading a bundle met a same-named module or object in this environment, or a
    distribution at another version than recorded; the bundle's own definition was used."""


# --------------------------------------------------------------------------------------------
# Review


@dataclass(frozen=True, kw_only=True, slots=True)
class CodeFile:
    """One bundled file shown for review."""

    path: str
    module: str | None
    digest: str | None
    text: str


@dataclass(frozen=True, kw_only=True, slots=True)
class CodeListing:
    """A custom object and the bundled files its code needs (none for a distribution); a
    pickled object's definition text is its ``obj.review_source``."""

    obj: CustomObject
    files: list[CodeFile]

    def to_dict(self) -> dict[str, Any]:
        """One object of the ``kbundle show-code --json`` shape: its record and its files."""
        return {
            **dataclasses.asdict(self.obj),
            "files": [dataclasses.asdict(file) for file in self.files],
        }


def select_objects(manifest: Manifest, name: str | None) -> list[CustomObject]:
    """The custom objects called ``name`` (registered name, qualname or module.qualname)."""
    objects = manifest.custom_objects
    if name is None:
        return list(objects)
    chosen = [o for o in objects if name in (o.name, o.qualname, f"{o.module}.{o.qualname}")]
    if not chosen:
        known = ", ".join(o.name for o in objects) or "none"
        raise UsageError(
            f"the bundle has no custom object called {name!r} (it has: {known})",
            hint="run 'kbundle show-code BUNDLE' without a name to see them all",
        )
    return chosen


def code_listings(
    directory: Path, manifest: Manifest, name: str | None = None
) -> list[CodeListing]:
    """The bundled code of every custom object (or of ``name``), read from verified files.

    A file is decoded as Python decodes it (coding cookie, BOM, newlines). One Python could
    not decode (an unknown coding cookie, bytes invalid in its encoding) is still shown, for
    review: as UTF-8 with the undecodable bytes escaped, after a first line saying why.
    """
    listings = []
    for obj in select_objects(manifest, name):
        files = []
        for source in obj.sources:
            member = manifest.member(source.path)
            raw = (directory / source.path).read_bytes()
            try:
                text = importlib.util.decode_source(raw)
            # SyntaxError: an unknown or malformed cookie; LookupError: a codec that is not a
            # text encoding (rot13); ValueError: bytes invalid in the declared encoding.
            except (SyntaxError, LookupError, ValueError) as exc:
                reason = str(exc.msg if isinstance(exc, SyntaxError) else exc)
                shown = raw.decode("utf-8", "backslashreplace")
                text = (
                    f"# kbundle: this file is not valid Python source ({reason}); "
                    "shown as UTF-8 with undecodable bytes escaped\n"
                    + shown.replace("\r\n", "\n").replace("\r", "\n")
                )
            files.append(
                CodeFile(
                    path=source.path,
                    module=source.module,
                    digest=member.digest if member else None,
                    text=text,
                )
            )
        listings.append(CodeListing(obj=obj, files=files))
    return listings


# --------------------------------------------------------------------------------------------
# Refusing early


def _major_minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def _pickle_findings(obj: CustomObject) -> list[Finding]:
    assert obj.pickle is not None
    recorded = obj.pickle
    where = _WHERE + obj.name
    fallback = (
        "no source fallback: the bundle holds only its definition's text, for review "
        "('kbundle show-code')"
        if obj.review_source
        else "no source fallback: the bundle holds no source for it"
    )
    pickled_under = _major_minor(recorded.python)
    fix = (
        f"load it under Python {pickled_under} with cloudpickle "
        f"{recorded.cloudpickle.split('.')[0]}.x, or move {obj.qualname} into a module and pack "
        "again (source loads under any Python)"
    )
    findings = []

    def refuse(
        problem: str, expected: str | None = None, actual: str | None = None, how: str = fix
    ) -> None:
        findings.append(
            Finding(
                location=where,
                problem=f"{problem}; {fallback}",
                expected=expected,
                actual=actual,
                fix=how,
            )
        )

    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if pickled_under != here:
        refuse(
            f"was pickled under Python {pickled_under}, this is Python {here}",
            f"Python {pickled_under}",
            f"Python {here}",
        )
    try:
        import cloudpickle
    except ImportError:
        refuse(
            "needs cloudpickle to unpickle, which is not installed",
            f"cloudpickle {recorded.cloudpickle}",
            how=f"pip install 'cloudpickle=={recorded.cloudpickle}'",
        )
    else:
        current = str(cloudpickle.__version__)
        if current.split(".")[0] != recorded.cloudpickle.split(".")[0]:
            refuse(
                f"was pickled with cloudpickle {recorded.cloudpickle}, "
                f"this is cloudpickle {current} (another major version)",
                f"cloudpickle {recorded.cloudpickle}",
                f"cloudpickle {current}",
            )
    if recorded.protocol > pickle.HIGHEST_PROTOCOL:
        refuse(
            f"uses pickle protocol {recorded.protocol}, "
            f"this Python reads up to {pickle.HIGHEST_PROTOCOL}"
        )
    return findings


# How a module that should come from a distribution was found instead, when no file says it.
_ORIGIN_WORDS = {
    "stdlib": "it is in the standard library",
    "missing": "it is not importable",
    "namespace": "it is a namespace package",
}


def _distribution_findings(obj: CustomObject, origins: ModuleOrigins) -> list[Finding]:
    where = _WHERE + obj.name
    try:
        requirement = Requirement(obj.requirement or "")
    except InvalidRequirement:
        return [
            Finding(
                location=where,
                problem=f"records an unreadable requirement {obj.requirement!r}",
                fix="the bundle was not written by a conforming kbundle",
            )
        ]
    wanted = canonical_name(requirement.name)
    if version(wanted) is None:
        return [
            Finding(
                location=where,
                problem=f"comes from distribution {obj.requirement}, which is not installed",
                expected=obj.requirement,
                actual="not installed",
                fix=f"pip install '{obj.requirement}'",
            )
        ]
    origin = origins(obj.module)
    if origin.distribution is None or origin.distribution[0] != wanted:
        found = (
            f"found at {origin.file}"
            if origin.file
            else _ORIGIN_WORDS.get(origin.kind, origin.kind)
        )
        return [
            Finding(
                location=where,
                problem=f"module {obj.module} is not part of distribution {wanted} here ({found})",
                fix=f"remove what shadows {obj.module.split('.')[0]} from sys.path, "
                f"or reinstall '{obj.requirement}'",
            )
        ]
    return []


def check_runnable(manifest: Manifest) -> None:
    """Refuse, before anything runs, custom objects that cannot be loaded in this process."""
    for obj in manifest.custom_objects:
        for source in obj.sources:
            reason = reserved_module(source.module)
            if reason:  # kbundle never bundles these; serving them would replace them
                raise BundleFormatError(
                    f"custom object {obj.name} comes with a bundled module {source.module!r}, "
                    f"which is {reason}",
                    hint="the bundle was not written by a conforming kbundle or was tampered with",
                )
    origins = ModuleOrigins()
    findings: list[Finding] = []
    for obj in manifest.custom_objects:
        if obj.transport == "pickle" and obj.pickle is not None:
            findings.extend(_pickle_findings(obj))
        elif obj.transport == "distribution":
            findings.extend(_distribution_findings(obj, origins))
    if findings:
        first = findings[0]
        raise EnvironmentMismatchError.from_findings(
            findings,
            f"{first.location.removeprefix(_WHERE)} cannot be loaded here: {first.problem}",
        )


# --------------------------------------------------------------------------------------------
# Importing in isolation


@dataclass(frozen=True, slots=True)
class _BundledModule:
    source: bytes
    filename: str
    is_package: bool


class _BundleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves exactly the bundled modules, from memory; everything else falls through."""

    def __init__(self, modules: dict[str, _BundledModule]) -> None:
        self._modules = modules

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None = None,
        target: types.ModuleType | None = None,
    ) -> ModuleSpec | None:
        entry = self._modules.get(fullname)
        if entry is None:
            return None
        spec = ModuleSpec(fullname, self, origin=entry.filename, is_package=entry.is_package)
        spec.has_location = True  # sets __file__, which inspect and tracebacks use
        return spec

    def create_module(self, spec: ModuleSpec) -> None:
        return None  # the default module object

    def exec_module(self, module: types.ModuleType) -> None:
        entry = self._modules[module.__name__]
        text = importlib.util.decode_source(entry.source)
        # mtime None: linecache keeps the entry, so tracebacks and inspect (autograph reads
        # layer source through it) keep working after the bundle's files are gone.
        linecache.cache[entry.filename] = (
            len(text),
            None,
            text.splitlines(keepends=True),
            entry.filename,
        )
        code = compile(entry.source, entry.filename, "exec", dont_inherit=True)
        exec(code, module.__dict__)

    def get_source(self, fullname: str) -> str | None:
        entry = self._modules.get(fullname)
        return importlib.util.decode_source(entry.source) if entry else None


def _module_table(directory: Path, manifest: Manifest, label: str) -> dict[str, _BundledModule]:
    table: dict[str, _BundledModule] = {}
    for obj in manifest.custom_objects:
        if obj.transport not in CARRIED:
            continue
        for source in obj.sources:
            if source.module not in table:
                table[source.module] = _BundledModule(
                    (directory / source.path).read_bytes(),
                    f"kbundle:{label}/{source.path}",
                    source.path.endswith("/__init__.py"),
                )
    for name in list(table):
        parent = name.rpartition(".")[0]
        while parent and parent not in table:  # a namespace package: an empty package here
            table[parent] = _BundledModule(
                b"", f"kbundle:{label}/code/{parent.replace('.', '/')}/", True
            )
            parent = parent.rpartition(".")[0]
    return table


def _where(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', '?')}"


def _existing_definition(
    obj: CustomObject, registered: Callable[[str], Any]
) -> tuple[str, str | None] | None:
    """Where this environment already defines ``obj`` and that definition's digest."""
    live = registered(obj.name)
    if live is None:
        live = qualified_attribute(sys.modules.get(obj.module), obj.qualname)
    if live is not None:
        text = live_definition(live)
        return _where(live), definition_digest(text) if text is not None else None
    if obj.module == "__main__":
        return None
    spec = find_spec(obj.module)  # importable but not imported: read, never run
    if spec is None or not spec.has_location or not spec.origin:
        return None
    text = read_source(Path(spec.origin))
    found = definition_source(text, obj.qualname) if text else None
    if found is None:
        return None
    return f"{obj.module}.{obj.qualname} in {spec.origin}", definition_digest(found)


def _report_conflicts(manifest: Manifest, tops: set[str], registered: Callable[[str], Any]) -> None:
    for top in sorted(tops):
        present = sys.modules.get(top)
        spec = find_spec(top) if present is None else None
        if present is None and spec is None:
            continue
        where = (
            getattr(present, "__file__", None)
            if present is not None
            else spec.origin
            if spec
            else None
        )
        warnings.warn(
            f"the bundle's module {top!r} has the same name as {top!r} in this environment "
            f"({where or 'a namespace package'}); the bundled one is used to load the model "
            f"and this environment's {top!r} is left as it was",
            CodeConflictWarning,
            stacklevel=4,
        )
    for obj in manifest.custom_objects:
        if obj.transport not in CARRIED:
            continue
        existing = _existing_definition(obj, registered)
        if existing is None:
            continue
        where, digest = existing
        if digest is not None and digest == obj.source_digest:
            continue
        theirs = f"definition {digest}" if digest else "its source cannot be read to compare"
        ours = f"definition {obj.source_digest}" if obj.source_digest else "no digest recorded"
        warnings.warn(
            f"{obj.name}: this environment already defines it ({where}, {theirs}), which "
            f"differs from the bundle's ({obj.module}.{obj.qualname}, {ours}); "
            "the bundled one is used",
            CodeConflictWarning,
            stacklevel=4,
        )


def _what(obj: CustomObject) -> str:
    return f"custom object {obj.name}"


def _installed_object(obj: CustomObject, gate: ImportGate, registered: Callable[[str], Any]) -> Any:
    requirement = Requirement(obj.requirement or "")
    installed = version(requirement.name)
    recorded = obj.distributions.get(canonical_name(requirement.name))
    if recorded is not None and installed != recorded:
        warnings.warn(
            f"{obj.name} comes from {requirement.name} {installed} here; the bundle recorded "
            f"{recorded} ({obj.requirement})",
            CodeConflictWarning,
            stacklevel=4,
        )
    return _gated_object(obj, gate, registered)


def _gated_object(obj: CustomObject, gate: ImportGate, registered: Callable[[str], Any]) -> Any:
    return gate.registered_object(
        name=obj.name,
        module=obj.module,
        qualname=obj.qualname,
        registered=registered,
        what=_what(obj),
    )


def _unpickle(directory: Path, obj: CustomObject, gate: ImportGate) -> Any:
    assert obj.pickle is not None
    if not gate.trusted:  # _require_trust refused already; unpickling is running code
        raise UntrustedCodeError(
            f"{_what(obj)} is a pickle, and unpickling runs code nobody trusted",
            hint="review it with 'kbundle show-code', then pass --trust-code (trust_code=True)",
        )
    try:
        return pickle.loads((directory / obj.pickle.path).read_bytes())
    except (KeyboardInterrupt, GeneratorExit):
        raise
    except BaseException as exc:  # unpickled code may raise anything, SystemExit too
        raise ModelLoadError(
            f"unpickling {_what(obj)} ({obj.module}.{obj.qualname}) failed: "
            f"{exception_summary(exc)}",
            hint="its code needs something this environment lacks; "
            "'kbundle inspect' lists what it imports",
        ) from exc


def _in_tops(name: str, tops: set[str]) -> bool:
    return name.split(".")[0] in tops


@contextmanager
def bundled_objects(
    directory: Path,
    manifest: Manifest,
    *,
    label: str,
    registered: Callable[[str], Any],
    gate: ImportGate,
) -> Iterator[dict[str, Any]]:
    """Yield registered name -> object for every custom object, bundled code included.

    Call only once trust is established and ``check_runnable`` passed. ``directory`` holds the
    verified files; ``label`` names them in tracebacks (``kbundle:LABEL/code/...``);
    ``registered`` looks a name up in Keras's registry (to report clashes, and to check that
    an installed object is what its module registered); every import goes through ``gate``.
    Load the model inside the block: bundled modules are importable only there.
    """
    objects = {
        o.name: _installed_object(o, gate, registered)
        for o in manifest.custom_objects
        if o.transport == "distribution"
    }
    table = _module_table(directory, manifest, label)
    tops = {name.split(".")[0] for name in table}
    _report_conflicts(manifest, tops, registered)
    set_aside = {name: module for name, module in list(sys.modules.items()) if _in_tops(name, tops)}
    for name in set_aside:
        del sys.modules[name]
    finder = _BundleFinder(table)
    sys.meta_path.insert(0, finder)
    try:
        for obj in manifest.custom_objects:
            if obj.transport == "source":
                objects[obj.name] = _gated_object(obj, gate, registered)
            elif obj.transport == "pickle":
                objects[obj.name] = _unpickle(directory, obj, gate)
        yield objects
    finally:
        sys.meta_path.remove(finder)
        for name in [name for name in list(sys.modules) if _in_tops(name, tops)]:
            del sys.modules[name]
        sys.modules.update(set_aside)
