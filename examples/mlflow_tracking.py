"""Bundles in MLflow: log a trained model as a verified bundle, register it, and load it
back by its ``runs:/`` and ``models:/`` URIs (docs/mlflow.md). Needs ``kbundle[mlflow]``.

    python examples/mlflow_tracking.py [WORKDIR]

Uses a tracking store on local disk under WORKDIR (default ./mlflow-output); point
``mlflow.set_tracking_uri`` at your server instead.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# MLflow 3 keeps its file store behind this switch; a server or database needs none.
os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")


def main() -> None:
    workdir = Path(sys.argv[1] if len(sys.argv) > 1 else "mlflow-output").resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)

    import keras
    import mlflow
    import numpy as np

    import kbundle
    import kbundle.mlflow

    mlflow.set_tracking_uri((workdir / "mlruns").as_uri())
    keras.utils.set_random_seed(3)
    x = np.random.default_rng(3).standard_normal((120, 5)).astype("float32")
    y = (x[:, 0] - x[:, 3] > 0).astype("float32")
    model = keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(6, activation="relu"),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile("adam", "binary_crossentropy")

    with mlflow.start_run() as run:
        history = model.fit(x, y, epochs=3, verbose=0)
        mlflow.log_metric("loss", history.history["loss"][-1])
        logged = kbundle.mlflow.log_bundle(model, "model", registered_model_name="churn")
    print(f"run {run.info.run_id}: {logged.uri}")
    print(f"tags: digest {logged.digest[:19]}..., verdict {logged.verdict!r}")
    print(f"registered: {logged.model_uri}")

    by_run = kbundle.load(logged.uri, expect=logged.digest)
    by_name = kbundle.load("models:/churn/1", expect=logged.digest)
    same = np.array_equal(by_run.predict(x, verbose=0), by_name.predict(x, verbose=0))
    print(f"runs:/ and models:/ give the same model: {same}")
    assert same
    print("mlflow OK: logged, registered and loaded back verified")


if __name__ == "__main__":
    main()
