"""Bundles that live in an MLflow artifact store: ``runs:/RUN_ID/PATH`` and
``models:/NAME/VERSION`` (or ``models:/NAME@ALIAS``) resolved to a local file.

MLflow resolves the URI through its tracking server or store (``MLFLOW_TRACKING_URI``) and
downloads the artifact into a fresh private temporary directory; the caller then reads that
file like any other bundle, so nothing from MLflow is trusted: the bundle is verified as
usual, and a digest recorded as an MLflow tag is a label, not a proof (pin it with
``expect=``). A URI naming a directory (a registered model version's source) must hold
exactly one ``*.kbundle`` file. ``mlflow`` (or ``mlflow-skinny``) is imported only here and
only for such a URI: ``pip install 'kbundle[mlflow]'``. Stable: internal.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kbundle.errors import UsageError, exception_summary

__all__ = ["MLFLOW_SCHEMES", "download_bundle", "import_mlflow", "is_mlflow_uri", "local_bundle"]

# The URI schemes MLflow resolves through its tracking store and model registry.
MLFLOW_SCHEMES = ("runs:/", "models:/")
BUNDLE_SUFFIX = ".kbundle"


def is_mlflow_uri(bundle: object) -> bool:
    """True for a string naming an MLflow run artifact or registered model version."""
    return isinstance(bundle, str) and bundle.startswith(MLFLOW_SCHEMES)


def import_mlflow() -> Any:
    """The ``mlflow`` module, or a clear error saying which extra installs it."""
    try:
        import mlflow as module
    except ImportError as exc:
        raise UsageError(
            f"MLflow is needed for this and does not import here: {exc}",
            hint="pip install 'kbundle[mlflow]' (mlflow-skinny is enough)",
        ) from None
    return module


@contextmanager
def local_bundle(bundle: str | os.PathLike[str]) -> Iterator[str | os.PathLike[str]]:
    """``bundle`` itself, or for an MLflow URI its artifact downloaded into a private
    temporary directory that is removed after the block."""
    if not is_mlflow_uri(bundle):
        yield bundle
        return
    with tempfile.TemporaryDirectory(prefix="kbundle-mlflow-") as private:
        yield download_bundle(str(bundle), Path(private))


def download_bundle(uri: str, directory: Path) -> Path:
    """Download the artifact ``uri`` names into ``directory`` and return the bundle file."""
    import_mlflow()
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(directory)))
    except (MlflowException, OSError) as exc:
        raise UsageError(
            f"MLflow cannot fetch {uri!r}: {exception_summary(exc)}",
            hint="check the run id, model name and version, and MLFLOW_TRACKING_URI "
            "(mlflow.set_tracking_uri)",
        ) from None
    if not local.is_dir():
        return local
    found = sorted(p for p in local.rglob(f"*{BUNDLE_SUFFIX}") if p.is_file())
    if len(found) != 1:
        names = ", ".join(str(p.relative_to(local)) for p in found[:5]) or "none"
        raise UsageError(
            f"MLflow artifact {uri!r} is a directory holding {len(found)} {BUNDLE_SUFFIX} "
            f"files ({names}), not exactly one",
            hint=f"name the bundle file itself, e.g. '{uri.rstrip('/')}/model{BUNDLE_SUFFIX}' "
            "for a runs:/ URI",
        )
    return found[0]
