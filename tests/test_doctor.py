"""``kbundle doctor``: each broken model diagnosed into the right class with the right fix.

Files are made here (or by tf-keras in conftest's ``keras2_files``) and damaged here; doctor
runs as the real CLI in a subprocess, and its own child process really loads the model.
Damaged files are diagnosed before the child would load them, so only the cases that reach
the load import TensorFlow.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    assert_clean_failure,
    python_with_site,
    run_cli,
    run_python,
    zip_member_data_offset,
)

import kbundle

CLASSES = ("corruption", "serialization", "environment")


def _doctor(
    target: Path,
    *args: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    python: Path | None = None,
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """Run ``kbundle doctor --json`` (with ``python``, else this interpreter) and return the
    process and its parsed report."""
    done = run_python(
        "-m",
        "kbundle",
        "doctor",
        target,
        "--json",
        *args,
        python=python or sys.executable,
        cwd=cwd,
        env=env,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done, json.loads(done.stdout)


def _problems(report: dict[str, Any], name: str) -> list[str]:
    """Each finding of class ``name`` as ``location: problem``."""
    return [f"{f['location']}: {f['problem']}" for f in report["findings"][name]]


def _only(report: dict[str, Any], name: str) -> None:
    for other in CLASSES:
        if other != name:
            assert report["findings"][other] == [], (other, report["findings"][other])


# --------------------------------------------------------------------------------------------
# Corruption: diagnosed without loading


def test_truncated_h5(keras2_files: Path, tmp_path: Path) -> None:
    data = (keras2_files / "plain.h5").read_bytes()
    path = tmp_path / "cut.h5"
    path.write_bytes(data[: len(data) // 2])

    done, report = _doctor(path)

    assert done.returncode == 1
    assert report["failure_class"] == "corruption" and report["loads"] is False
    assert report["findings"]["corruption"] == [
        {
            "location": "cut.h5",
            "problem": "HDF5 file is truncated",
            "severity": "error",
            "expected": f"{len(data)} bytes (the superblock's end-of-file address)",
            "actual": f"{len(data) // 2} bytes",
            "why": "an interrupted save or copy cuts a file short",
            "fix": "the file is incomplete; copy it again or save the model again",
        }
    ]
    assert report["load"] == {
        "attempted": False,
        "ok": False,
        "skipped": "the file is corrupt or unsafe (see corruption); Keras was not run on it",
        "needs_trust": False,
    }
    _only(report, "corruption")


def test_zeroed_hdf5_signature_text_report(keras2_files: Path, tmp_path: Path) -> None:
    data = (keras2_files / "plain.h5").read_bytes()
    path = tmp_path / "zeroed.h5"
    path.write_bytes(bytes(8) + data[8:])

    done = run_cli("doctor", path)

    assert_clean_failure(done, 1)
    assert done.stdout.splitlines() == [
        f"doctor        {path} (model, format h5)",
        "corruption    1 problem(s), 0 note(s)",
        "  - [error] zeroed.h5: wrong magic bytes: no HDF5 signature (expected 894844460d0a1a0a, found 0000000000000000)",
        "      fix: the file is damaged at its start; restore it from a backup or save the model again",
        "serialization no problems found",
        "environment   no problems found",
        "load          not attempted: the file is corrupt or unsafe (see corruption); Keras was not run on it",
        "verdict       does not load: corruption",
    ]
    assert done.stderr.strip() == (
        f"kbundle: error: {path} does not load (corruption): zeroed.h5: wrong magic bytes: no HDF5 "
        "signature (expected 894844460d0a1a0a, found 0000000000000000); the file is damaged at its "
        "start; restore it from a backup or save the model again"
    )


@pytest.mark.parametrize(
    ("signature", "message"),
    [
        (b"TREE", "RuntimeError: Unable to get group info (wrong B-tree signature)"),
        (b"HEAP", "RuntimeError: Link iteration failed (bad local heap signature)"),
    ],
)
def test_flipped_hdf5_metadata_bytes(
    signature: bytes, message: str, keras2_files: Path, tmp_path: Path
) -> None:
    data = bytearray((keras2_files / "plain.h5").read_bytes())
    at = data.find(signature)  # the root group's B-tree node / local heap
    data[at] ^= 0xFF
    path = tmp_path / "flipped.h5"
    path.write_bytes(bytes(data))

    done, report = _doctor(path)

    assert done.returncode == 1
    assert _problems(report, "corruption") == [
        f"flipped.h5:/: unreadable HDF5 structure: {message}"
    ]
    assert (
        report["findings"]["corruption"][0]["fix"]
        == "the file is corrupt; restore it from a backup or save the model again"
    )
    assert report["load"]["attempted"] is False


def _flip_member(path: Path, member: str, at: int) -> tuple[int, Path]:
    """Flip one byte ``at`` bytes into ``member``'s stored data; return its recorded CRC."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
    data = bytearray(path.read_bytes())
    start = zip_member_data_offset(path, member)
    data[start + at] ^= 0x20
    damaged = path.with_name(f"damaged-{path.name}")
    damaged.write_bytes(bytes(data))
    return info.CRC, damaged


