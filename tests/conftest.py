"""Shared test fixtures: the CLI as a real subprocess, and small real Keras models.

Models are built in the tests with real Keras on TensorFlow (never mocked); the CLI is run
as ``python -m kbundle`` in a child process with this checkout first on ``sys.path``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]

# Quiet TensorFlow's C++ logging and make runs deterministic, here and in child processes.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a kbundle child process: this checkout importable, TF quiet."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("KBUNDLE_DEBUG", None)
    env.update(extra)
    return env


def run_cli(*args: str | os.PathLike[str], cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run ``python -m kbundle ARGS`` in a subprocess and return the completed process."""
    return run_python("-m", "kbundle", *args, cwd=cwd, env=env, timeout=timeout)


def run_python(
    *args: str | os.PathLike[str],
    python: str | os.PathLike[str] = sys.executable,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    """Run ``python ARGS`` (this interpreter unless ``python``) in a subprocess, output captured."""
    return subprocess.run(
        [str(python), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env or child_env(),
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def assert_clean_failure(result: subprocess.CompletedProcess[str], code: int) -> None:
    """A failure with the documented exit code, a 'kbundle: error:' line and no traceback."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert "kbundle: error:" in result.stderr, result.stderr


@pytest.fixture(scope="session")
def keras() -> Any:
    import keras as keras_module

    return keras_module


@pytest.fixture
def sequential_model(keras: Any) -> Any:
    """A small Sequential model with deterministic weights."""
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [keras.Input((10,), name="features"), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1, activation="sigmoid")],
        name="tiny_sequential",
    )


@pytest.fixture
def functional_model(keras: Any) -> Any:
    """A functional model with two inputs and two outputs."""
    keras.utils.set_random_seed(1)
    left = keras.Input((8,), name="left")
    right = keras.Input((4, 3), name="right")
    merged = keras.layers.Concatenate()([keras.layers.Dense(6)(left), keras.layers.Flatten()(right)])
    hidden = keras.layers.Dense(12, activation="tanh")(merged)
    score = keras.layers.Dense(1, name="score")(hidden)
    label = keras.layers.Dense(3, activation="softmax", name="label")(hidden)
    return keras.Model([left, right], [score, label], name="two_in_two_out")


@pytest.fixture
def sample_inputs() -> Callable[[Any], Any]:
    """Deterministic inputs matching a model's declared input shapes."""
    import numpy as np

    def make(model: Any) -> Any:
        rng = np.random.default_rng(42)
        arrays = [rng.standard_normal((4, *[d or 1 for d in t.shape[1:]])).astype("float32") for t in model.inputs]
        return arrays[0] if len(arrays) == 1 else arrays

    return make


@pytest.fixture
def saved_keras_file(tmp_path: Path, sequential_model: Any) -> Path:
    """The sequential model saved as a .keras file."""
    path = tmp_path / "model.keras"
    sequential_model.save(path)
    return path
