"""kbundle: environment-locking packager for Keras/TensorFlow models.

Public API::

    kbundle.pack(model_or_path, "model.kbundle")    -> PackResult (digest, manifest)
    kbundle.verify("model.kbundle", expect=digest)   -> VerifyReport, or IntegrityError
    kbundle.check("model.kbundle")                   -> CompatReport (this environment vs recorded)
    kbundle.inspect("model.kbundle")                 -> BundleHead (manifest only)
    kbundle.unpack("model.kbundle", "dir")           -> UnpackResult
    kbundle.load("model.kbundle")                    -> keras.Model (docs/formats.md)
    kbundle.sign_bundle("model.kbundle", key)        -> SignResult (keys: kbundle.signing.keys)
    kbundle.diagnose("model.h5")                     -> Diagnosis (why it does not load)

Importing kbundle never imports TensorFlow or Keras; ``load`` and packing a live model do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kbundle import errors
from kbundle._version import __version__
from kbundle.errors import (
    EnvironmentMismatchError,
    IntegrityError,
    KbundleError,
    ModelLoadError,
    SignatureError,
    UntrustedCodeError,
    UsageError,
)
from kbundle.findings import Finding, Severity

# Everything else is imported on first use (PEP 562): `kbundle verify` pays neither for the
# pack pipeline (environment capture, signing keys) nor for the compatibility rules.
_LAZY = {
    "PackResult": "kbundle.pipelines.pack",
    "pack": "kbundle.pipelines.pack",
    "UnpackResult": "kbundle.pipelines.read",
    "inspect": "kbundle.pipelines.read",
    "load": "kbundle.pipelines.read",
    "unpack": "kbundle.pipelines.read",
    "verify": "kbundle.pipelines.read",
    "CompatReport": "kbundle.env.rules",
    "check": "kbundle.env.rules",
    "Diagnosis": "kbundle.doctor.diagnose",
    "diagnose": "kbundle.doctor.diagnose",
    "SignResult": "kbundle.pipelines.sign",
    "sign_bundle": "kbundle.pipelines.sign",
}

if TYPE_CHECKING:
    from kbundle.doctor.diagnose import Diagnosis, diagnose
    from kbundle.env.rules import CompatReport, check
    from kbundle.pipelines.pack import PackResult, pack
    from kbundle.pipelines.read import UnpackResult, inspect, load, unpack, verify
    from kbundle.pipelines.sign import SignResult, sign_bundle


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'kbundle' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "CompatReport",
    "Diagnosis",
    "EnvironmentMismatchError",
    "Finding",
    "IntegrityError",
    "KbundleError",
    "ModelLoadError",
    "PackResult",
    "Severity",
    "SignResult",
    "SignatureError",
    "UnpackResult",
    "UntrustedCodeError",
    "UsageError",
    "__version__",
    "check",
    "diagnose",
    "errors",
    "inspect",
    "load",
    "pack",
    "sign_bundle",
    "unpack",
    "verify",
]
