"""The probe: a stored input and output, re-run at load, catching models that compute "
"differently."""

from __future__ import annotations

import os
import re
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import REPO, assert_clean_failure, child_env, run_cli, run_python

import kbundle
from kbundle.errors import PackError
from kbundle.models.probe import compare_probe, make_probe

pytestmark = pytest.mark.keras

_LAYER_MODULE = """
import keras

@keras.saving.register_keras_serializable(package="ProbeTest")
class Scale(keras.layers.Layer):
    def call(self, x):
        return {body}
"""


def _npz(path: Path) -> list[np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return [data[name] for name in sorted(data.files)]


def test_pack_stores_the_model_output_on_a_deterministic_input(
    tmp_path: Path, sequential_model: Any
) -> None:
    first = kbundle.pack(sequential_model, tmp_path / "a.kbundle").manifest
    kbundle.pack(sequential_model, tmp_path / "b.kbundle")
    assert first.probe == kbundle.container.manifest.ProbeInfo(
        inputs="probe/inputs.npz", outputs="probe/outputs.npz", rtol=1e-4, atol=1e-5
    )
    assert [m.path for m in first.members if m.path.startswith("probe/")] == [
        "probe/inputs.npz",
        "probe/outputs.npz",
    ]
    a = kbundle.unpack(tmp_path / "a.kbundle", tmp_path / "a").path
    b = kbundle.unpack(tmp_path / "b.kbundle", tmp_path / "b").path
    for member in ("probe/inputs.npz", "probe/outputs.npz"):
        assert (a / member).read_bytes() == (b / member).read_bytes()  # same input, same bytes
    [inputs] = _npz(a / "probe/inputs.npz")
    [outputs] = _npz(a / "probe/outputs.npz")
    assert (inputs.shape, inputs.dtype, outputs.shape) == ((2, 10), np.float32, (2, 1))
    np.testing.assert_array_equal(outputs, np.asarray(sequential_model(inputs, training=False)))
    with zipfile.ZipFile(a / "probe/inputs.npz") as archive:
        assert {info.date_time for info in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}


def test_several_inputs_and_outputs_and_integer_inputs(
    tmp_path: Path, functional_model: Any, keras: Any
) -> None:
    kbundle.pack(functional_model, tmp_path / "two.kbundle")
    model = kbundle.load(tmp_path / "two.kbundle")
    assert model.name == "two_in_two_out"
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    embedded = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(2, 3)(tokens))
    kbundle.pack(keras.Model(tokens, embedded), tmp_path / "tokens.kbundle")
    root = kbundle.unpack(tmp_path / "tokens.kbundle", tmp_path / "tokens", load_model=True).path
    [ids] = _npz(root / "probe/inputs.npz")
    assert (ids.shape, ids.dtype, set(np.unique(ids)) <= {0, 1}) == ((2, 4), np.int32, True)
    unpacked = kbundle.unpack(tmp_path / "two.kbundle", tmp_path / "two", load_model=True)
    probe = unpacked.environment[-1]
    assert (probe.location, probe.severity, probe.actual) == (
        "probe",
        kbundle.Severity.OK,
        "max abs diff 0, max rel diff 0",
    )


def test_the_comparison_uses_the_stored_tolerance(tmp_path: Path, sequential_model: Any) -> None:
    info, _ = make_probe(sequential_model, sequential_model_specs(sequential_model), tmp_path)
    [outputs] = _npz(tmp_path / info.outputs)
    exact = compare_probe(sequential_model, tmp_path, info)
    assert (exact.within, exact.max_abs, exact.describe()) == (
        True,
        0.0,
        "max abs diff 0, max rel diff 0",
    )
    for delta, within in ((1e-6, True), (1e-2, False)):
        shifted = outputs.astype("float64") + delta
        np.savez(tmp_path / info.outputs, output_0=shifted)
        result = compare_probe(sequential_model, tmp_path, info)
        assert result.within is within
        assert result.max_abs == pytest.approx(delta, rel=1e-3)
    np.savez(tmp_path / info.outputs, output_0=np.full_like(outputs, np.nan))
    assert compare_probe(sequential_model, tmp_path, info).within is False
    np.savez(tmp_path / info.outputs, output_0=outputs[:1])
    assert (
        compare_probe(sequential_model, tmp_path, info).describe()
        == "output 0 has shape (2, 1), recorded (1, 1)"
    )


