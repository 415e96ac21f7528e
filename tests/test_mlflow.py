"""``kbundle.mlflow`` against a real MLflow tracking store on local disk (``file://`` in a
temporary directory: no server, nothing mocked).

A model trained for a few epochs is logged as a bundle (tags on the run, a registered model
version), then loaded back by ``runs:/`` and ``models:/`` URIs through MLflow's artifact
store, opened with its assets, diffed, and refused when the stored artifact is altered.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import child_env, run_cli

import kbundle
import kbundle.mlflow
from kbundle.errors import IntegrityError, UsageError

mlflow = pytest.importorskip("mlflow")


@pytest.fixture
def tracking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh MLflow file store as the tracking URI; no run is left active."""
    # MLflow 3 keeps the file store for existing users behind this switch (a database
    # backend would need a server's dependencies); the store is as real as any other.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    store = tmp_path / "mlruns"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(store.as_uri())
    try:
        yield store
    finally:
        while mlflow.active_run() is not None:
            mlflow.end_run()
        mlflow.set_tracking_uri(previous)


@pytest.fixture
def trained(keras: Any) -> tuple[Any, Any]:
    keras.utils.set_random_seed(21)
    rng = np.random.default_rng(21)
    x = rng.standard_normal((120, 5)).astype("float32")
    y = (x[:, 0] - x[:, 3] > 0).astype("float32")
    model = keras.Sequential(
        [
            keras.Input((5,), name="x"),
            keras.layers.Dense(6, activation="relu"),
            keras.layers.Dense(1, activation="sigmoid"),
        ],
        name="mlflow_model",
    )
    model.compile("adam", "binary_crossentropy")
    model.fit(x, y, epochs=3, batch_size=20, verbose=0)
    return model, x[:6]


def test_a_logged_bundle_loads_back_by_run_and_by_registered_model(
    tracking: Path, tmp_path: Path, trained: tuple[Any, Any]
) -> None:
    model, batch = trained
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"0": "stay", "1": "churn"}))
    with mlflow.start_run() as run:
        logged = kbundle.mlflow.log_bundle(
            model, "model", registered_model_name="churn", probe=False, assets=[labels]
        )
    assert logged.run_id == run.info.run_id
    assert logged.uri == f"runs:/{run.info.run_id}/model/model.kbundle"
    assert logged.model_uri == "models:/churn/1"
    assert logged.verdict == "compatible"
    tags = mlflow.get_run(run.info.run_id).data.tags
    assert tags["kbundle.digest"] == logged.digest
    assert tags["kbundle.verdict"] == "compatible"
    assert tags["kbundle.format_version"] == "1.1"
    assert tags["kbundle.uri"] == logged.uri
    stored = tracking / "0" / run.info.run_id / "artifacts" / "model" / "model.kbundle"
    assert kbundle.inspect(stored).digest == logged.digest

    expected = model.predict(batch, verbose=0)
    by_run = kbundle.load(logged.uri, expect=logged.digest)
    np.testing.assert_array_equal(by_run.predict(batch, verbose=0), expected)
    by_name = kbundle.load("models:/churn/1", expect=logged.digest)
    np.testing.assert_array_equal(by_name.predict(batch, verbose=0), expected)
    client = mlflow.tracking.MlflowClient()
    assert client.get_model_version("churn", "1").tags["kbundle.digest"] == logged.digest
    client.set_registered_model_alias("churn", "champion", "1")
    with kbundle.open("models:/churn@champion", expect=logged.digest) as opened:
        assert json.loads(opened.assets["labels.json"].read_text())["1"] == "churn"
    assert kbundle.diff(logged.uri, logged.model_uri).identical
    on_the_command_line = run_cli(
        "diff", logged.uri, "models:/churn@champion", "--json",
        env=child_env(MLFLOW_TRACKING_URI=tracking.as_uri(), MLFLOW_ALLOW_FILE_STORE="true"),
    )  # fmt: skip
    assert on_the_command_line.returncode == 0, on_the_command_line.stderr
    assert json.loads(on_the_command_line.stdout)["identical"] is True


def test_an_existing_bundle_is_logged_as_it_is(
    tracking: Path, tmp_path: Path, saved_keras_file: Path
) -> None:
    bundle = kbundle.pack(saved_keras_file, tmp_path / "release.kbundle", probe=False)
    run = mlflow.start_run()
    logged = kbundle.mlflow.log_bundle(bundle.path, "bundles")
    mlflow.end_run()
    assert logged.uri == f"runs:/{run.info.run_id}/bundles/release.kbundle"
    assert logged.digest == bundle.digest and logged.model_uri is None
    with pytest.raises(UsageError, match="pack options do not apply to it: labels"):
        kbundle.mlflow.log_bundle(bundle.path, "bundles", run_id=run.info.run_id, labels={"a": "b"})


def test_an_altered_artifact_is_refused_whatever_the_tags_say(
    tracking: Path, saved_keras_file: Path
) -> None:
    with mlflow.start_run() as run:
        logged = kbundle.mlflow.log_bundle(saved_keras_file, "model", probe=False)
    stored = tracking / "0" / run.info.run_id / "artifacts" / "model" / "model.kbundle"
    data = bytearray(stored.read_bytes())
    data[-1] ^= 0x01
    stored.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="failed verification"):
        kbundle.load(logged.uri)


def test_unknown_runs_and_ambiguous_directories_are_usage_errors(
    tracking: Path, tmp_path: Path, saved_keras_file: Path
) -> None:
    with pytest.raises(UsageError) as caught:
        kbundle.load("runs:/0123456789abcdef0123456789abcdef/model/model.kbundle")
    assert caught.value.message.startswith(
        "MLflow cannot fetch 'runs:/0123456789abcdef0123456789abcdef/model/model.kbundle': "
    )
    with mlflow.start_run() as run:
        kbundle.mlflow.log_bundle(saved_keras_file, "two", name="a.kbundle", probe=False)
        kbundle.mlflow.log_bundle(saved_keras_file, "two", name="b.kbundle", probe=False)
    with pytest.raises(UsageError) as caught:
        kbundle.load(f"runs:/{run.info.run_id}/two")
    assert caught.value.message == (
        f"MLflow artifact 'runs:/{run.info.run_id}/two' is a directory holding 2 .kbundle "
        "files (a.kbundle, b.kbundle), not exactly one"
    )


def test_importing_the_facades_imports_neither_mlflow_nor_keras() -> None:
    """``kbundle.mlflow`` imports MLflow only when a function needs it; ``import kbundle``
    then ``kbundle.mlflow`` (attribute access) works without an explicit import."""
    from conftest import run_python

    code = (
        "import sys, kbundle\n"
        "facade = kbundle.mlflow\n"
        "assert facade.log_bundle.__module__ == 'kbundle.integrations.mlflow_logging'\n"
        "assert 'mlflow' not in sys.modules and 'keras' not in sys.modules, 'imported'\n"
    )
    result = run_python("-c", code)
    assert result.returncode == 0, result.stderr