@pytest.mark.parametrize(("member", "at"), [("model.weights.h5", 3000), ("metadata.json", 5)])
def test_keras_file_with_bad_crc_names_the_member(
    member: str, at: int, saved_keras_file: Path
) -> None:
    crc, damaged = _flip_member(saved_keras_file, member, at)

    done, report = _doctor(damaged)

    assert done.returncode == 1
    (finding,) = report["findings"]["corruption"]
    assert finding["location"] == f"damaged-model.keras/{member}"
    assert finding["problem"] == "bad CRC-32: the member's bytes changed after it was written"
    assert finding["expected"] == f"crc32 {crc:08x}"
    assert finding["actual"].startswith("crc32 ") and finding["actual"] != finding["expected"]
    assert finding["fix"] == "restore the file from a backup or save the model again"
    _only(report, "corruption")


def test_truncated_saved_model_graph(tmp_path: Path, sequential_model: Any) -> None:
    directory = tmp_path / "exported"
    sequential_model.export(directory, format="tf_saved_model", verbose=False)
    pb = directory / "saved_model.pb"
    pb.write_bytes(pb.read_bytes()[:500])

    done, report = _doctor(directory)

    assert done.returncode == 1
    (problem,) = _problems(report, "corruption")
    assert problem.startswith(
        "exported/saved_model.pb: not a valid SavedModel protobuf: field 2 declares "
    )
    assert problem.endswith(" bytes but 494 remain at byte 2")


def test_flipped_savedmodel_weights_found_by_the_real_load(
    tmp_path: Path, sequential_model: Any
) -> None:
    directory = tmp_path / "exported"
    sequential_model.export(directory, format="tf_saved_model", verbose=False)
    shard = directory / "variables" / "variables.data-00000-of-00001"
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF  # no structure changes: only TensorFlow's per-tensor checksum sees it
    shard.write_bytes(bytes(data))

    done, report = _doctor(directory, "--trust-code")

    assert done.returncode == 1
    assert report["load"]["attempted"] is True and report["load"]["error_type"] == "DataLossError"
    assert report["load"]["failure_class"] == "corruption"
    (finding,) = report["findings"]["corruption"]
    assert finding["location"] == "load" and "Checksum does not match" in finding["problem"]
    assert (
        finding["fix"] == "restore the file from a backup, copy it again, or save the model again"
    )


# --------------------------------------------------------------------------------------------
# Serialization: resolved in the child, then the real load


