"""Real second environments: an older Keras 3 / TensorFlow pair, and one rebuilt by env create.

Both are real virtual environments installed from the package index, built once per test
session under pytest's temporary directory (about 30-40 s each from a local mirror; the hash
lock asks the index about every pin, 30-90 s). Marked ``venv`` and ``slow``: select or skip
them with ``-m venv`` / ``-m "not venv"``; CI runs them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, assert_clean_failure, child_env, run_cli, run_python
from storage_servers import RangeFileServer

import kbundle
from kbundle.env.requirement_lines import parse_pins

pytestmark = [pytest.mark.keras, pytest.mark.venv, pytest.mark.slow]

# The older pair: Keras 3.10 and TensorFlow 2.19, with the libraries that TensorFlow 2.19
# accepts pinned too, so that the findings below are exact.
OLD_KERAS = "3.10.0"
OLD_TENSORFLOW = "2.19.1"
OLD_PINS = (
    f"tensorflow-cpu=={OLD_TENSORFLOW}",
    f"keras=={OLD_KERAS}",
    "numpy==2.1.3",
    "h5py==3.16.0",
    "protobuf==5.29.6",
    "ml-dtypes==0.5.1",
)
INSTALL_TIMEOUT = 1800


def _venv_python(directory: Path) -> Path:
    return directory / ("Scripts" if os.name == "nt" else "bin") / "python"


def _outside_env(**extra: str) -> dict[str, str]:
    """Environment for a child of another venv: that venv's kbundle, not this checkout's."""
    env = child_env(**extra)
    env.pop("PYTHONPATH", None)
    return env


@pytest.fixture(scope="session")
def old_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("old-keras") / "venv"
    made = run_python("-m", "venv", directory, python=sys.executable)
    assert made.returncode == 0, made.stderr
    python = _venv_python(directory)
    installed = run_python(
        "-m",
        "pip",
        "install",
        "--quiet",
        *OLD_PINS,
        REPO,
        python=python,
        env=_outside_env(),
        timeout=INSTALL_TIMEOUT,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    return python


def _versions(python: Path | str, names: list[str]) -> dict[str, str | None]:
    code = (
        "import json, sys, importlib.metadata as m\n"
        "def v(n):\n    try:\n        return m.version(n)\n    except m.PackageNotFoundError:\n    "
        "    return None\n"
        "print(json.dumps({n: v(n) for n in sys.argv[1:]}))"
    )
    done = run_python("-c", code, *names, python=python, env=_outside_env())
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def _not_ok(stdout: str) -> list[dict[str, Any]]:
    return [f for f in json.loads(stdout)["findings"] if f["severity"] != "ok"]


def _library_findings(found: list[dict[str, Any]]) -> list[tuple[str, str, str | None, str | None]]:
    return [
        (f["location"], f["severity"], f.get("expected"), f.get("actual"))
        for f in found
        if f["location"].startswith("libraries.")
    ]


def _expected_library_rows(
    recorded: dict[str, str], current: dict[str, str | None]
) -> list[tuple[str, str, str, str]]:
    """Every recorded library that the other environment has in another version: info."""
    order = ("numpy", "h5py", "cloudpickle")
    names = sorted(recorded, key=lambda n: (order.index(n) if n in order else len(order), n))
    return [
        (f"libraries.{n}", "info", recorded[n], current[n])
        for n in names
        if n != "tf-keras" and current.get(n) not in (None, recorded[n])
    ]  # type: ignore[misc]


def test_a_bundle_from_a_newer_keras_is_refused_by_the_older_pair(
    old_python: Path, sequential_model: Any, tmp_path: Path
) -> None:
    bundle = kbundle.pack(sequential_model, tmp_path / "new.kbundle").path
    recorded = kbundle.inspect(bundle).manifest.environment
    assert recorded.keras is not None and recorded.tensorflow is not None
    checked = run_python(
        "-m", "kbundle", "check", bundle, "--json", python=old_python, env=_outside_env()
    )
    assert checked.returncode == 3, checked.stderr
    found = _not_ok(checked.stdout)
    assert [f for f in found if not f["location"].startswith("libraries.")] == [
        {
            "location": "keras.version",
            "problem": "Keras is older than the one that packed the model",
            "severity": "error",
            "expected": recorded.keras.version,
            "actual": OLD_KERAS,
            "why": "a file written by a newer Keras may use layers, arguments or config fields an "
            "older Keras does not know",
            "fix": f"install keras=={recorded.keras.version}",
        },
        {
            "location": "tensorflow.version",
            "problem": "TensorFlow is older than the one that packed the model",
            "severity": "warn",
            "expected": recorded.tensorflow.version,
            "actual": OLD_TENSORFLOW,
            "why": "a model saved by a newer TensorFlow may use ops or graph features an older one "
            "lacks",
            "fix": f"install tensorflow-cpu=={recorded.tensorflow.version}",
        },
    ]
    old_versions = _versions(old_python, list(recorded.libraries))
    assert _library_findings(found) == _expected_library_rows(recorded.libraries, old_versions)

    refused = run_python(
        "-m",
        "kbundle",
        "unpack",
        bundle,
        "-d",
        tmp_path / "refused",
        python=old_python,
        env=_outside_env(),
    )
    assert_clean_failure(refused, 3)
    assert refused.stderr.splitlines()[0] == (
        f"kbundle: error: this environment cannot load {bundle} under the default policy: "
        "keras.version: Keras is older than "
        f"the one that packed the model (expected {recorded.keras.version}, found {OLD_KERAS}); "
        f"install keras=={recorded.keras.version}; "
        "'kbundle check' explains every field; --ignore-env loads anyway"
    )
    # The verdict was right: told to go ahead, Keras 3.10 fails on the file.
    forced = run_python(
        "-m",
        "kbundle",
        "unpack",
        bundle,
        "-d",
        tmp_path / "forced",
        "--ignore-env",
        python=old_python,
        env=_outside_env(),
    )
    assert_clean_failure(forced, 5)
    assert "the verified model failed to load in Keras" in forced.stderr
    assert (
        "; the environment differs from the one the model was packed in (keras.version: Keras is "
        f"older than the one that packed the model (expected {recorded.keras.version}, found "
        f"{OLD_KERAS})" in forced.stderr
    )


def test_a_bundle_from_the_older_pair_loads_here_and_its_probe_matches(
    old_python: Path, tmp_path: Path
) -> None:
    bundle = tmp_path / "old.kbundle"
    script = (
        "import sys, keras, kbundle\nkeras.utils.set_random_seed(3)\n"
        "model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation='tanh'), "
        "keras.layers.Dense(2)], name='old_pair')\n"
        "kbundle.pack(model, sys.argv[1])\n"
    )
    packed = run_python("-c", script, bundle, python=old_python, env=_outside_env())
    assert packed.returncode == 0, packed.stderr
    recorded = kbundle.inspect(bundle).manifest.environment
    assert (recorded.keras.version, recorded.tensorflow.version) == (OLD_KERAS, OLD_TENSORFLOW)  # type: ignore[union-attr]

    checked = run_cli("check", bundle, "--json")
    assert checked.returncode == 0, checked.stderr
    found = _not_ok(checked.stdout)
    here = _versions(sys.executable, ["keras", "tensorflow-cpu", *recorded.libraries])
    assert [
        (f["location"], f["severity"], f["problem"], f["expected"], f["actual"])
        for f in found
        if not f["location"].startswith("libraries.")
    ] == [
        (
            "keras.version",
            "info",
            "Keras is newer than the one that packed the model",
            OLD_KERAS,
            here["keras"],
        ),
        (
            "tensorflow.version",
            "info",
            "TensorFlow is newer than the one that packed the model",
            OLD_TENSORFLOW,
            here["tensorflow-cpu"],
        ),
    ]
    assert _library_findings(found) == _expected_library_rows(recorded.libraries, here)

    unpacked = kbundle.unpack(bundle, tmp_path / "out", load_model=True)
    assert unpacked.model.name == "old_pair"
    probe = unpacked.environment[-1]
    assert (probe.location, probe.severity, probe.expected) == (
        "probe",
        kbundle.Severity.OK,
        "within rtol 0.0001, atol 1e-05",
    )


@pytest.fixture(scope="session")
def rebuilt(
    tmp_path_factory: pytest.TempPathFactory, keras: Any
) -> tuple[Path, Path, subprocess.CompletedProcess[str]]:
    root = tmp_path_factory.mktemp("rebuilt")
    keras.utils.set_random_seed(5)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3, activation="relu"), keras.layers.Dense(1)],
        name="rebuilt_model",
    )
    bundle = kbundle.pack(model, root / "model.kbundle", lock=True).path
    # Created from the bundle's URL, as a deploy job that reads models from a store does.
    server = RangeFileServer(root)
    try:
        url = f"http://127.0.0.1:{server.port}/{bundle.name}"
        created = run_cli("env", "create", url, root / "venv", timeout=INSTALL_TIMEOUT)
    finally:
        server.stop()
    return bundle, root / "venv", created


def test_pack_with_lock_hashes_exactly_the_pinned_closure(
    rebuilt: tuple[Path, Path, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    bundle, _, _ = rebuilt
    requirements = kbundle.inspect(bundle).manifest.requirements
    assert requirements is not None
    assert (requirements.lock, requirements.lock_hashed, requirements.note) == (
        "env/requirements.lock",
        True,
        None,
    )
    files = kbundle.unpack(bundle, tmp_path / "out").path / "env"
    pins = parse_pins((files / "requirements.txt").read_text())
    lock = (files / "requirements.lock").read_text()
    assert parse_pins(lock) == pins
    entries = [block for block in lock.split("\n") if block and not block.startswith((" ", "#"))]
    assert len(entries) == len(pins)
    assert lock.count("--hash=sha256:") >= len(pins)
    exported = run_cli("env", "export", bundle)
    assert (exported.returncode, exported.stdout) == (0, lock)


def test_env_create_from_a_url_rebuilds_an_environment_where_check_is_clean_and_model_loads(
    rebuilt: tuple[Path, Path, subprocess.CompletedProcess[str]],
) -> None:
    bundle, venv, created = rebuilt
    assert created.returncode == 0, created.stderr[-3000:]
    python = _venv_python(venv)
    assert created.stdout == f"{python}\n"
    minor = f"{sys.version_info[0]}.{sys.version_info[1]}"
    steps = created.stderr.splitlines()
    assert steps[1] == "kbundle: installing the pinned requirements (hash-checked)"
    assert (
        steps[-1]
        == f"created {venv}: Python {minor}, hash-checked; kbundle check inside it is clean"
    )

    frozen = parse_pins(
        run_python("-m", "pip", "freeze", "--all", python=python, env=_outside_env()).stdout
    )
    pins = parse_pins(
        kbundle.unpack(bundle, venv.parent / "files")
        .path.joinpath("env/requirements.txt")
        .read_text()
    )
    assert {name: frozen.get(name) for name in pins} == pins
    assert "tensorflow" not in frozen  # only tensorflow-cpu, as recorded

    checked = run_python(
        "-m", "kbundle", "check", bundle, "--json", python=python, env=_outside_env()
    )
    assert checked.returncode == 0, checked.stderr
    assert [f for f in _not_ok(checked.stdout) if f["severity"] in ("warn", "error")] == []
    script = (
        "import sys, kbundle\nmodel = kbundle.load(sys.argv[1])\n"
        "print(model.name, model.count_params())"
    )
    loaded = run_python("-c", script, bundle, python=python, env=_outside_env())
    assert (loaded.returncode, loaded.stdout) == (0, "rebuilt_model 19\n"), loaded.stderr
