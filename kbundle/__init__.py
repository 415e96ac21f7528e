"""kbundle: environment-locking packager for Keras/TensorFlow models.

The public API is what this module exports (``kbundle.__all__``); everything under the
subpackages is internal, and docs/ and examples/ use only these names::

    kbundle.pack(model_or_path, "model.kbundle")    -> PackResult (digest, manifest)
    kbundle.verify("s3://bucket/model.kbundle")      -> a path, a URL, or "-" (docs/storage.md)
    kbundle.verify("model.kbundle", expect=digest)   -> VerifyReport, or IntegrityError
    kbundle.inspect("model.kbundle")                 -> BundleHead (manifest only)
    kbundle.check("model.kbundle")                   -> CompatReport (this environment vs recorded)
    kbundle.unpack("model.kbundle", "dir")           -> UnpackResult
    kbundle.load("model.kbundle")                    -> keras.Model (docs/model-formats.md)
    kbundle.open("model.kbundle")                    -> OpenedBundle (model, assets, metadata)
    kbundle.diff("a.kbundle", "b.kbundle")           -> BundleDiff (what changed, and where)
    kbundle.show_code("model.kbundle")               -> [CodeListing] (bundled code, for review)
    kbundle.sign_bundle("model.kbundle", key)        -> SignResult (keys: load_signing_key)
    kbundle.diagnose("model.h5")                     -> Diagnosis (why it does not load)
    kbundle.export_requirements / create_environment -> the recorded environment, rebuilt

Where models are made: ``kbundle.keras.BundleCheckpoint`` packs during ``fit``, and
``kbundle.mlflow.log_bundle`` logs a bundle to an MLflow run (``kbundle.load`` reads
``runs:/`` and ``models:/`` URIs back).

Every error is a :class:`KbundleError` whose ``exit_code`` is the CLI's. Importing kbundle
never imports TensorFlow or Keras; ``load`` and packing a live model do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kbundle import errors
from kbundle._version import __version__
from kbundle.errors import (
    BundleFormatError,
    EnvironmentMismatchError,
    IntegrityError,
    KbundleError,
    LimitExceededError,
    ModelFileError,
    ModelLoadError,
    NotABundleError,
    OutputExistsError,
    PackError,
    SignatureError,
    StorageError,
    UnsupportedFormatVersionError,
    UntrustedCodeError,
    UsageError,
)
from kbundle.findings import Finding, Severity

# Everything else is imported on first use (PEP 562): `kbundle verify` pays neither for the
# pack pipeline (environment capture, signing keys) nor for the compatibility rules.
_LAZY = {
    "PackResult": "kbundle.pipelines.pack",
    "pack": "kbundle.pipelines.pack",
    "LoadOptions": "kbundle.pipelines.load",
    "UnpackResult": "kbundle.pipelines.load",
    "load": "kbundle.pipelines.load",
    "unpack": "kbundle.pipelines.load",
    "OpenedBundle": "kbundle.pipelines.opened",
    "open": "kbundle.pipelines.opened",
    "BundleDiff": "kbundle.pipelines.diff",
    "diff": "kbundle.pipelines.diff",
    "VerifyReport": "kbundle.pipelines.verify",
    "inspect": "kbundle.pipelines.verify",
    "verify": "kbundle.pipelines.verify",
    "BundleHead": "kbundle.container.reader",
    "Manifest": "kbundle.container.manifest",
    "NewerFormatWarning": "kbundle.container.manifest",
    "check": "kbundle.pipelines.check",
    "CompatReport": "kbundle.env.rules",
    "EnvironmentWarning": "kbundle.env.rules",
    "show_code": "kbundle.pipelines.review",
    "CodeConflictWarning": "kbundle.code.bundled",
    "CodeListing": "kbundle.code.bundled",
    "SignResult": "kbundle.pipelines.sign",
    "sign_bundle": "kbundle.pipelines.sign",
    "GeneratedKey": "kbundle.signing.keys",
    "PublicKey": "kbundle.signing.keys",
    "SigningKey": "kbundle.signing.keys",
    "generate_key": "kbundle.signing.keys",
    "load_signing_key": "kbundle.signing.keys",
    "trusted_keys_directory": "kbundle.signing.keys",
    "SignatureStatus": "kbundle.signing.signatures",
    "TrustedKeys": "kbundle.signing.signatures",
    "CreatedEnvironment": "kbundle.pipelines.rebuild",
    "create_environment": "kbundle.pipelines.rebuild",
    "export_requirements": "kbundle.pipelines.rebuild",
    "Diagnosis": "kbundle.doctor.diagnose",
    "diagnose": "kbundle.doctor.diagnose",
}

if TYPE_CHECKING:
    from kbundle.code.bundled import CodeConflictWarning, CodeListing
    from kbundle.container.manifest import Manifest, NewerFormatWarning
    from kbundle.container.reader import BundleHead
    from kbundle.doctor.diagnose import Diagnosis, diagnose
    from kbundle.env.rules import CompatReport, EnvironmentWarning
    from kbundle.pipelines.check import check
    from kbundle.pipelines.diff import BundleDiff, diff
    from kbundle.pipelines.load import LoadOptions, UnpackResult, load, unpack
    from kbundle.pipelines.opened import OpenedBundle, open
    from kbundle.pipelines.pack import PackResult, pack
    from kbundle.pipelines.rebuild import (
        CreatedEnvironment,
        create_environment,
        export_requirements,
    )
    from kbundle.pipelines.review import show_code
    from kbundle.pipelines.sign import SignResult, sign_bundle
    from kbundle.pipelines.verify import VerifyReport, inspect, verify
    from kbundle.signing.keys import (
        GeneratedKey,
        PublicKey,
        SigningKey,
        generate_key,
        load_signing_key,
        trusted_keys_directory,
    )
    from kbundle.signing.signatures import SignatureStatus, TrustedKeys


# Public submodules, imported on first use: kbundle.keras imports Keras, kbundle.mlflow MLflow.
_SUBMODULES = ("keras", "mlflow")


def __getattr__(name: str) -> Any:
    import importlib

    if name in _SUBMODULES:
        return importlib.import_module(f"kbundle.{name}")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'kbundle' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "BundleDiff",
    "BundleFormatError",
    "BundleHead",
    "CodeConflictWarning",
    "CodeListing",
    "CompatReport",
    "CreatedEnvironment",
    "Diagnosis",
    "EnvironmentMismatchError",
    "EnvironmentWarning",
    "Finding",
    "GeneratedKey",
    "IntegrityError",
    "KbundleError",
    "LimitExceededError",
    "LoadOptions",
    "Manifest",
    "ModelFileError",
    "ModelLoadError",
    "NewerFormatWarning",
    "NotABundleError",
    "OpenedBundle",
    "OutputExistsError",
    "PackError",
    "PackResult",
    "PublicKey",
    "Severity",
    "SignResult",
    "SignatureError",
    "SignatureStatus",
    "SigningKey",
    "StorageError",
    "TrustedKeys",
    "UnpackResult",
    "UnsupportedFormatVersionError",
    "UntrustedCodeError",
    "UsageError",
    "VerifyReport",
    "__version__",
    "check",
    "create_environment",
    "diagnose",
    "diff",
    "errors",
    "export_requirements",
    "generate_key",
    "inspect",
    "load",
    "load_signing_key",
    "open",
    "pack",
    "show_code",
    "sign_bundle",
    "trusted_keys_directory",
    "unpack",
    "verify",
]
