"""The import gate: the one place the load side decides whether it may import a module.

Importing a module runs its top level. A bundle names modules in two places — its custom
objects (``module``/``qualname``) and the model's config (``module`` fields, which a Keras
loader may import to find a class) — so without a decision here a bundle would choose which
installed code runs at load. The gate lets through, without anybody's say-so, only what
Keras's own safe-mode deserialiser imports itself: modules of its own packages (``keras``,
``keras_hub``, ``keras_cv``, ``keras_nlp``). Anything else needs a decision by the user:

- ``--allow-distribution NAME`` (``allow_distributions=``, or ``allow-distributions`` in
  ``[tool.kbundle]``) lets the load import modules of that installed distribution;
- trusting the bundle (``--trust-code``, or a signature by a trusted key) lets it import
  whatever its custom objects name.

Some modules are refused whoever asks: a ``__main__`` module (importing it runs a program,
e.g. ``certifi.__main__`` prints and exits), and the Keras 2 implementations (``tf_keras``,
``tensorflow.python.keras``, ``tensorflow.keras``), whose deserialisers know nothing of
Keras 3's safe mode and run marshalled Lambda code. A module the process has already imported
runs nothing when imported again, so it passes (its objects still face the registration rule).

An object handed to Keras under a name must be what its module registered with Keras under
that name (``@keras.saving.register_keras_serializable``): the registry is what Keras would
have consulted anyway, so the bundle cannot make Keras call an arbitrary function as a layer.

This module imports neither Keras nor TensorFlow; the Keras registry is passed in. Stable:
the rules are public (docs/custom-objects.md); the API is internal.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kbundle.code.sources import KERAS_ECOSYSTEM, ModuleOrigins, qualified_attribute
from kbundle.env.distributions import canonical_name, packages_distributions
from kbundle.errors import ModelLoadError, UntrustedCodeError, exception_summary
from kbundle.models.references import object_references

__all__ = [
    "KERAS_ECOSYSTEM",
    "NEVER_IMPORTED",
    "ImportGate",
]

# Module prefixes no load imports, whoever allows it: Keras 2 implementations deserialise
# Lambda bytecode without Keras 3's safe mode.
NEVER_IMPORTED = ("tf_keras", "tensorflow.python.keras", "tensorflow.keras")
# Packages whose modules a config may name for the loader reading it: Keras 3 and its
# ecosystem, and tf-keras, which reads Keras 2 files (it maps ``keras.*`` to ``tf_keras.*``).
_LOADER_PACKAGES = KERAS_ECOSYSTEM | {"tf_keras"}
# What a config's ``module`` says for a function Keras looks up among its own built-ins.
_BUILTINS_MODULE = "builtins"

_TRUST_HINT = "or pass --trust-code (trust_code=True) if you trust the bundle"


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


@dataclass(frozen=True, slots=True)
class _Verdict:
    """Whether a module may be imported; why not; which distribution it belongs to."""

    allowed: bool
    reason: str = ""
    distribution: str | None = None


class ImportGate:
    """Decides, and performs, every import the load side makes on a bundle's behalf.

    ``distributions``: installed distributions the user allowed; ``trusted``: the bundle
    itself is trusted (its code may run, whatever it imports); ``bundled``: the modules the
    bundle carries as source, importable only when it is trusted.
    """

    def __init__(
        self,
        *,
        distributions: Iterable[str] = (),
        trusted: bool = False,
        bundled: Iterable[str] = (),
    ) -> None:
        self.distributions = frozenset(canonical_name(name) for name in distributions)
        self.trusted = trusted
        self.bundled = frozenset(bundled)
        self._origins = ModuleOrigins()
        self._owners: Mapping[str, list[str]] | None = None

    # ----------------------------------------------------------------------------------------
    # Deciding

    def verdict(self, module: str) -> _Verdict:
        """May ``module`` be imported (without running anything nobody allowed)?"""
        parts = module.split(".")
        if not module or not all(part.isidentifier() for part in parts):
            return _Verdict(False, f"{module!r} is not a module name")
        if "__main__" in parts:
            return _Verdict(
                False, f"{module!r} is a __main__ module, and importing one runs a program"
            )
        never = next((p for p in NEVER_IMPORTED if _within(module, p)), None)
        if never is not None:
            return _Verdict(
                False,
                f"{module!r} belongs to {never}, a Keras 2 implementation whose deserialiser "
                "runs marshalled code that Keras 3's safe mode refuses",
            )
        if module in sys.modules:
            return _Verdict(True)  # imported before: importing it again runs nothing
        if self.trusted:
            return _Verdict(True)
        if module in self.bundled:
            return _Verdict(False, f"{module!r} is code the bundle carries")
        if parts[0] in sys.stdlib_module_names:
            return _Verdict(
                False, f"{module!r} is in the standard library, which defines no Keras objects"
            )
        distribution = self._distribution(module)
        if distribution is None:
            return _Verdict(
                False,
                f"{module!r} is not a module of an installed distribution "
                f"({self._where(module)}), so nobody can have allowed it",
            )
        if distribution in self.distributions or parts[0] in KERAS_ECOSYSTEM:
            return _Verdict(True, distribution=distribution)
        return _Verdict(
            False,
            f"importing {module!r} would run code of the installed distribution {distribution}, "
            "which nobody allowed",
            distribution,
        )

    def _distribution(self, module: str) -> str | None:
        """The installed distribution that provides ``module``, found without importing it."""
        origin = self._origins(module)
        if origin.kind == "distribution" and origin.distribution is not None:
            return origin.distribution[0]
        if origin.kind in ("missing", "namespace"):
            # Found only through an import hook (an editable install): its top-level package
            # is all the installed metadata can vouch for.
            if self._owners is None:
                self._owners = packages_distributions()
            owners = self._owners.get(module.split(".")[0], [])
            if len(owners) == 1:
                return canonical_name(owners[0])
        return None

    def _where(self, module: str) -> str:
        origin = self._origins(module)
        if origin.file is not None:
            return f"found at {origin.file}"
        return {"missing": "not found", "namespace": "a namespace package"}.get(
            origin.kind, origin.kind
        )

    def refuse(self, verdict: _Verdict, what: str) -> UntrustedCodeError:
        allow = (
            f"allow it with --allow-distribution {verdict.distribution} "
            "(allow_distributions=, or allow-distributions in [tool.kbundle]), "
            if verdict.distribution
            else ""
        )
        return UntrustedCodeError(
            f"{what}: {verdict.reason}",
            hint=f"{allow}{_TRUST_HINT}" if verdict.distribution else _never_hint(verdict),
        )

    def require(self, module: str, what: str) -> None:
        """Raise :class:`UntrustedCodeError` unless ``module`` may be imported."""
        verdict = self.verdict(module)
        if not verdict.allowed:
            raise self.refuse(verdict, what)

    # ----------------------------------------------------------------------------------------
    # Importing

    def import_module(self, module: str, what: str) -> types.ModuleType:
        """Import ``module`` once the gate allows it; any failure, ``SystemExit`` included, is
        a :class:`ModelLoadError` naming ``what`` needed it."""
        self.require(module, what)
        try:
            return importlib.import_module(module)
        except (KeyboardInterrupt, GeneratorExit):
            raise
        except BaseException as exc:  # imported code may raise anything, SystemExit too
            raise ModelLoadError(
                f"{what}: importing {module} failed: {exception_summary(exc)}",
                hint="its code needs something this environment lacks; "
                "'kbundle inspect' lists what it imports",
            ) from exc

    def registered_object(
        self,
        *,
        name: str,
        module: str,
        qualname: str,
        registered: Callable[[str], Any],
        what: str,
    ) -> Any:
        """Import ``module`` and return ``qualname`` from it, which must be the object Keras's
        registry holds under ``name`` (unless the bundle is trusted) and must come from the
        same distribution as ``module``."""
        holder = self.import_module(module, what)
        found = qualified_attribute(holder, qualname)
        if found is None:
            raise ModelLoadError(
                f"module {module} does not define {qualname} ({what})",
                hint="the bundle's code and manifest disagree; repack the model",
            )
        if self.trusted:
            return found
        if registered(name) is not found:
            raise UntrustedCodeError(
                f"{what}: {module}.{qualname} is not what its module registered with Keras "
                f"under {name!r}, so handing it to Keras would let the bundle choose the code",
                hint="register it in its module with "
                f"@keras.saving.register_keras_serializable(), {_TRUST_HINT}",
            )
        defined_in = getattr(found, "__module__", None)
        if isinstance(defined_in, str) and defined_in != module:
            own, theirs = self._distribution(module), self._distribution(defined_in)
            if theirs != own:
                raise UntrustedCodeError(
                    f"{what}: {module}.{qualname} is defined in {defined_in} "
                    f"({f'distribution {theirs}' if theirs else 'no installed distribution'}), "
                    f"not in distribution {own}",
                    hint=f"{_TRUST_HINT.removeprefix('or ')}",
                )
        return found

    def require_config(self, config: Any, provided: Iterable[str], what: str) -> None:
        """Refuse a model config naming a module a Keras loader would import and nobody allowed.

        ``provided`` are the names the load hands Keras (its custom objects): Keras takes
        those without importing anything. Keras 3.9 and later import only their own packages;
        earlier Keras 3 releases and tf-keras import whatever module a config names.
        """
        given = set(provided)
        for reference in object_references(config):
            module = reference.module
            name = (reference.kind == "class" and reference.registered_name) or reference.name
            if module is None or name in given or module == _BUILTINS_MODULE:
                continue
            parts = module.split(".")
            if parts[0] in _LOADER_PACKAGES and "__main__" not in parts:
                continue  # the loader resolves its own classes within its own package
            verdict = self.verdict(module)
            if not verdict.allowed:
                raise self.refuse(verdict, f"{what}: the model's config names {name!r}")


def _never_hint(verdict: _Verdict) -> str:
    if "__main__" in verdict.reason or "Keras 2" in verdict.reason:
        return "no option allows this module; the bundle was not written by a conforming kbundle"
    return f"install the package that provides it, {_TRUST_HINT}"
