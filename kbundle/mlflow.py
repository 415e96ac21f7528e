"""MLflow integration: log bundles as run artifacts, load them back by ``runs:/`` and
``models:/`` URIs.

::

    import kbundle, kbundle.mlflow

    with mlflow.start_run():
        logged = kbundle.mlflow.log_bundle(model, "model", registered_model_name="churn")
    model = kbundle.load(logged.uri, expect=logged.digest)   # or "models:/churn/1"

Needs ``pip install 'kbundle[mlflow]'``. See docs/mlflow.md. Stable: public API.
"""

from __future__ import annotations

from kbundle.integrations.mlflow_logging import LoggedBundle, log_bundle

__all__ = ["LoggedBundle", "log_bundle"]