def _custom_layer_module(tmp_path: Path) -> Any:
    """A module ``kbtest_layers`` in ``tmp_path`` defining a registered custom layer."""
    source = tmp_path / "kbtest_layers.py"
    source.write_text(
        "import keras\n\n"
        "@keras.saving.register_keras_serializable(package='kbtest')\n"
        "class Scale(keras.layers.Layer):\n"
        "    def __init__(self, factor=2.0, **kwargs):\n"
        "        super().__init__(**kwargs)\n"
        "        self.factor = factor\n"
        "    def call(self, inputs):\n"
        "        return inputs * self.factor\n"
        "    def get_config(self):\n"
        "        return {**super().get_config(), 'factor': self.factor}\n"
    )
    spec = importlib.util.spec_from_file_location("kbtest_layers", source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["kbtest_layers"] = module
    spec.loader.exec_module(module)
    return module


def test_unregistered_custom_layer(tmp_path: Path, keras: Any) -> None:
    layers = _custom_layer_module(tmp_path)
    model = keras.Sequential(
        [keras.Input((3,)), layers.Scale(4.0), keras.layers.Dense(1)], name="custom"
    )
    path = tmp_path / "custom.keras"
    model.save(path)
    # kbtest_layers is installed where doctor runs (importable there, never imported).
    python = python_with_site(
        tmp_path, {"kbtest_layers.py": (tmp_path / "kbtest_layers.py").read_text()}
    )

    done, report = _doctor(path, python=python)

    assert done.returncode == 5
    assert report["failure_class"] == "serialization"
    static, load = report["findings"]["serialization"]
    assert static == {
        "location": "model.config.layers[1]",
        "problem": "class 'Scale' cannot be resolved here (module 'kbtest_layers', registered name 'kbtest>Scale')",
        "severity": "error",
        "why": "Keras builds every object the config names from a registered or built-in class, "
        "looked up by the registered name the file records",
        "fix": "'kbtest_layers' is installed but doctor never imports it: import it before loading so "
        "its registration runs, or load with custom_objects={'kbtest>Scale': Scale}",
    }
    assert load["location"] == "load"
    assert load["problem"].startswith(
        "the real load failed: TypeError: Could not locate class 'Scale'."
    )
    assert load["fix"] == static["fix"]  # the finding that explains the failure, not a generic one
    assert report["load"]["failure_class"] == "serialization"
    _only(report, "serialization")


def test_lambda_layer(tmp_path: Path, keras: Any) -> None:
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Lambda(lambda t: t * 2), keras.layers.Dense(1)]
    )
    path = tmp_path / "lambda.keras"
    model.save(path)

    done, report = _doctor(path)

    assert done.returncode == 5
    fix = (
        "if you trust the file, load it with safe_mode=False (kbundle: --unsafe-lambda); better, "
        "replace the Lambda with a registered custom layer and save the model again"
    )
    assert [
        (f["location"], f["problem"], f["fix"]) for f in report["findings"]["serialization"]
    ] == [
        ("model.config.layers[1].config.function", "Lambda layer holds Python bytecode", fix),
        (
            "load",
            "the real load failed: ValueError: Requested the deserialization of a `Lambda` layer whose "
            "`function` is a Python lambda.",
            fix,
        ),
    ]
    _only(report, "serialization")


# --------------------------------------------------------------------------------------------
# Environment


def test_keras2_file_loads_through_tf_keras_with_environment_warnings(keras2_files: Path) -> None:
    done, report = _doctor(keras2_files / "functional.keras")

    assert done.returncode == 0, done.stderr
    assert report["loads"] is True and report["failure_class"] is None
    assert report["load"]["loader"] == "tf-keras"
    assert [
        (f["location"], f["problem"], f["severity"]) for f in report["findings"]["environment"]
    ] == [
        (
            "model",
            "class 'Functional' cannot be resolved here (module 'tf_keras.src.engine.functional', "
            "registered name 'Functional') — it exists only in Keras 2",
            "warn",
        ),
        ("saved_by.keras_version", "written by Keras 2, loading under Keras 3", "warn"),
    ]
    assert (
        report["findings"]["environment"][1]["fix"]
        == "tf-keras 2.21.0 is installed: kbundle loads with it what Keras 3 cannot"
    )
    _only(report, "environment")


def test_keras2_file_without_tf_keras(keras2_files: Path, tmp_path: Path) -> None:
    python = python_with_site(  # an environment whose tf_keras does not import
        tmp_path,
        {
            "tf_keras/__init__.py": "raise ModuleNotFoundError(\"No module named 'tf_keras'\", "
            "name='tf_keras')\n"
        },
    )

    done, report = _doctor(keras2_files / "tfop.h5", python=python)

    assert done.returncode == 3
    assert report["failure_class"] == "environment"
    assert _problems(report, "environment") == [
        "model.config.layers[1]: class 'TFOpLambda' cannot be resolved here — it exists only in Keras 2",
        "saved_by.keras_version: written by Keras 2, loading under Keras 3",
        "load: the real load failed: ValueError: Unknown layer: 'TFOpLambda'.",
    ]
    assert report["findings"]["environment"][-1]["fix"] == (
        "the file needs Keras 2: install tf-keras (kbundle loads Keras 2 files through it when "
        "Keras 3 cannot), or rebuild the model under Keras 3 and save it as .keras"
    )


