"""Pinned requirements, the hash lock when the index is unreachable, env export, env create errors.

Building real environments from a bundle (and the hash lock against the reachable index) is
in test_env_venv.py.
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from conftest import assert_clean_failure, child_env, run_cli

import kbundle
from kbundle.distributions import versions
from kbundle.lock import closure, parse_pins
from kbundle.manifest import Requirements
from kbundle.packing import Extras

pytestmark = pytest.mark.keras

TENSORFLOW = "tensorflow-cpu"


def _unreachable_index() -> dict[str, str]:
    """A child environment whose package index refuses connections (no config, no mirrors)."""
    return child_env(
        PIP_CONFIG_FILE=os.devnull,
        PIP_INDEX_URL="http://127.0.0.1:9/simple",
        PIP_EXTRA_INDEX_URL="",
        PIP_FIND_LINKS="",
        PIP_RETRIES="0",
    )


@pytest.fixture
def bundle(tmp_path: Path, sequential_model: Any) -> Path:
    return kbundle.pack(sequential_model, tmp_path / "model.kbundle", probe=False).path


def test_requirements_pin_the_installed_closure(bundle: Path, tmp_path: Path) -> None:
    manifest = kbundle.inspect(bundle).manifest
    assert manifest.requirements == Requirements(
        requirements="env/requirements.txt", note="not hash-locked: pack with --lock to add hashes"
    )
    text = (kbundle.unpack(bundle, tmp_path / "out").path / "env/requirements.txt").read_text()
    pins = parse_pins(text)
    assert pins[TENSORFLOW] == metadata.version(TENSORFLOW)
    assert (
        "tensorflow" not in pins and "tf-keras" not in pins
    )  # installed, but not what this model uses
    for name in ("keras", "h5py", "numpy", "ml-dtypes", "namex", "optree"):
        assert pins[name] == metadata.version(name)
    assert "pytest" not in pins and "kbundle" not in pins
    assert all(pins[name] == versions()[name] for name in pins)
    assert (
        text.splitlines()[2]
        == "# Install into a fresh environment with: pip install --no-deps -r requirements.txt"
    )
    assert text.splitlines()[3:] == [f"{name}=={version}" for name, version in sorted(pins.items())]


def test_tf_keras_asking_for_tensorflow_keeps_the_installed_tensorflow_cpu() -> None:
    assert any(r.startswith("tensorflow") for r in metadata.requires("tf-keras") or [])
    pins, missing = closure(["tf-keras"])
    assert pins[TENSORFLOW] == metadata.version(TENSORFLOW)
    assert "tensorflow" not in pins
    assert missing == []


def test_local_version_labels_are_kept_and_missing_requirements_named() -> None:
    installed = {**versions(), "keras": "3.15.1+cu121"}
    del installed["namex"]
    pins, missing = closure(["keras"], installed)
    assert pins["keras"] == "3.15.1+cu121"
    assert missing == ["namex (required by keras)"]


def test_a_lock_with_an_unreachable_index_still_packs_and_says_why(
    tmp_path: Path, saved_keras_file: Path
) -> None:
    unreachable = _unreachable_index()
    result = run_cli(
        "pack",
        saved_keras_file,
        "-o",
        tmp_path / "m.kbundle",
        "--lock",
        "--no-probe",
        "-q",
        env=unreachable,
    )
    assert result.returncode == 0, result.stderr
    note = result.stderr.splitlines()[0]
    assert note.startswith(
        "kbundle: note: not hash-locked: pip-compile failed (is the package index reachable?): "
    ), note
    requirements = kbundle.inspect(tmp_path / "m.kbundle").manifest.requirements
    assert requirements is not None
    assert (requirements.lock, requirements.lock_hashed) == (None, False)
    assert requirements.note == note.removeprefix("kbundle: note: ")


def test_env_export_writes_the_pins(bundle: Path, tmp_path: Path) -> None:
    expected = (kbundle.unpack(bundle, tmp_path / "out").path / "env/requirements.txt").read_text()
    shown = run_cli("env", "export", bundle)
    assert (shown.returncode, shown.stdout) == (0, expected), shown.stderr
    target = tmp_path / "requirements.txt"
    written = run_cli("env", "export", bundle, "-o", target)
    assert (written.returncode, written.stderr) == (0, f"wrote {target} (pins without hashes)\n")
    assert target.read_text() == expected
    assert_clean_failure(run_cli("env", "export", bundle, "-o", target), 2)
    assert run_cli("env", "export", bundle, "-o", target, "--force").returncode == 0
    refused = run_cli("env", "export", bundle, "--hashed")
    assert_clean_failure(refused, 2)
    assert refused.stderr == (
        f"kbundle: error: {bundle} has no hash-locked requirements: not hash-locked: pack with "
        "--lock to add hashes; "
        "export the pins without --hashed, or re-pack with --lock\n"
    )


def test_env_create_needs_the_recorded_python(tmp_path: Path, sequential_model: Any) -> None:
    def old_python(model: Any, scratch: Path, fmt: str) -> Extras:
        environment = kbundle.environment.capture_environment()
        return Extras(
            fields={
                "environment": replace(
                    environment, python=replace(environment.python, version="3.4.10")
                )
            }
        )

    bundle = kbundle.pack(
        sequential_model, tmp_path / "old.kbundle", probe=False, extras=old_python
    ).path
    missing = run_cli("env", "create", bundle, tmp_path / "venv")
    assert_clean_failure(missing, 2)
    assert missing.stderr == (
        "kbundle: error: Python 3.4, which the bundle was packed with, is not installed here: no "
        "python3.4 on PATH; "
        "install Python 3.4 (python.org, pyenv, 'uv python install 3.4') or pass --python PATH\n"
    )
    assert not (tmp_path / "venv").exists()
    import sys

    wrong = run_cli("env", "create", bundle, tmp_path / "venv", "--python", sys.executable)
    assert_clean_failure(wrong, 2)
    minor = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert wrong.stderr.startswith(
        f"kbundle: error: --python {sys.executable} is Python {minor}, the bundle was packed with "
        "Python 3.4;"
    )
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    refused = run_cli("env", "create", bundle, occupied)
    assert_clean_failure(refused, 2)
    assert (occupied / "keep.txt").read_text() == "mine"


def test_env_create_leaves_nothing_behind_when_pip_cannot_install(
    bundle: Path, tmp_path: Path
) -> None:
    unreachable = _unreachable_index()
    result = run_cli("env", "create", bundle, tmp_path / "venv", env=unreachable)
    assert_clean_failure(result, 3)
    error = next(line for line in result.stderr.splitlines() if line.startswith("kbundle: error:"))
    assert error.startswith(
        "kbundle: error: pip install of the recorded requirements failed (exit 1): "
    )
    assert error.endswith(
        "; the recorded versions may have no wheel for this platform or Python; "
        "'kbundle check' shows what differs"
    )
    assert not (tmp_path / "venv").exists()