def sequential_model_specs(model: Any) -> list[kbundle.container.manifest.TensorSpec]:
    from kbundle.models.keras_io import describe_live_model

    return describe_live_model(model)["inputs"]  # type: ignore[no-any-return]


def _layer_dir(tmp_path: Path, name: str, body: str) -> Path:
    """An installed distribution ``scale-layers 1.0.0`` providing the layer: its code is not
    copied into bundles (transport ``distribution``), so what runs at load is whatever is
    installed there, which the probe must check."""
    directory = tmp_path / name
    directory.mkdir()
    (directory / "scale_layers.py").write_text(_LAYER_MODULE.format(body=body))
    info = directory / "scale_layers-1.0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: scale-layers\nVersion: 1.0.0\n")
    (info / "top_level.txt").write_text("scale_layers\n")
    (info / "RECORD").write_text(
        "scale_layers.py,,\nscale_layers-1.0.0.dist-info/METADATA,,\n"
        "scale_layers-1.0.0.dist-info/top_level.txt,,\nscale_layers-1.0.0.dist-info/RECORD,,\n"
    )
    return directory


def _with_layers(directory: Path) -> dict[str, str]:
    return child_env(PYTHONPATH=os.pathsep.join([str(REPO), str(directory)]))


@pytest.mark.slow  # five child processes, each importing TensorFlow
def test_a_custom_layer_whose_call_changed_is_caught(tmp_path: Path) -> None:
    packed_with = _layer_dir(tmp_path, "v1", "x * 2.0")
    changed = _layer_dir(tmp_path, "v2", "x * 2.0 + 0.5")
    bundle = tmp_path / "scaled.kbundle"
    pack_script = (
        "import sys, keras, kbundle, scale_layers\nkeras.utils.set_random_seed(0)\n"
        "model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3), "
        "scale_layers.Scale()])\n"
        "kbundle.pack(model, sys.argv[1])\n"
    )
    done = run_python("-c", pack_script, str(bundle), env=_with_layers(packed_with), timeout=300)
    assert done.returncode == 0, done.stderr
    # The CLI with the layer module imported first, as an application that defines it would.
    cli = [
        "-c",
        "import sys, scale_layers\nfrom kbundle.cli import main\nmain(sys.argv[1:])",
        "unpack",
        str(bundle),
    ]

    def unpack(directory: Path, destination: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return run_python(
            *cli,
            "-d",
            str(tmp_path / destination),
            *extra,
            env=_with_layers(directory),
            timeout=300,
        )

    same = unpack(packed_with, "same")
    assert same.returncode == 0, same.stderr
    assert "probe: outputs match the recorded ones (max abs diff 0, max rel diff 0" in same.stderr

    caught = unpack(changed, "changed")
    assert_clean_failure(caught, 3)
    first = caught.stderr.splitlines()[0]
    assert re.fullmatch(
        rf"kbundle: error: the model loaded from {re.escape(str(bundle))} computes different "
        r"outputs than when it was packed: max abs diff 0\.5, max rel diff [0-9.e+-]+ "
        r"\(expected within rtol 0\.0001, atol 1e-05\); likely cause: a changed definition of "
        r"ProbeTest>Scale, which came from installed code, not the bundle; --no-probe "
        r"\(probe=False\) skips the probe",
        first,
    ), first
    assert not (tmp_path / "changed").exists()

    skipped = unpack(changed, "skipped", "--no-probe")
    assert skipped.returncode == 0, skipped.stderr
    assert "probe:" not in skipped.stderr

    tolerated = unpack(changed, "tolerated", "--severity", "probe=warn")
    assert tolerated.returncode == 0, tolerated.stderr
    assert (
        "kbundle: warning: environment probe: the loaded model computes different outputs than the "
        "packed model (severity set by --severity)" in tolerated.stderr
    )


def test_packing_a_file_probes_it_unless_told_not_to(
    tmp_path: Path, saved_keras_file: Path
) -> None:
    probed = run_cli("pack", saved_keras_file, "-o", tmp_path / "probed.kbundle", "-q")
    assert probed.returncode == 0, probed.stderr
    assert kbundle.inspect(tmp_path / "probed.kbundle").manifest.probe is not None
    script = (
        "import sys, kbundle\nresult = kbundle.pack(sys.argv[1], sys.argv[2], probe=False)\n"
        "print(result.manifest.probe, [m for m in ('tensorflow', 'keras') if m in sys.modules])\n"
    )
    done = run_python(
        "-c",
        script,
        str(saved_keras_file),
        str(tmp_path / "plain.kbundle"),
        env=child_env(),
        timeout=120,
    )
    assert (done.returncode, done.stdout) == (0, "None []\n"), done.stderr


def test_a_subclassed_model_never_called_is_packed_with_a_note(tmp_path: Path, keras: Any) -> None:
    class Doubler(keras.Model):  # subclassed and never called: no input shape anywhere
        def call(self, x):  # type: ignore[no-untyped-def]
            return x * 2

    model = Doubler()
    with pytest.warns(UserWarning, match="has not yet been built"):
        result = kbundle.pack(model, tmp_path / "doubler.kbundle")
    assert result.manifest.probe is None
    reason = (
        "the model's input signature (shapes and numeric dtypes) is unknown: a subclassed model "
        "that was never called (call it once on real data first)"
    )
    assert result.notes == (f"no probe stored: {reason}",)
    with pytest.raises(PackError) as caught, pytest.warns(UserWarning):
        kbundle.pack(model, tmp_path / "asked.kbundle", probe=True)
    assert (
        str(caught.value) == f"cannot probe the model: {reason}; pack with --no-probe (probe=False)"
    )
    assert not (tmp_path / "asked.kbundle").exists()


_SUBCLASSED_MODULE = """
import keras

@keras.saving.register_keras_serializable(package="ProbeTest")
class Summer(keras.Model):
    def call(self, inputs):
        return {"sum": inputs["a"] * 2.0 + keras.ops.sum(inputs["b"], axis=-1, keepdims=True)}
"""


def test_a_subclassed_model_that_was_called_is_probed(tmp_path: Path) -> None:
    """Keras records the shapes a subclassed model was built for (its build config, saved
    with it): the probe uses them, at pack and again in a fresh process at load."""
    (tmp_path / "summer_models.py").write_text(_SUBCLASSED_MODULE)
    env = child_env(PYTHONPATH=os.pathsep.join([str(REPO), str(tmp_path)]))
    pack_script = (
        "import sys, numpy as np, kbundle, summer_models\n"
        "model = summer_models.Summer()\n"
        "model({'a': np.ones((1, 1), 'float32'), 'b': np.ones((1, 3), 'float32')})\n"
        "result = kbundle.pack(model, sys.argv[1])\n"
        "print(result.notes, result.manifest.model.inputs, result.manifest.probe is not None)\n"
    )
    bundle = tmp_path / "summer.kbundle"
    done = run_python("-c", pack_script, bundle, env=env, cwd=tmp_path)
    assert (done.returncode, done.stdout) == (0, "() None True\n"), done.stderr
    load_script = (
        "import sys, kbundle\n"
        "result = kbundle.unpack(sys.argv[1], sys.argv[2], trust_code=True, load_model=True)\n"
        "print([(f.severity.name, f.actual) for f in result.environment if f.location == 'probe'])\n"
    )
    done = run_python("-c", load_script, bundle, tmp_path / "out", env=child_env())
    assert (done.returncode, done.stdout) == (
        0,
        "[('OK', 'max abs diff 0, max rel diff 0')]\n",
    ), done.stderr
    a, b = _npz(tmp_path / "out/probe/inputs.npz")  # flattened in Keras's order: a, b
    assert (a.shape, b.shape) == ((2, 1), (2, 3))
    [total] = _npz(tmp_path / "out/probe/outputs.npz")
    np.testing.assert_array_equal(total, a * 2.0 + b.sum(axis=-1, keepdims=True))


def _text_model(keras: Any) -> Any:
    """Dict inputs declared in non-alphabetical order (token_ids, segment_ids, padding_mask),
    as keras-hub's text backbones take them, with a masked mean over the sequence."""
    keras.utils.set_random_seed(3)
    tokens = keras.Input((None,), dtype="int32", name="token_ids")
    segments = keras.Input((None,), dtype="int32", name="segment_ids")
    mask = keras.Input((None,), dtype="int32", name="padding_mask")
    embedded = keras.layers.Embedding(7, 4)(tokens) + keras.layers.Embedding(2, 4)(segments)
    weights = keras.ops.expand_dims(keras.ops.cast(mask, "float32"), -1)
    pooled = keras.ops.sum(embedded * weights, axis=1) / (keras.ops.sum(weights, axis=1) + 1.0)
    return keras.Model(
        {"token_ids": tokens, "segment_ids": segments, "padding_mask": mask},
        keras.layers.Dense(2, name="head")(pooled),
        name="text",
    )


def test_dict_inputs_are_fed_by_name(tmp_path: Path, keras: Any) -> None:
    model = _text_model(keras)
    # Warnings are errors here: Keras's "structure of inputs doesn't match" would fail the probe.
    result = kbundle.pack(model, tmp_path / "text.kbundle")
    assert (result.notes, result.manifest.probe is not None) == ((), True)
    assert [s.name for s in result.manifest.model.inputs or []] == [
        "padding_mask",
        "segment_ids",
        "token_ids",
    ]
    unpacked = kbundle.unpack(tmp_path / "text.kbundle", tmp_path / "text", load_model=True)
    mask, segments, tokens = _npz(unpacked.path / "probe/inputs.npz")
    [expected] = _npz(unpacked.path / "probe/outputs.npz")
    by_name = {"token_ids": tokens, "segment_ids": segments, "padding_mask": mask}
    np.testing.assert_array_equal(expected, np.asarray(model(by_name, training=False)))
    probe = next(f for f in unpacked.environment if f.location == "probe")
    assert (probe.severity, probe.actual) == (kbundle.Severity.OK, "max abs diff 0, max rel diff 0")


def test_nested_inputs_keep_their_structure(tmp_path: Path, keras: Any) -> None:
    keras.utils.set_random_seed(4)
    a, b = keras.Input((3,), name="a"), keras.Input((2,), name="b")
    c = keras.Input((4,), name="c")
    out = keras.layers.Dense(1)(keras.layers.Concatenate()([a * 2.0, b, c]))
    model = keras.Model({"pair": [a, b], "c": c}, out)
    kbundle.pack(model, tmp_path / "nested.kbundle")
    unpacked = kbundle.unpack(tmp_path / "nested.kbundle", tmp_path / "out", load_model=True)
    c_in, a_in, b_in = _npz(unpacked.path / "probe/inputs.npz")  # dict keys sorted: c, pair
    assert (c_in.shape, a_in.shape, b_in.shape) == ((2, 4), (2, 3), (2, 2))
    [expected] = _npz(unpacked.path / "probe/outputs.npz")
    np.testing.assert_array_equal(
        expected, np.asarray(model({"pair": [a_in, b_in], "c": c_in}, training=False))
    )
    probe = next(f for f in unpacked.environment if f.location == "probe")
    assert probe.severity == kbundle.Severity.OK


def test_no_probe_stored_is_said_on_the_command_line(tmp_path: Path, keras: Any) -> None:
    """Every way pack can store no probe is one 'kbundle: note:' line with the reason."""
    keras.utils.set_random_seed(5)
    images = keras.Input((1100, 1000), name="images")  # 2.2 M elements for two rows: too big
    big = keras.Model(images, keras.layers.Dense(1)(images))
    big.save(tmp_path / "big.keras")
    exported = tmp_path / "exported"
    keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)]).export(
        exported, format="tf_saved_model", verbose=False
    )
    cases = {
        "big.keras": "no probe stored: the probe input would hold 2200000 elements, more than "
        "1048576",
        "exported": "no probe stored: Keras does not load a SavedModel as a model to run it",
    }
    for name, note in cases.items():
        done = run_cli("pack", tmp_path / name, "-o", tmp_path / f"{name}.kbundle")
        assert done.returncode == 0, done.stderr
        assert f"kbundle: note: {note}" in done.stderr.splitlines(), done.stderr
        assert kbundle.inspect(tmp_path / f"{name}.kbundle").manifest.probe is None


def test_an_unzipped_keras_directory_is_probed(
    tmp_path: Path, sequential_model: Any, keras: Any
) -> None:
    keras.saving.save_model(sequential_model, tmp_path / "unzipped", zipped=False)
    done = run_cli("pack", tmp_path / "unzipped", "-o", tmp_path / "dir.kbundle")
    assert done.returncode == 0, done.stderr
    assert "no probe stored" not in done.stderr
    assert kbundle.inspect(tmp_path / "dir.kbundle").manifest.probe is not None
    loaded = kbundle.unpack(tmp_path / "dir.kbundle", tmp_path / "out", load_model=True)
    probe = next(f for f in loaded.environment if f.location == "probe")
    assert (probe.severity, probe.actual) == (kbundle.Severity.OK, "max abs diff 0, max rel diff 0")