def test_gpu_only_ops_on_a_cpu_build(tmp_path: Path) -> None:
    import tensorflow as tf

    class Cudnn(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([2, 1, 3], tf.float32)])
        def __call__(self, x: Any) -> Any:
            state = tf.zeros([1, 1, 4])
            return tf.raw_ops.CudnnRNN(
                input=x, input_h=state, input_c=state, params=tf.zeros([112]), rnn_mode="lstm"
            )[0]

    directory = tmp_path / "cudnn"
    tf.saved_model.save(Cudnn(), str(directory))

    done, report = _doctor(directory, "--trust-code")  # loading a SavedModel runs its graph

    assert done.returncode == 0  # it loads; calling it is what fails on this build
    (finding,) = report["findings"]["environment"]
    assert finding["problem"] == "the graph uses GPU-only ops: CudnnRNN"
    assert finding["severity"] == "warn"
    assert finding["expected"] == "a CUDA build of TensorFlow with a GPU"
    assert "(CUDA build: False, GPUs: 0)" in finding["actual"]


def test_importing_keras_crashes(saved_keras_file: Path, tmp_path: Path) -> None:
    python = python_with_site(
        tmp_path, {"keras.py": "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n"}
    )

    done, report = _doctor(saved_keras_file, python=python)

    assert done.returncode == 3
    assert report["load"]["error_type"] == "SIGSEGV"
    assert report["load"]["error"].startswith("the child process crashed in stage 'resolve'")
    assert report["load"]["fix"] == "reinstall TensorFlow and Keras: importing them crashed"


# --------------------------------------------------------------------------------------------
# Healthy files and bundles; bad input


def test_healthy_file_is_reported_healthy(saved_keras_file: Path) -> None:
    done = run_cli("doctor", saved_keras_file)

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[2:6] == [
        "corruption    no problems found",
        "serialization no problems found",
        "environment   no problems found",
        "load          OK with keras",
    ]
    assert lines[-1] == "verdict       healthy: the model loads"
    assert "kbundle: error" not in done.stderr


def test_healthy_bundle_and_a_corrupted_one(saved_keras_file: Path, tmp_path: Path) -> None:
    bundle = kbundle.pack(saved_keras_file, tmp_path / "m.kbundle").path

    done, report = _doctor(bundle)
    assert done.returncode == 0, done.stderr
    assert (report["kind"], report["format"], report["loads"]) == ("bundle", "keras", True)

    data = bytearray(bundle.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged = tmp_path / "damaged.kbundle"
    damaged.write_bytes(bytes(data))
    done, report = _doctor(damaged)
    assert done.returncode == 1
    assert report["failure_class"] == "corruption" and report["findings"]["corruption"]
    assert (
        report["load"]["skipped"] == "the bundle failed verification; none of its files were used"
    )


def test_a_healthy_bundle_carrying_code_needs_trust_not_a_fix(
    user_project: Path, tmp_path: Path
) -> None:
    bundle = tmp_path / "m.kbundle"
    assert run_cli("pack", "model.keras", "-o", bundle, "-q", cwd=user_project).returncode == 0
    # Run where the project's code is absent, as a deploy machine would.
    untrusted = run_cli("doctor", bundle, cwd=tmp_path)
    assert_clean_failure(untrusted, 4)
    lines = untrusted.stdout.splitlines()
    assert lines[-2:] == [
        "load          not attempted: the model needs the code the bundle carries "
        "(mypkg>Scale: source), and doctor runs it only when trusted",
        "verdict       not loaded: it needs trust (--trust-code)",
    ]
    assert "does not load" not in untrusted.stdout
    assert untrusted.stderr == (
        f"kbundle: error: {bundle} was not loaded: the model needs the code the bundle carries "
        "(mypkg>Scale: source), and doctor runs it only when trusted; pass --trust-code "
        "(trust_code=True) if you trust it\n"
    )

    trusted = run_cli("doctor", bundle, "--trust-code", cwd=tmp_path)
    assert trusted.returncode == 0, trusted.stdout + trusted.stderr
    assert trusted.stdout.splitlines()[-2:] == [
        "load          OK with kbundle.load (with the bundle's own code (trusted))",
        "verdict       healthy: the model loads",
    ]
    assert (
        "  - [ok] model.config.layers[1]: class 'Scale' (module 'mypkg.mylayers', registered "
        "name 'mypkg>Scale') comes from the bundle's own code (source), trusted"
    ) in trusted.stdout.splitlines()


def test_not_a_model_and_missing_path(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello")

    done = run_cli("doctor", text)
    assert_clean_failure(done, 2)
    assert (
        f"kbundle: error: {text} is text, not a model (it starts: 'hello'); this is not a model "
        "file: find the model file it stands for" in done.stderr
    )

    done = run_cli("doctor", tmp_path / "absent.h5")
    assert_clean_failure(done, 2)
    assert f"kbundle: error: {tmp_path / 'absent.h5'} does not exist; check the path" in done.stderr
