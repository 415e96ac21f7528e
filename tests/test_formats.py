"""Every model format people have: pack, describe, check and load each one for real.

Keras 2 files are written by tf-keras in a child process (conftest ``keras2_files``); Keras 3
files, SavedModels and hostile files are made here. Nothing is mocked.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import (
    KERAS2_INPUT,
    assert_clean_failure,
    env_without_tf_keras,
    run_cli,
    zip_member_data_offset,
)

import kbundle
import kbundle.pipelines.pack
from kbundle.errors import (
    IntegrityError,
    ModelFileError,
    ModelLoadError,
    PackError,
    UntrustedCodeError,
)
from kbundle.models import checks
from kbundle.models.checks import check_model_file
from kbundle.models.checks import keras as keras_checks
from kbundle.models.formats import describe_model_file, identify_format

X = np.array(KERAS2_INPUT, dtype="float32")


def _outputs(model: Any, x: Any = X) -> np.ndarray:
    result = model(x)
    if isinstance(result, dict):  # a SavedModel's serving_default returns named outputs
        (result,) = result.values()
    return np.asarray(result)


def _pack(
    source: Path, tmp_path: Path, name: str = "model.kbundle", **options: Any
) -> kbundle.PackResult:
    return kbundle.pack(source, tmp_path / name, **options)


# --------------------------------------------------------------------------------------------
# Keras 2 .h5 under Keras 3


def test_keras2_h5_packs_records_its_maker_and_loads_under_keras3(
    keras2_files: Path, tmp_path: Path, keras: Any
) -> None:
    result = _pack(keras2_files / "plain.h5", tmp_path)

    model_info = result.manifest.model
    assert (model_info.format, model_info.path) == ("h5", "model/model.h5")
    assert model_info.saved_by == {"keras_version": "2.21.0", "backend": "tensorflow"}
    assert (
        result.manifest.environment.keras is not None
        and result.manifest.environment.keras.major == 3
    )
    assert (model_info.class_name, model_info.name, model_info.parameter_count) == (
        "Sequential",
        "plain",
        19,
    )
    assert model_info.inputs is not None and model_info.inputs[0].shape == [None, 4]
    loaded = kbundle.load(result.path)
    assert isinstance(loaded, keras.Model)
    np.testing.assert_allclose(
        _outputs(loaded), np.load(keras2_files / "expected.npz")["plain"], rtol=1e-6
    )


def test_keras2_h5_with_custom_layer_loads_when_the_class_is_registered(
    keras2_files: Path, tmp_path: Path, keras: Any
) -> None:
    class Scale(keras.layers.Layer):
        def __init__(self, factor: float = 2.0, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.factor = factor

        def call(self, inputs: Any) -> Any:
            return inputs * self.factor

        def get_config(self) -> dict[str, Any]:
            return {**super().get_config(), "factor": self.factor}

    result = _pack(keras2_files / "custom.h5", tmp_path)

    with keras.saving.custom_object_scope({"Scale": Scale}):
        loaded = kbundle.load(result.path)
    assert isinstance(loaded, keras.Model)
    assert loaded.get_layer("scale").factor == 3.0
    # A Keras 2 functional model records its inputs as a list; Keras 3 keeps that structure.
    np.testing.assert_allclose(
        _outputs(loaded, [X]), np.load(keras2_files / "expected.npz")["custom"], rtol=1e-6
    )


def test_keras2_h5_with_unknown_custom_layer_names_both_failures(
    keras2_files: Path, tmp_path: Path
) -> None:
    result = _pack(keras2_files / "custom.h5", tmp_path)

    with pytest.raises(ModelLoadError) as caught:
        kbundle.load(result.path)

    assert caught.value.message == (
        "this model was written by Keras 2.21.0; neither Keras 3 (ValueError: Unknown layer: "
        "'Scale'.) nor tf-keras (ValueError: Unknown layer: 'Scale'.) could load it"
    )
    assert (
        caught.value.hint
        == "a custom object is missing; pack it with the model or install the package defining it"
    )


def test_keras2_h5_keras3_cannot_read_loads_through_tf_keras(
    keras2_files: Path, tmp_path: Path
) -> None:
    result = _pack(keras2_files / "tfop.h5", tmp_path)

    loaded = kbundle.load(result.path)

    assert type(loaded).__module__.startswith("tf_keras.")
    np.testing.assert_allclose(
        _outputs(loaded), np.load(keras2_files / "expected.npz")["tfop"], rtol=1e-6
    )


def test_keras2_h5_without_tf_keras_says_what_to_install(
    keras2_files: Path, tmp_path: Path
) -> None:
    result = _pack(keras2_files / "tfop.h5", tmp_path)

    done = run_cli(
        "unpack", result.path, "-d", tmp_path / "out", env=env_without_tf_keras(tmp_path)
    )

    assert_clean_failure(done, 5)
    assert (
        "kbundle: error: this model was written by Keras 2.21.0 and Keras 3 cannot load it: Unknown "
        "layer: 'TFOpLambda'.; tf-keras (Keras 2) is not installed; install tf-keras to load Keras 2 "
        "files: pip install 'tf-keras==2.21.*' (add --no-deps with tensorflow-cpu)"
    ) in done.stderr
    assert not (tmp_path / "out").exists()


def test_tf_keras_fallback_never_runs_lambda_code_in_safe_mode(
    keras2_files: Path, tmp_path: Path
) -> None:
    marker = keras2_files / "lambda-ran"
    result = _pack(keras2_files / "tfop_lambda.h5", tmp_path)

    with pytest.raises(ModelLoadError) as caught:
        kbundle.load(result.path)
    assert (
        "tf-keras would run its Lambda layer's Python bytecode, which safe mode forbids"
        in caught.value.message
    )
    assert (
        caught.value.hint == "if you trust the file, load it with --unsafe-lambda (safe_mode=False)"
    )
    assert not marker.exists()

    loaded = kbundle.load(result.path, safe_mode=False)
    assert marker.exists()  # the opt-out really runs the bundled bytecode
    marker.unlink()
    np.testing.assert_allclose(
        _outputs(loaded), np.load(keras2_files / "expected.npz")["tfop_lambda"], rtol=1e-6
    )


def test_keras2_dot_keras_file_loads_through_tf_keras(keras2_files: Path, tmp_path: Path) -> None:
    result = _pack(keras2_files / "functional.keras", tmp_path)

    assert result.manifest.model.saved_by["keras_version"] == "2.21.0"
    loaded = kbundle.load(result.path)
    assert type(loaded).__module__.startswith("tf_keras.")
    np.testing.assert_allclose(
        _outputs(loaded), np.load(keras2_files / "expected.npz")["functional"], rtol=1e-6
    )


# --------------------------------------------------------------------------------------------
# SavedModel and the .keras directory form


@pytest.mark.parametrize("writer", ["export", "tf.saved_model.save"])
def test_savedmodel_packs_and_loads_as_a_callable_layer(
    writer: str, tmp_path: Path, sequential_model: Any, keras: Any
) -> None:
    import tensorflow as tf

    directory = tmp_path / "saved"
    if writer == "export":
        sequential_model.export(directory, format="tf_saved_model", verbose=False)
    else:
        tf.saved_model.save(sequential_model, str(directory))
    x = np.random.default_rng(3).standard_normal((5, 10)).astype("float32")

    result = _pack(directory, tmp_path)

    info = result.manifest.model
    assert (info.format, info.path) == ("savedmodel", "model/saved_model")
    assert info.saved_by["tensorflow_version"] == tf.__version__
    assert info.inputs is not None and [(s.shape, s.dtype) for s in info.inputs] == [
        ([None, 10], "float32")
    ]
    assert info.outputs is not None and [(s.shape, s.dtype) for s in info.outputs] == [
        ([None, 1], "float32")
    ]
    members = {m.path for m in result.manifest.members}
    assert {
        "model/saved_model/saved_model.pb",
        "model/saved_model/variables/variables.index",
    } <= members
    with pytest.raises(UntrustedCodeError, match="loading a SavedModel runs its graph"):
        kbundle.load(result.path)  # a SavedModel is code (THREATS row 19)
    loaded = kbundle.load(result.path, trust_code=True)
    assert isinstance(loaded, keras.layers.TFSMLayer)
    np.testing.assert_allclose(_outputs(loaded, x), sequential_model(x).numpy(), rtol=1e-6)


def test_keras2_savedmodel_loads_as_a_callable_layer(
    keras2_files: Path, tmp_path: Path, keras: Any
) -> None:
    result = _pack(keras2_files / "plain_savedmodel", tmp_path)

    assert result.manifest.model.saved_by["keras_version"] == "2.21.0"
    assert result.manifest.model.class_name == "Sequential"
    loaded = kbundle.load(result.path, trust_code=True)
    assert isinstance(loaded, keras.layers.TFSMLayer)
    np.testing.assert_allclose(
        _outputs(loaded), np.load(keras2_files / "expected.npz")["plain"], rtol=1e-6
    )


def test_keras_directory_form_packs_and_loads(
    tmp_path: Path, functional_model: Any, keras: Any, sample_inputs: Any
) -> None:
    directory = tmp_path / "unzipped"
    keras.saving.save_model(functional_model, directory, zipped=False)
    assert identify_format(directory) == "keras-dir"

    result = _pack(directory, tmp_path)

    info = result.manifest.model
    assert (info.format, info.path, info.class_name, info.name) == (
        "keras-dir",
        "model/keras_model",
        "Functional",
        "two_in_two_out",
    )
    assert info.parameter_count == functional_model.count_params()
    assert info.saved_by["keras_version"] == keras.__version__
    loaded = kbundle.load(result.path)
    x = sample_inputs(functional_model)
    for got, want in zip(loaded(x), functional_model(x), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6)


def test_keras3_h5_and_keras_files_describe_parameters(
    tmp_path: Path, sequential_model: Any
) -> None:
    sequential_model.compile("adam", "mse")
    sequential_model.fit(np.ones((4, 10)), np.ones((4, 1)), verbose=0)  # optimizer state exists
    sequential_model.save(tmp_path / "m.h5")
    sequential_model.save(tmp_path / "m.keras")

    for name, fmt in (("m.h5", "h5"), ("m.keras", "keras")):
        description = describe_model_file(tmp_path / name, fmt)
        assert description["parameter_count"] == sequential_model.count_params() == 193
        assert (description["class_name"], description["name"]) == ("Sequential", "tiny_sequential")
        # pack counts from the objects its pre-pack check walked, without reopening the file
        checked = checks.require_sound_before_streaming(
            tmp_path / name, fmt, error=PackError, hint="-"
        )
        assert len(checked.h5_objects) > 5
        assert describe_model_file(tmp_path / name, fmt, h5_objects=checked.h5_objects) == (
            description
        )
        packed = _pack(tmp_path / name, tmp_path, f"{name}.kbundle")
        assert packed.manifest.model.parameter_count == 193


# --------------------------------------------------------------------------------------------
# Pre-load checks: pack refuses, and the load path refuses even inside an intact bundle


@pytest.fixture(params=["small", "streamed"])
def keras_file_for_crc(request: Any, saved_keras_file: Path, keras: Any) -> Path:
    """The tiny model, whose weights pack CRC-checks in a read of their own, or one whose
    weights exceed STREAMED_CRC_MIN_BYTES, checked from the bytes pack streams."""
    if request.param == "small":
        return saved_keras_file
    from kbundle.models.checks.keras import STREAMED_CRC_MIN_BYTES

    units = int((STREAMED_CRC_MIN_BYTES / 4) ** 0.5) + 8
    model = keras.Sequential([keras.Input((units,)), keras.layers.Dense(units)], name="large")
    path = saved_keras_file.with_name("large") / "model.keras"
    path.parent.mkdir()
    model.save(path)
    assert zipfile.ZipFile(path).getinfo("model.weights.h5").file_size > STREAMED_CRC_MIN_BYTES
    return path


def test_pack_refuses_keras_file_with_bad_crc(keras_file_for_crc: Path, tmp_path: Path) -> None:
    saved_keras_file = keras_file_for_crc
    assert kbundle.pack(saved_keras_file, tmp_path / "intact.kbundle").size > 0
    data = bytearray(saved_keras_file.read_bytes())
    data[zip_member_data_offset(saved_keras_file, "model.weights.h5") + 2000] ^= 0x01
    saved_keras_file.write_bytes(bytes(data))

    done = run_cli("pack", saved_keras_file, "-o", tmp_path / "m.kbundle")

    assert_clean_failure(done, 2)
    assert (
        f"kbundle: error: {saved_keras_file} is corrupt or unsafe to load: model.keras/model.weights.h5: bad CRC-32: the member's bytes changed after it was written (expected crc32 "
        in done.stderr
    )
    assert not (tmp_path / "m.kbundle").exists()


def _h5_with(tmp_path: Path, build: Any, **kwargs: Any) -> Path:
    import h5py

    path = tmp_path / "hostile.h5"
    with h5py.File(path, "w", **kwargs) as handle:
        handle.attrs["keras_version"] = "3.15.1"
        build(handle)
    return path


def _external_link(handle: Any) -> None:
    import h5py

    handle["model_weights"] = h5py.ExternalLink("/etc/passwd", "/anything")


def _shape_bomb(handle: Any) -> None:
    handle.create_dataset("model_weights/dense/kernel", shape=(2**50,), dtype="f4", chunks=(1024,))


def _virtual(handle: Any) -> None:
    import h5py

    layout = h5py.VirtualLayout(shape=(4,), dtype="f4")
    layout[:] = h5py.VirtualSource("elsewhere.h5", "data", shape=(4,))
    handle.create_virtual_dataset("model_weights/v", layout)


def _external_storage(handle: Any) -> None:
    handle.create_dataset(
        "model_weights/e", shape=(4,), dtype="f4", external=[("/etc/hostname", 0, 16)]
    )


@pytest.mark.parametrize(
    ("build", "libver", "expected"),
    [
        (
            _external_link,
            None,
            "hostile.h5:/model_weights: external link to another file (found /etc/passwd:/anything)",
        ),
        (
            _shape_bomb,
            None,
            "hostile.h5:/model_weights/dense/kernel: declares far more data than it stores (decompression or shape bomb) (expected at most 1000x the 0 bytes stored, found 4503599627370496 bytes declared)",
        ),
        (
            _virtual,
            "latest",
            "hostile.h5:/model_weights/v: virtual dataset (found maps elsewhere.h5)",
        ),
        (
            _external_storage,
            None,
            "hostile.h5:/model_weights/e: dataset stored in an external raw file (found /etc/hostname)",
        ),
    ],
    ids=["external-link", "shape-bomb", "virtual-dataset", "external-storage"],
)
def test_pack_refuses_hostile_h5(
    build: Any, libver: str | None, expected: str, tmp_path: Path
) -> None:
    path = _h5_with(tmp_path, build, **({"libver": libver} if libver else {}))

    with pytest.raises(PackError) as caught:
        kbundle.pack(path, tmp_path / "m.kbundle")

    assert caught.value.message == f"{path} is corrupt or unsafe to load: {expected}"
    assert not (tmp_path / "m.kbundle").exists()


@pytest.fixture
def hostile_packer(monkeypatch: pytest.MonkeyPatch) -> None:
    """kbundle.pack without its pre-pack checks, as a hostile packer would write bundles."""
    monkeypatch.setattr(
        kbundle.pipelines.pack,
        "require_sound_before_streaming",
        lambda *args, **kwargs: checks.PackCheck(watch=None, h5_objects={}),
    )


@pytest.mark.usefixtures("hostile_packer")
def test_hostile_model_inside_an_intact_bundle_is_refused_before_keras(tmp_path: Path) -> None:
    path = _h5_with(tmp_path, _external_link)
    bundle = kbundle.pack(path, tmp_path / "m.kbundle").path
    kbundle.verify(bundle)  # the checksums are fine: they cover exactly what was packed

    with pytest.raises(ModelFileError) as caught:
        kbundle.load(bundle)
    assert isinstance(caught.value, IntegrityError)
    assert (
        caught.value.message
        == "model/model.h5 is corrupt or unsafe to load: model/model.h5:/model_weights: external link to another file (found /etc/passwd:/anything)"
    )

    done = run_cli("unpack", bundle, "-d", tmp_path / "out")
    assert_clean_failure(done, 1)
    assert not (tmp_path / "out").exists()


@pytest.mark.usefixtures("hostile_packer")
def test_keras_zip_with_bad_crc_inside_an_intact_bundle_is_refused(
    saved_keras_file: Path, tmp_path: Path
) -> None:
    data = bytearray(saved_keras_file.read_bytes())
    data[zip_member_data_offset(saved_keras_file, "config.json") + 10] ^= 0x01
    saved_keras_file.write_bytes(bytes(data))
    with pytest.raises(PackError, match=r"config\.json: bad CRC-32"):
        kbundle.pack(saved_keras_file, tmp_path / "m.kbundle")  # the probe unzips it
    bundle = kbundle.pack(saved_keras_file, tmp_path / "m.kbundle", probe=False).path

    done = run_cli("unpack", bundle, "-d", tmp_path / "out")

    assert_clean_failure(done, 1)
    assert (
        "kbundle: error: model/model.keras is corrupt or unsafe to load: "
        "model/model.keras/config.json: bad CRC-32: the member's bytes changed after it was written"
    ) in done.stderr
    assert not (tmp_path / "out").exists()


def _zip(path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def _findings(path: Path, fmt: str = "keras") -> list[str]:
    return [f.describe() for f in check_model_file(path, fmt)]


def test_zip_with_traversal_names_is_refused(tmp_path: Path) -> None:
    path = _zip(
        tmp_path / "m.keras", {"config.json": b"{}", "../evil.py": b"x", "/abs": b"x", "a\\b": b"x"}
    )

    assert _findings(path) == [
        "m.keras/../evil.py: unsafe member name: '..' component (path traversal)",
        "m.keras//abs: unsafe member name: absolute path",
        "m.keras/a\\b: unsafe member name: backslash in name",
    ]


def test_zip_bomb_and_member_count_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keras_checks, "ZIP_BOMB_FLOOR_BYTES", 1000)
    bomb = _zip(
        tmp_path / "bomb.keras",
        {"config.json": b"{}", "model.weights.h5": bytes(1_000_000)},
        zipfile.ZIP_DEFLATED,
    )
    with zipfile.ZipFile(bomb) as archive:
        stored = archive.getinfo("model.weights.h5").compress_size

    assert _findings(bomb) == [
        f"bomb.keras/model.weights.h5: declares far more data than it stores (decompression or shape bomb) (expected at most 100x the {stored} bytes stored, found 1000000 bytes declared)",
        f"bomb.keras: declares far more data than it stores (decompression or shape bomb) (expected at most 100x the {bomb.stat().st_size} bytes stored, found 1000002 bytes declared)",
    ]

    monkeypatch.setattr(keras_checks, "MAX_ZIP_MEMBERS", 3)
    many = _zip(tmp_path / "many.keras", {f"assets/{i}": b"" for i in range(4)})
    assert _findings(many) == ["many.keras: too many zip members (expected at most 3, found 4)"]


def test_truncated_keras_zip_says_where_it_ends(saved_keras_file: Path) -> None:
    data = saved_keras_file.read_bytes()
    offset = zip_member_data_offset(saved_keras_file, "model.weights.h5")
    saved_keras_file.write_bytes(data[: offset + 100])
    with zipfile.ZipFile(__import__("io").BytesIO(data)) as archive:
        end = offset + archive.getinfo("model.weights.h5").compress_size

    assert _findings(saved_keras_file) == [
        f"model.keras/model.weights.h5: zip archive is truncated: the central directory at its end is missing (expected at least {end} bytes (the member's data ends there), found {offset + 100} bytes)"
    ]


def test_savedmodel_with_missing_shard_or_truncated_graph_is_refused(
    tmp_path: Path, sequential_model: Any
) -> None:
    directory = tmp_path / "saved"
    sequential_model.export(directory, format="tf_saved_model", verbose=False)
    broken = tmp_path / "broken"
    shutil.copytree(directory, broken)
    (broken / "variables" / "variables.data-00000-of-00001").unlink()
    pb = broken / "saved_model.pb"
    pb.write_bytes(pb.read_bytes()[:1000])

    declared = _meta_graph_length(directory / "saved_model.pb")
    # After the 2-byte schema version: a 1-byte tag and a 3-byte length, then what is left.
    assert _findings(broken, "savedmodel") == [
        f"broken/saved_model.pb: not a valid SavedModel protobuf: field 2 declares {declared} "
        "bytes but 994 remain at byte 2 (found 1000 bytes)",
        "broken/variables/variables.data-00000-of-00001: missing: the index has no data shard",
    ]
    assert _findings(directory, "savedmodel") == []


def _meta_graph_length(pb: Path) -> int:
    from kbundle.models.protowire import read_fields

    return next(len(f.data) for f in read_fields(pb.read_bytes()) if f.number == 2)


def test_hdf5_hard_link_cycle_is_walked_once(tmp_path: Path) -> None:
    def cycle(handle: Any) -> None:
        group = handle.create_group("a")
        group["back"] = handle["a"]

    assert _findings(_h5_with(tmp_path, cycle), "h5") == []


def test_h5_model_config_that_is_not_json_is_refused(keras2_files: Path, tmp_path: Path) -> None:
    import h5py

    path = tmp_path / "cut.h5"
    shutil.copy(keras2_files / "plain.h5", path)
    with h5py.File(path, "r+") as handle:
        handle.attrs["model_config"] = '{"class_name": "Sequential", "config": '

    assert _findings(path, "h5") == [
        "cut.h5:/ (attribute model_config): not valid JSON (Expecting value: line 1 column 40 (char 39))"
    ]


def test_healthy_files_have_no_findings(keras2_files: Path) -> None:
    for name in ("plain.h5", "custom.h5", "tfop.h5", "functional.keras", "plain_savedmodel"):
        path = keras2_files / name
        assert _findings(path, identify_format(path)) == [], name


def test_describe_keras_zip_without_weights(tmp_path: Path) -> None:
    path = _zip(
        tmp_path / "m.keras",
        {
            "config.json": json.dumps(
                {"class_name": "Sequential", "config": {"name": "s", "layers": []}}
            ).encode(),
            "metadata.json": b'{"keras_version": "3.1.0"}',
        },
    )

    assert describe_model_file(path, "keras") == {
        "class_name": "Sequential",
        "name": "s",
        "saved_by": {"keras_version": "3.1.0"},
    }


def test_outputs_are_named_from_the_config_and_shaped_by_the_probe(
    tmp_path: Path, keras: Any, sequential_model: Any
) -> None:
    inputs = keras.Input((4,), name="features")
    hidden = keras.layers.Dense(3, name="hidden")(inputs)
    two = keras.Model(
        inputs,
        [keras.layers.Dense(2, name="score")(hidden), keras.layers.Dense(1, name="gate")(hidden)],
    )
    two.save(tmp_path / "two.keras")
    sequential_model.save(tmp_path / "seq.keras")
    last = sequential_model.layers[-1].name

    # The config names the outputs; only a built model knows their shapes.
    for name, expected in (("seq.keras", [last]), ("two.keras", ["score", "gate"])):
        outputs = describe_model_file(tmp_path / name, "keras")["outputs"]
        assert [(o.name, o.shape, o.dtype) for o in outputs] == [(n, None, None) for n in expected]
        unprobed = _pack(tmp_path / name, tmp_path, f"{name}.np.kbundle", probe=False)
        assert [o.name for o in unprobed.manifest.model.outputs] == expected
    shown = run_cli("inspect", tmp_path / "two.keras.np.kbundle")
    assert "outputs     score (shape not recorded; the probe records it), gate (shape not " in (
        shown.stdout
    )

    # Packing with the probe loads the model, which fills in the shapes.
    probed = _pack(tmp_path / "two.keras", tmp_path, "two.kbundle")
    assert [(o.name, o.shape, o.dtype) for o in probed.manifest.model.outputs] == [
        ("score", [None, 2], "float32"),
        ("gate", [None, 1], "float32"),
    ]
    seq = _pack(tmp_path / "seq.keras", tmp_path, "seq.kbundle").manifest.model.outputs
    assert [(o.name, o.shape) for o in seq] == [(last, [None, 1])]
    shown = run_cli("inspect", tmp_path / "seq.kbundle")
    assert f"outputs     {last} [None, 1] float32" in shown.stdout.splitlines()
