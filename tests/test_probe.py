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


def test_a_model_without_a_known_signature_is_packed_with_a_note(
    tmp_path: Path, keras: Any
) -> None:
    class Doubler(keras.Model):  # subclassed: Keras records no input signature, even once called
        def call(self, x):  # type: ignore[no-untyped-def]
            return x * 2

    model = Doubler()
    model(np.ones((1, 3), "float32"))
    result = kbundle.pack(model, tmp_path / "doubler.kbundle")
    assert result.manifest.probe is None
    assert result.notes == (
        "no probe stored: the model's input signature (shapes and numeric dtypes) is unknown",
    )
    with pytest.raises(PackError) as caught:
        kbundle.pack(model, tmp_path / "asked.kbundle", probe=True)
    assert (
        str(caught.value)
        == "cannot probe the model: the model's input signature (shapes and numeric dtypes) is "
        "unknown; pack with --no-probe (probe=False)"
    )
    assert not (tmp_path / "asked.kbundle").exists()
