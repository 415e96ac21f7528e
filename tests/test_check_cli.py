"""``kbundle check`` and the environment gate of ``unpack``, through the real CLI.

The environments differ for real: the same installation with another Keras selected
(``TF_USE_LEGACY_KERAS=1`` picks the installed tf-keras), another backend selected
(``KERAS_BACKEND=jax`` without jax installed), another ``keras.json``, and a bundle packed by
tf-keras in a child process. Second installations are in test_env_venv.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import assert_clean_failure, child_env, python_with_site, run_cli, run_python

import kbundle

pytestmark = pytest.mark.keras


@pytest.fixture
def bundle(tmp_path: Path, sequential_model: Any) -> Path:
    return kbundle.pack(sequential_model, tmp_path / "model.kbundle").path


def _row(table: str, field: str) -> list[str]:
    """The cells of the table row for ``field`` (cells are separated by two or more spaces)."""
    return next(
        re.split(r"\s{2,}", line) for line in table.splitlines() if line.startswith(field + " ")
    )


def _not_ok(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [f for f in report["findings"] if f["severity"] != "ok"]


def test_check_in_the_packing_environment_is_clean(bundle: Path) -> None:
    result = run_cli("check", bundle)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["FIELD", "RECORDED", "CURRENT", "SEVERITY"]
    rows = lines[1 : lines.index("")]
    assert [row.split()[0] for row in rows][:5] == [
        "keras.major",
        "keras.version",
        "keras.backend",
        "tensorflow.version",
        "tensorflow.build",
    ]
    assert all(row.endswith("  ok") for row in rows)
    assert lines[-1] == "verdict: compatible (policy default)"
    assert result.stderr == ""


def test_check_imports_neither_tensorflow_nor_keras(bundle: Path) -> None:
    code = (
        "import sys\nfrom kbundle.cli import main\n"
        "try:\n    main(['check', sys.argv[1], '--json'])\nexcept SystemExit as exit:\n    code = "
        "exit.code\n"
        "print('imported:', sorted(m for m in ('tensorflow', 'keras', 'tf_keras', 'jax', 'torch') "
        "if m in sys.modules), code, file=sys.stderr)\n"
    )
    done = run_python("-c", code, str(bundle), env=child_env(), timeout=120)
    assert done.stderr.strip() == "imported: [] 0", done.stderr
    assert json.loads(done.stdout)["verdict"] == "ok"


def test_a_selected_backend_without_its_library_is_refused(bundle: Path) -> None:
    result = run_cli("check", bundle, "--json", env=child_env(KERAS_BACKEND="jax"))
    assert result.returncode == 3, result.stderr
    report = json.loads(result.stdout)
    assert (report["ok"], report["verdict"], report["exit_code"], report["summary"]) == (
        False,
        "error",
        3,
        "incompatible: 2 errors",
    )
    assert _not_ok(report) == [
        {
            "location": "keras.backend",
            "problem": "backend differs",
            "severity": "info",
            "expected": "tensorflow",
            "actual": "jax",
            "why": "a .keras model of built-in layers loads on any backend; results may differ in "
            "the last digits",
            "fix": "set KERAS_BACKEND=tensorflow",
        },
        {
            "location": "libraries.jax",
            "problem": "not installed",
            "severity": "error",
            "actual": "not installed",
            "why": "the jax backend runs on it",
            "fix": "install jax",
        },
        {
            "location": "libraries.jaxlib",
            "problem": "not installed",
            "severity": "error",
            "actual": "not installed",
            "why": "the jax backend runs on it",
            "fix": "install jaxlib",
        },
    ]


def test_keras_2_selected_cannot_load_a_keras_3_bundle(bundle: Path) -> None:
    keras_version = kbundle.inspect(bundle).manifest.environment.keras.version  # type: ignore[union-attr]
    result = run_cli("check", bundle, env=child_env(TF_USE_LEGACY_KERAS="1"))
    assert_clean_failure(result, 3)
    assert result.stderr.splitlines()[0] == (
        f"kbundle: error: this environment cannot load {bundle} under the default policy: "
        "keras.major: Keras generation "
        "differs (expected Keras 3 (keras), found Keras 2 (tf-keras)); unset TF_USE_LEGACY_KERAS "
        "so that the installed "
        f"Keras 3 is used, or install keras=={keras_version}"
    )
    assert _row(result.stdout, "keras.major") == [
        "keras.major",
        "Keras 3 (keras)",
        "Keras 2 (tf-keras)",
        "error",
    ]
    assert result.stdout.splitlines()[-1] == "verdict: incompatible: 1 error (policy default)"


def test_unpack_refuses_an_incompatible_environment_unless_ignored(
    bundle: Path, tmp_path: Path
) -> None:
    legacy = child_env(TF_USE_LEGACY_KERAS="1")
    refused = run_cli("unpack", bundle, "-d", tmp_path / "out", env=legacy)
    assert_clean_failure(refused, 3)
    assert refused.stderr.startswith(
        f"kbundle: error: this environment cannot load {bundle} under the default policy: "
        "keras.major"
    )
    assert "--ignore-env loads anyway" in refused.stderr
    assert not (tmp_path / "out").exists()

    loaded = run_cli("unpack", bundle, "-d", tmp_path / "out", "--ignore-env", env=legacy)
    assert loaded.returncode == 0, loaded.stderr
    concerns = [line for line in loaded.stderr.splitlines() if line.startswith("kbundle: ")]
    assert concerns == [
        "kbundle: ignored error: environment keras.major: Keras generation differs (expected Keras "
        "3 (keras), found Keras 2 (tf-keras))"
    ]
    assert "model loads: Sequential 'tiny_sequential'" in loaded.stderr
    assert (
        "probe: outputs match the recorded ones (max abs diff 0, max rel diff 0; within rtol "
        "0.0001, atol 1e-05)" in loaded.stderr
    )


def test_unpack_no_load_says_once_what_a_load_would_meet(bundle: Path, tmp_path: Path) -> None:
    # Nothing loads with --no-load, so nothing is refused or "ignored": one note, not one
    # "ignored error" line per difference.
    legacy = child_env(TF_USE_LEGACY_KERAS="1")
    result = run_cli("unpack", bundle, "-d", tmp_path / "out", "--no-load", env=legacy)
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("kbundle: ")] == [
        "kbundle: note: not loaded (--no-load); this environment differs from the recorded one: "
        f"1 error (keras.major) would refuse a load; 'kbundle check {bundle}' explains each"
    ]
    assert "ignored error" not in result.stderr


def test_unpack_json_reports_every_environment_finding_and_the_probe(
    bundle: Path, tmp_path: Path
) -> None:
    result = run_cli("unpack", bundle, "-d", tmp_path / "out", "--json")
    assert result.returncode == 0, result.stderr
    environment = json.loads(result.stdout)["environment"]
    assert {f["severity"] for f in environment} == {"ok"}
    assert environment[-1] == {
        "location": "probe",
        "problem": "outputs match the recorded ones",
        "severity": "ok",
        "expected": "within rtol 0.0001, atol 1e-05",
        "actual": "max abs diff 0, max rel diff 0",
    }


def test_configuration_in_pyproject_and_on_the_command_line(bundle: Path, tmp_path: Path) -> None:
    keras_home = tmp_path / "keras-home"
    keras_home.mkdir()
    (keras_home / "keras.json").write_text(
        json.dumps({"floatx": "float64", "backend": "tensorflow"})
    )
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text('[tool.kbundle]\npolicy = "strict"\n')
    env = child_env(KERAS_HOME=str(keras_home))

    strict = run_cli("check", bundle, "--json", env=env, cwd=project)
    assert strict.returncode == 3
    report = json.loads(strict.stdout)
    assert (report["policy"], report["config"]) == ("strict", str(project / "pyproject.toml"))
    assert [
        (f["location"], f["severity"], f["expected"], f["actual"]) for f in _not_ok(report)
    ] == [("keras.floatx", "error", "float32", "float64")]

    default = run_cli("check", bundle, "--policy", "default", env=env, cwd=project)
    assert default.returncode == 0, default.stderr
    assert "keras.floatx [info]: Keras configuration differs" in default.stdout

    (project / "pyproject.toml").write_text(
        '[tool.kbundle]\npolicy = "strict"\n[tool.kbundle.severity]\n"keras.floatx" = "warn"\n'
    )
    configured = run_cli("check", bundle, env=env, cwd=project)
    assert configured.returncode == 0, configured.stderr
    assert (
        "keras.floatx [warn]: Keras configuration differs (severity set by "
        f"{project / 'pyproject.toml'})" in configured.stdout
    )
    assert (
        configured.stdout.splitlines()[-1]
        == f"verdict: compatible with 1 warning (policy strict from {project / 'pyproject.toml'})"
    )

    overridden = run_cli("check", bundle, "--severity", "keras.*=error", env=env, cwd=project)
    assert_clean_failure(overridden, 3)
    assert (
        "keras.floatx [error]: Keras configuration differs (severity set by --severity)"
        in overridden.stdout
    )


def test_a_tf_keras_h5_bundle_under_keras_3(tmp_path: Path) -> None:
    script = (
        "import sys, tf_keras, kbundle\n"
        "model = tf_keras.Sequential([tf_keras.Input((3,)), tf_keras.layers.Dense(2)])\n"
        "model.save(sys.argv[1] + '/legacy.h5')\n"
        "kbundle.pack(sys.argv[1] + '/legacy.h5', sys.argv[1] + '/legacy.kbundle', probe=False)\n"
    )
    done = run_python(
        "-c", script, str(tmp_path), env=child_env(TF_USE_LEGACY_KERAS="1"), timeout=300
    )
    assert done.returncode == 0, done.stderr
    bundle = tmp_path / "legacy.kbundle"
    result = run_cli("check", bundle, "--json")
    assert result.returncode == 0, result.stderr
    tf_keras_version = kbundle.inspect(bundle).manifest.environment.keras.version  # type: ignore[union-attr]
    assert _not_ok(json.loads(result.stdout)) == [
        {
            "location": "keras.major",
            "problem": "Keras generation differs",
            "severity": "warn",
            "expected": "Keras 2 (tf-keras)",
            "actual": "Keras 3 (keras)",
            "why": "Keras 3 reads legacy .h5 files of built-in layers, but custom layers and "
            "optimizers written for Keras 2 often fail",
            "fix": "set TF_USE_LEGACY_KERAS=1 so that the installed tf-keras is used, or install "
            f"tf-keras=={tf_keras_version} (with --no-deps, or it replaces tensorflow-cpu)",
        }
    ]
    assert run_cli("check", bundle, "--policy", "strict").returncode == 3
    unpacked = run_cli("unpack", bundle, "-d", tmp_path / "out")
    assert unpacked.returncode == 0, unpacked.stderr
    assert (
        "kbundle: warning: environment keras.major: Keras generation differs (expected Keras 2 "
        "(tf-keras), found Keras 3 (keras))" in unpacked.stderr
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("--severity", "keras.bakend=warn"),
            "kbundle: error: --severity: no compatibility field matches 'keras.bakend'",
        ),
        (("--policy", "loose"), None),
    ],
)
def test_bad_options_are_usage_errors(
    bundle: Path, args: tuple[str, ...], message: str | None
) -> None:
    result = run_cli("check", bundle, *args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    if message:
        assert result.stderr.startswith(message)


def test_check_of_a_file_that_is_not_a_bundle(tmp_path: Path) -> None:
    path = tmp_path / "model.kbundle"
    path.write_bytes(b"not a bundle at all")
    assert_clean_failure(run_cli("check", path), 2)


def test_load_refuses_or_warns_once_in_python(
    bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TF_USE_LEGACY_KERAS", "1")  # this process now reports tf-keras as its Keras
    with pytest.raises(kbundle.EnvironmentMismatchError) as refused:
        kbundle.load(bundle)
    assert [f.location for f in refused.value.findings] == ["keras.major"]
    expected = (
        f"{bundle}: the environment differs from the one it was packed in: keras.major: Keras "
        "generation differs{} (expected Keras 3 (keras), found Keras 2 (tf-keras)) [{}] ('kbundle "
        "check' explains each)"
    )
    with pytest.warns(kbundle.EnvironmentWarning) as warned:
        model = kbundle.load(bundle, env_severity=["keras.major=warn"])
    assert [str(w.message) for w in warned] == [
        expected.format(" (severity set by env_severity)", "warn")
    ]
    assert warned[0].filename == __file__  # attributed to the caller of kbundle.load
    assert model.name == "tiny_sequential"
    with pytest.warns(kbundle.EnvironmentWarning) as ignored:
        kbundle.load(bundle, ignore_env=True, probe=False)
    assert [str(w.message) for w in ignored] == [expected.format("", "error")]


def test_check_says_it_reads_only_the_manifest_and_verifies_on_request(
    bundle: Path, tmp_path: Path
) -> None:
    data = bytearray(bundle.read_bytes())
    data[-5] ^= 0x01  # inside the trailer: the manifest still reads
    damaged = tmp_path / "damaged.kbundle"
    damaged.write_bytes(bytes(data))

    plain = run_cli("check", damaged)
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.splitlines()[-2:] == [
        "integrity: not verified (check reads only the manifest; 'kbundle verify' or "
        "'kbundle check --verify' proves the bundle intact)",
        "verdict: compatible (policy default)",
    ]
    assert json.loads(run_cli("check", damaged, "--json").stdout)["verified"] is False

    verified = run_cli("check", damaged, "--verify")
    assert_clean_failure(verified, 1)
    assert verified.stderr.startswith(f"kbundle: error: {damaged} failed verification: ")
    assert verified.stdout == ""

    intact = run_cli("check", bundle, "--verify")
    assert intact.returncode == 0, intact.stderr
    assert intact.stdout.splitlines()[-2] == ("integrity: verified, every member's SHA-256 matches")
    assert json.loads(run_cli("check", bundle, "--verify", "--json").stdout)["verified"] is True


def _two_tensorflows(root: Path, files_of: str) -> Path:
    """An interpreter in which plain ``tensorflow`` is installed beside ``tensorflow-cpu``
    (as keras-hub's tensorflow-text pulls it), the shared ``tensorflow`` package holding
    ``files_of``'s files: both distributions' metadata (copied from the real tensorflow-cpu's)
    in a site directory ahead of this environment's, each RECORD listing the real package's
    ``build_info.py``, with its real hash for ``files_of`` and a stale one for the other."""
    import base64
    import hashlib
    import os

    from kbundle.env.distributions import find

    real = find("tensorflow-cpu")
    assert real is not None
    build_info = real.locate("tensorflow/python/platform/build_info.py")
    digest = hashlib.sha256(build_info.read_bytes()).digest()
    actual = base64.urlsafe_b64encode(digest).decode().rstrip("=")
    python = python_with_site(root, {})
    site = Path(
        run_python(
            "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", python=python
        ).stdout.strip()
    )
    for name in ("tensorflow", "tensorflow-cpu"):
        info = site / f"{name.replace('-', '_')}-{real.version}.dist-info"
        info.mkdir()
        metadata = (real.path / "METADATA").read_text()
        (info / "METADATA").write_text(
            re.sub(r"(?m)^Name: .*$", f"Name: {name}", metadata, count=1)
        )
        recorded = actual if name == files_of else "stale" + actual[5:]
        (info / "RECORD").write_text(
            f"{os.path.relpath(build_info, site)},sha256={recorded},{build_info.stat().st_size}\n"
        )
    return python


def test_two_tensorflows_are_said_at_pack_and_the_imported_one_recorded(
    tmp_path: Path, saved_keras_file: Path
) -> None:
    for files_of, probe in (("tensorflow", "--probe"), ("tensorflow-cpu", "--no-probe")):
        (tmp_path / files_of).mkdir()
        python = _two_tensorflows(tmp_path / files_of, files_of)
        bundle = tmp_path / f"{files_of}.kbundle"
        done = run_python(
            "-m", "kbundle", "pack", saved_keras_file, "-o", bundle, probe, "-q", python=python
        )
        assert done.returncode == 0, done.stderr
        version = kbundle.inspect(bundle).manifest.environment.distributions["tensorflow-cpu"]
        assert (
            f"kbundle: note: 2 TensorFlow distributions shadow each other (tensorflow-cpu "
            f"{version}, tensorflow {version}): they share one tensorflow package, whose files "
            f"are {files_of}'s (recorded); uninstall all of them and install only the one you "
            "want"
        ) in done.stderr.splitlines(), done.stderr
        manifest = kbundle.inspect(bundle).manifest
        assert manifest.environment.tensorflow is not None
        assert manifest.environment.tensorflow.distribution == files_of
        assert manifest.environment.tensorflow.build_info["is_cuda_build"] is False
        extracted = kbundle.unpack(bundle, tmp_path / f"{files_of}-files").path
        pins = (extracted / "env/requirements.txt").read_text().splitlines()
        assert [p for p in pins if p.startswith("tensorflow")] == [f"{files_of}=={version}"]

        # The same environment is not called different; this one (one TensorFlow) is.
        same = run_python("-m", "kbundle", "check", bundle, "--json", python=python)
        assert same.returncode == 0, same.stderr
        assert _not_ok(json.loads(same.stdout)) == []
        other = json.loads(run_cli("check", bundle, "--json").stdout)
        differing = {f["location"]: f["severity"] for f in _not_ok(other)}
        if files_of == "tensorflow":
            assert differing == {"tensorflow.distribution": "info"}
        else:
            assert differing == {}
