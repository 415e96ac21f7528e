"""Logging bundles to MLflow: the bundle as a run artifact, its digest and environment
verdict as run tags, and optionally a registered model version whose source is the bundle.

A bundle is verified before it is logged (what MLflow stores is what was checked), and the
environment verdict is ``kbundle check``'s for the logging environment. Tags are labels for
people and search, not proof: a deploy pins the digest (``kbundle.load(uri, expect=...)``).
Reading back goes through kbundle.storage.mlflow_artifacts (``runs:/`` and ``models:/``
URIs). MLflow is imported only when used: ``pip install 'kbundle[mlflow]'``. Stable: the
public function is ``kbundle.mlflow.log_bundle``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kbundle.container.zstdframes import ZSTD_MAGIC
from kbundle.errors import UsageError, exception_summary
from kbundle.storage.mlflow_artifacts import BUNDLE_SUFFIX, import_mlflow

__all__ = ["TAG_PREFIX", "LoggedBundle", "log_bundle"]

TAG_PREFIX = "kbundle."
DEFAULT_NAME = f"model{BUNDLE_SUFFIX}"


@dataclass(frozen=True, kw_only=True, slots=True)
class LoggedBundle:
    """Where a bundle was logged: its run, its ``runs:/`` URI (what ``kbundle.load`` takes),
    digest and environment verdict, and the registered model version when one was made."""

    run_id: str
    uri: str
    digest: str
    verdict: str
    model_uri: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "uri": self.uri,
            "digest": self.digest,
            "verdict": self.verdict,
            "model_uri": self.model_uri,
        }


def _is_bundle_file(candidate: Any) -> bool:
    if not isinstance(candidate, str | os.PathLike):
        return False
    path = Path(candidate)
    if not path.is_file():
        return False
    with path.open("rb") as handle:
        return handle.read(len(ZSTD_MAGIC)) == ZSTD_MAGIC


@contextmanager
def _bundle_file(bundle_or_model: Any, name: str, pack_options: dict[str, Any]) -> Iterator[Path]:
    """An existing bundle as it is, or the model packed into a temporary one named ``name``."""
    if _is_bundle_file(bundle_or_model):
        if pack_options:
            raise UsageError(
                f"{bundle_or_model} is a bundle already; pack options do not apply to it: "
                f"{', '.join(sorted(pack_options))}",
                hint="pass a model (a keras.Model or a model file) to pack it with options",
            )
        yield Path(bundle_or_model)
        return
    from kbundle.pipelines.pack import pack

    with tempfile.TemporaryDirectory(prefix="kbundle-mlflow-") as scratch:
        output = Path(scratch) / name
        pack(bundle_or_model, output, **pack_options)
        yield output


def log_bundle(
    bundle_or_model: Any,
    artifact_path: str = "model",
    *,
    name: str | None = None,
    run_id: str | None = None,
    registered_model_name: str | None = None,
    **pack_options: Any,
) -> LoggedBundle:
    """Log a bundle to MLflow as an artifact of a run, with its digest and verdict as tags.

    ``bundle_or_model`` is a bundle file, or a model :func:`kbundle.pack` takes (a live
    ``keras.Model`` or a model file), packed first with ``pack_options`` into a bundle named
    ``name`` (default ``model.kbundle``; an existing bundle keeps its file name). The bundle
    is verified, checked against this environment, and logged under ``artifact_path`` of the
    run ``run_id`` (default: the active run, started if there is none, as ``mlflow.log_*``
    do). The run gets the tags ``kbundle.digest``, ``kbundle.verdict``,
    ``kbundle.format_version`` and ``kbundle.uri``. With ``registered_model_name`` a model
    version is registered whose source is ``artifact_path`` (keep one bundle there), so that
    ``kbundle.load("models:/NAME/VERSION")`` finds it. Returns a :class:`LoggedBundle`.
    """
    mlflow = import_mlflow()
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from kbundle.pipelines.check import check
    from kbundle.pipelines.verify import verify

    artifact_path = artifact_path.strip("/")
    if not artifact_path:
        raise UsageError(
            "artifact_path must name a directory of the run's artifacts: ''",
            hint="use artifact_path='model'",
        )
    try:
        with _bundle_file(bundle_or_model, name or DEFAULT_NAME, pack_options) as bundle:
            if name is not None and bundle.name != name:
                raise UsageError(
                    f"name applies when a model is packed; the bundle {bundle} keeps its name: "
                    f"{name!r}",
                    hint="rename the bundle file, or leave name unset",
                )
            report = verify(bundle)
            verdict = check(bundle).summary()
            client = MlflowClient()
            if run_id is None:
                active = mlflow.active_run() or mlflow.start_run()
                run_id = active.info.run_id
            client.log_artifact(run_id, str(bundle), artifact_path)
            uri = f"runs:/{run_id}/{artifact_path}/{bundle.name}"
            tags = {
                "digest": report.head.digest,
                "verdict": verdict,
                "format_version": report.head.manifest.format_version,
                "uri": uri,
            }
            for key, value in tags.items():
                client.set_tag(run_id, TAG_PREFIX + key, value)
            model_uri = None
            if registered_model_name is not None:
                model_uri = _register(
                    client, registered_model_name, run_id, artifact_path, report.head.digest
                )
    except MlflowException as exc:
        raise UsageError(
            f"MLflow refused to log the bundle: {exception_summary(exc)}",
            hint="check run_id, the tracking URI (mlflow.set_tracking_uri) and its permissions",
        ) from None
    return LoggedBundle(
        run_id=run_id,
        uri=uri,
        digest=report.head.digest,
        verdict=verdict,
        model_uri=model_uri,
    )


def _register(client: Any, name: str, run_id: str, artifact_path: str, digest: str) -> str:
    """A new version of the registered model ``name`` (created if need be) whose source is
    the run's ``artifact_path``; returns its ``models:/NAME/VERSION`` URI."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name)
    source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{artifact_path}"
    version = client.create_model_version(
        name, source=source, run_id=run_id, tags={TAG_PREFIX + "digest": digest}
    )
    return f"models:/{name}/{version.version}"
