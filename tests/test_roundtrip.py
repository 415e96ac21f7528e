"""Real models through pack -> verify -> load: predictions must be bit-identical.

Sequential, functional (two inputs, two outputs) and MobileNetV3Small(weights=None) — a real
architecture with random weights — through the Python API, and through the CLI in child
processes where the loading process never saw the model object.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import child_env, run_cli

import kbundle


def _predict(model: Any, inputs: Any) -> list[np.ndarray]:
    outputs = model.predict(inputs, verbose=0)
    return [np.asarray(o) for o in (outputs if isinstance(outputs, list) else [outputs])]


def _assert_bit_identical(expected: list[np.ndarray], actual: list[np.ndarray]) -> None:
    assert len(expected) == len(actual)
    for want, got in zip(expected, actual, strict=True):
        assert want.dtype == got.dtype and want.shape == got.shape
        assert np.array_equal(want, got), f"max abs diff {np.max(np.abs(want - got))}"


@pytest.mark.parametrize("fixture", ["sequential_model", "functional_model"])
def test_live_model_round_trip_is_bit_identical(
    request: pytest.FixtureRequest, tmp_path: Path, sample_inputs: Any, fixture: str
) -> None:
    model = request.getfixturevalue(fixture)
    inputs = sample_inputs(model)
    before = _predict(model, inputs)
    result = kbundle.pack(model, tmp_path / "m.kbundle")
    assert result.digest.startswith("sha256:") and len(result.digest) == 71
    files = [m.path for m in result.manifest.members if m.type == "file"]
    assert files == [
        "model/model.keras",
        "probe/inputs.npz",
        "probe/outputs.npz",
        "env/requirements.txt",
    ]
    assert kbundle.verify(result.path, expect=result.digest).files_checked == len(files)
    loaded = kbundle.load(result.path, expect=result.digest)
    _assert_bit_identical(before, _predict(loaded, inputs))
    info = result.manifest.model
    assert info.class_name == type(model).__name__ and info.name == model.name
    assert info.parameter_count == model.count_params()
    assert [s.shape for s in info.inputs or []] == [[None, *t.shape[1:]] for t in model.inputs]
    assert [s.shape for s in info.outputs or []] == [[None, *t.shape[1:]] for t in model.outputs]


@pytest.mark.slow
def test_mobilenet_round_trip_is_bit_identical(keras: Any, tmp_path: Path) -> None:
    keras.utils.set_random_seed(3)
    model = keras.applications.MobileNetV3Small(weights=None, input_shape=(96, 96, 3), classes=10)
    inputs = np.random.default_rng(0).uniform(0, 255, (2, 96, 96, 3)).astype("float32")
    before = _predict(model, inputs)
    result = kbundle.pack(model, tmp_path / "mobilenet.kbundle")
    assert result.manifest.model.parameter_count == model.count_params()
    _assert_bit_identical(before, _predict(kbundle.load(result.path), inputs))


def test_environment_is_recorded_at_runtime_for_a_live_model(
    sequential_model: Any, tmp_path: Path
) -> None:
    import keras
    import tensorflow as tf

    env = kbundle.pack(sequential_model, tmp_path / "m.kbundle").manifest.environment
    assert env.tensorflow is not None and env.keras is not None
    assert env.tensorflow.captured == "runtime"
    assert env.tensorflow.version == tf.__version__
    assert env.tensorflow.distribution == "tensorflow-cpu"
    assert env.tensorflow.git_version == tf.version.GIT_VERSION
    assert env.tensorflow.build_info["is_cuda_build"] is False
    assert env.tensorflow.compile_flags == tf.sysconfig.get_compile_flags()
    assert (env.keras.version, env.keras.major, env.keras.backend) == (
        keras.__version__,
        3,
        "tensorflow",
    )
    assert env.libraries["numpy"] == np.__version__
    assert env.distributions["zstandard"]
    assert env.python.version == ".".join(map(str, sys.version_info[:3]))


CHILD_PREDICT = """
import json, sys
import numpy as np
import kbundle
model = kbundle.load(sys.argv[1], expect=sys.argv[2])
x = np.load(sys.argv[3])
np.save(sys.argv[4], model.predict(x, verbose=0))
print(json.dumps({"modules_with_model_code": [m for m in sys.modules if m.startswith("tiny")]}))
"""


def test_cli_round_trip_in_fresh_processes(
    saved_keras_file: Path, sequential_model: Any, tmp_path: Path
) -> None:
    """pack, verify and unpack through the CLI; load in a child process that never saw the model."""
    bundle = tmp_path / "m.kbundle"
    packed = run_cli("pack", saved_keras_file, "-o", bundle, "--json")
    assert packed.returncode == 0, packed.stderr
    digest = json.loads(packed.stdout)["digest"]
    verified = run_cli("verify", bundle, "--expect", digest)
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout == f"{digest}  {bundle}\n"
    assert re.fullmatch(
        r"OK: 4 files, \d+\.\d KB verified \(integrity-checked, not signed\)\n", verified.stderr
    )
    unpacked = run_cli("unpack", bundle, "-d", tmp_path / "out", "--expect", digest)
    assert unpacked.returncode == 0, unpacked.stderr
    assert "model loads: Sequential 'tiny_sequential', 193 parameters" in unpacked.stderr
    assert (
        tmp_path / "out" / "model" / "model.keras"
    ).read_bytes() == saved_keras_file.read_bytes()
    # The load unzipped the model elsewhere in the staging directory; none of that remains.
    out = tmp_path / "out"
    extracted = {str(p.relative_to(out)) for p in out.rglob("*") if not p.is_dir()}
    members = {m.path for m in kbundle.inspect(bundle).manifest.members}
    assert extracted == {"kbundle.json", *members}
    inputs = np.random.default_rng(5).standard_normal((6, 10)).astype("float32")
    np.save(tmp_path / "x.npy", inputs)
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD_PREDICT,
            str(bundle),
            digest,
            str(tmp_path / "x.npy"),
            str(tmp_path / "y.npy"),
        ],
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=tmp_path,
        timeout=300,
    )
    assert child.returncode == 0, child.stderr
    assert np.array_equal(np.load(tmp_path / "y.npy"), sequential_model.predict(inputs, verbose=0))
