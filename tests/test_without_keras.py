"""kbundle in a real environment with none of Keras, TensorFlow or h5py: what `pip install
kbundle` gives a deploy gate or an archive machine.

pack still packs (no probe, and a note saying so), verify/inspect/check work, unpack --no-load
extracts, and loading says in one line that Keras is needed (exit 3), never exit 70. The
environment is a real virtual environment with kbundle installed from this checkout and its
core dependencies from the package index, built once per session (about 10 s).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, child_env, run_python

pytestmark = [pytest.mark.venv, pytest.mark.slow]


@pytest.fixture(scope="session")
def bare_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import sys

    directory = tmp_path_factory.mktemp("bare") / "venv"
    made = run_python("-m", "venv", directory, python=sys.executable)
    assert made.returncode == 0, made.stderr
    python = directory / "bin" / "python"
    env = child_env()
    env.pop("PYTHONPATH")
    installed = run_python("-m", "pip", "install", "--quiet", REPO, python=python, env=env)
    assert installed.returncode == 0, installed.stderr[-3000:]
    missing = run_python(
        "-c",
        "import importlib.util as u; print([m for m in ('keras', 'tensorflow', 'h5py') "
        "if u.find_spec(m)])",
        python=python,
        env=env,
    )
    assert missing.stdout.strip() == "[]"
    return python


def _bare(python: Path, *args: str | os.PathLike[str], cwd: Path) -> Any:
    env = child_env()
    env.pop("PYTHONPATH")
    return run_python("-m", "kbundle", *args, python=python, cwd=cwd, env=env)


@pytest.mark.keras
def test_pack_verify_and_unpack_without_keras(
    bare_python: Path, tmp_path: Path, sequential_model: Any
) -> None:
    sequential_model.save(tmp_path / "model.keras")
    sequential_model.save(tmp_path / "model.h5")
    for name, weights in (
        ("model.keras", "model.keras/model.weights.h5"),
        ("model.h5", "model.h5"),
    ):
        packed = _bare(bare_python, "pack", name, "-o", f"{name}.kbundle", cwd=tmp_path)
        assert packed.returncode == 0, packed.stderr
        assert packed.stderr.splitlines()[:2] == [
            f"kbundle: note: {weights}: HDF5 objects not checked: h5py is not installed",
            "kbundle: note: no probe stored: Keras is not installed here to run the model",
        ], packed.stderr
        verified = _bare(bare_python, "verify", f"{name}.kbundle", cwd=tmp_path)
        assert verified.returncode == 0, verified.stderr
        assert _bare(bare_python, "inspect", f"{name}.kbundle", cwd=tmp_path).returncode == 0
        extracted = _bare(
            bare_python,
            "unpack",
            f"{name}.kbundle",
            "-d",
            f"{name}.out",
            "--no-load",
            cwd=tmp_path,
        )
        assert extracted.returncode == 0, extracted.stderr

    loading = _bare(bare_python, "unpack", "model.keras.kbundle", "-d", "loaded", cwd=tmp_path)
    assert loading.returncode == 3
    assert loading.stderr == (
        "kbundle: error: Keras is needed to load or run the model and does not import here: "
        "No module named 'keras'; install Keras with a backend (pip install "
        "'kbundle[tensorflow-cpu]', or keras with jax or torch); 'kbundle unpack --no-load' "
        "only verifies and extracts\n"
    )
    assert not (tmp_path / "loaded").exists()


def test_a_plain_install_can_pickle_a_script_defined_layer(bare_python: Path) -> None:
    # `pip install kbundle` beside an existing TensorFlow must be able to pack a layer defined
    # in the training script (__main__): that needs cloudpickle, a core dependency.
    env = child_env()
    env.pop("PYTHONPATH")
    found = run_python(
        "-c",
        "import cloudpickle, importlib.metadata as m; "
        "print([r for r in m.requires('kbundle') if r.startswith('cloudpickle')])",
        python=bare_python,
        env=env,
    )
    assert found.returncode == 0, found.stderr
    assert "extra ==" not in found.stdout and "cloudpickle" in found.stdout
