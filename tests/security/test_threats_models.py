"""THREATS.md rows 9, 10, 11 and 15: hostile model files inside intact bundles, Lambda code,
and files swapped between verification and load. Real Keras, tiny models built here.

For rows 9 and 10 the bundles are forged here with honest digests (pack itself refuses such
files), so only the pre-load checks of the load path (kbundle/models/checks/__init__.py) stand between the
hostile file and Keras.
"""

from __future__ import annotations

import hashlib
import stat
import struct
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Any

import pytest
from conftest import assert_clean_failure, run_cli
from hostile import MODEL_PATH, model_bundle

import kbundle
from kbundle.errors import IntegrityError, KbundleError, ModelLoadError
from kbundle.models import keras_io

pytestmark = pytest.mark.keras

H5_PATH = "model/model.h5"


def _refused_before_keras(bundle: Path, member: str) -> None:
    """What rows 9 and 10 require: an integrity refusal naming the model file, not a Keras
    error after Keras opened it."""
    with pytest.raises(KbundleError) as caught:
        kbundle.load(bundle)
    assert isinstance(caught.value, IntegrityError), (
        f"refused only once Keras read it: {caught.value}"
    )
    assert member in caught.value.message


# --------------------------------------------------------------------------------------------
# Row 9: a hostile .keras zip inside an intact bundle


def _rezip(
    source: Path, target: Path, extra: dict[str, bytes], compression: int = zipfile.ZIP_STORED
) -> Path:
    with (
        zipfile.ZipFile(source) as old,
        zipfile.ZipFile(target, "w", compression=compression) as new,
    ):
        for info in old.infolist():
            new.writestr(info.filename, old.read(info.filename))
        for name, data in extra.items():
            new.writestr(name, data)
    return target


def _declare_size(path: Path, member: str, size: int) -> None:
    """Make ``member`` declare ``size`` uncompressed bytes, in its local header and in the
    central directory, whatever it stores."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        local = archive.getinfo(member).header_offset
        central = archive.start_dir
    struct.pack_into("<I", data, local + 22, size)
    while True:
        name_length = struct.unpack_from("<H", data, central + 28)[0]
        if bytes(data[central + 46 : central + 46 + name_length]) == member.encode():
            struct.pack_into("<I", data, central + 24, size)
            break
        extra, comment = struct.unpack_from("<HH", data, central + 30)
        central += 46 + name_length + extra + comment
    path.write_bytes(bytes(data))


# Load reads a Keras 3 zip by unzipping it while checking it, a Keras 2 one in place: both
# paths must refuse. The manifest's saved_by (which a hostile bundle controls) picks the path.
SAVERS = pytest.mark.parametrize("saver", [None, "2.15.0"], ids=["keras3-unzipped", "keras2-zip"])


@SAVERS
@pytest.mark.parametrize("member", ["config.json", "model.weights.h5"])
def test_row09_keras_zip_with_bad_crc(
    saved_keras_file: Path, tmp_path: Path, member: str, saver: str | None
) -> None:
    raw = saved_keras_file.read_bytes()
    with zipfile.ZipFile(saved_keras_file) as archive:
        data = archive.read(member)
    damaged = bytearray(raw)
    damaged[raw.index(data) + len(data) // 2] ^= 0x01
    bundle = model_bundle(
        tmp_path / "crc.kbundle", {MODEL_PATH: bytes(damaged)}, keras_version=saver
    )
    kbundle.verify(bundle)  # the bundle's digests cover exactly these (damaged) bytes
    _refused_before_keras(bundle, MODEL_PATH)


@pytest.fixture
def split_keras_file(keras: Any, tmp_path: Path) -> Path:
    """A .keras file whose weights are large enough for load to split them out of the stream
    (kbundle.models.zipsplit) instead of unzipping them afterwards."""
    from kbundle.models.zipsplit import MIN_SPLIT_BYTES

    units = int((MIN_SPLIT_BYTES / 4) ** 0.5) + 8
    model = keras.Sequential([keras.Input((units,)), keras.layers.Dense(units)], name="split")
    path = tmp_path / "split.keras"
    model.save(path)
    assert zipfile.ZipFile(path).getinfo("model.weights.h5").file_size > MIN_SPLIT_BYTES
    return path


def test_row09_split_weights_with_bad_crc(split_keras_file: Path, tmp_path: Path) -> None:
    """The CRC-32 of weights written straight from the stream is still checked."""
    raw = bytearray(split_keras_file.read_bytes())
    with zipfile.ZipFile(split_keras_file) as archive:
        weights = archive.read("model.weights.h5")
    raw[bytes(raw).index(weights) + len(weights) // 2] ^= 0x01
    bundle = model_bundle(tmp_path / "crc.kbundle", {MODEL_PATH: bytes(raw)})
    with pytest.raises(IntegrityError, match="bad CRC-32"):
        kbundle.load(bundle)


def test_row09_decoy_local_header_outside_the_central_directory(
    split_keras_file: Path, tmp_path: Path
) -> None:
    """A stored 'model.weights.h5' that only a local header names (the central directory lists
    the real one further on): a stream reader would take the decoy, so load must refuse."""
    with zipfile.ZipFile(split_keras_file) as archive:
        members = {info.filename: archive.read(info.filename) for info in archive.infolist()}
    decoy = bytes(len(members["model.weights.h5"]))  # zeros: other weights entirely
    name = b"model.weights.h5"
    local = struct.pack(
        "<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, 0, 0, 0, zlib.crc32(decoy), len(decoy),
        len(decoy), len(name), 0,
    )  # fmt: skip
    hostile = tmp_path / "decoy.keras"
    with hostile.open("wb") as out:
        out.write(local + name + decoy)
        with zipfile.ZipFile(out, "w") as archive:
            for member, data in members.items():
                archive.writestr(member, data)
    bundle = model_bundle(tmp_path / "decoy.kbundle", {MODEL_PATH: hostile.read_bytes()})
    with pytest.raises(IntegrityError) as caught:
        kbundle.load(bundle)
    assert "local file header disagrees with the central directory" in caught.value.message


def test_row09_keras_zip_bomb(saved_keras_file: Path, tmp_path: Path) -> None:
    bomb = _rezip(saved_keras_file, tmp_path / "bomb.keras", {}, zipfile.ZIP_DEFLATED)
    _declare_size(bomb, "model.weights.h5", 1 << 30)
    _refused_before_keras(
        model_bundle(tmp_path / "bomb.kbundle", {MODEL_PATH: bomb.read_bytes()}), MODEL_PATH
    )


@SAVERS
@pytest.mark.parametrize("name", ["../../evil.py", "/abs/evil.py", "assets\\..\\..\\evil.py"])
def test_row09_keras_zip_with_traversal_names(
    saved_keras_file: Path, tmp_path: Path, name: str, saver: str | None
) -> None:
    hostile = _rezip(saved_keras_file, tmp_path / "names.keras", {name: b"import os\n"})
    bundle = model_bundle(
        tmp_path / "names.kbundle", {MODEL_PATH: hostile.read_bytes()}, keras_version=saver
    )
    _refused_before_keras(bundle, MODEL_PATH)
    assert not (tmp_path.parent / "evil.py").exists()


def test_row09_keras_zip_with_too_many_members(saved_keras_file: Path, tmp_path: Path) -> None:
    crowded = _rezip(
        saved_keras_file, tmp_path / "many.keras", {f"assets/{i}": b"" for i in range(20_000)}
    )
    _refused_before_keras(
        model_bundle(tmp_path / "many.kbundle", {MODEL_PATH: crowded.read_bytes()}), MODEL_PATH
    )


# --------------------------------------------------------------------------------------------
# Row 10: .h5 with external links, virtual datasets, shape bombs


def _h5_model(keras: Any, tmp_path: Path) -> Path:
    keras.utils.set_random_seed(10)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)], name="h5_model")
    path = tmp_path / "model.h5"
    with warnings.catch_warnings():
        # Keras calls .h5 a legacy format (a log line today; a warning in some versions, which
        # the suite's filterwarnings=error would turn into a failure). Legacy is the point.
        warnings.simplefilter("ignore")
        model.save(path)
    return path


def _outside_file(tmp_path: Path) -> Path:
    import h5py

    outside = tmp_path / "outside.h5"
    with h5py.File(outside, "w") as handle:
        handle["secret"] = [1.0, 2.0, 3.0, 4.0]
    return outside


def _external_link(handle: Any, outside: Path) -> None:
    import h5py

    handle["model_weights/evil"] = h5py.ExternalLink(str(outside), "/secret")


def _virtual_dataset(handle: Any, outside: Path) -> None:
    import h5py

    layout = h5py.VirtualLayout(shape=(4,), dtype="f8")
    layout[:] = h5py.VirtualSource(str(outside), "secret", shape=(4,))
    handle.create_virtual_dataset("model_weights/virtual", layout)


def _shape_bomb(handle: Any, outside: Path) -> None:
    del outside
    handle.create_dataset("model_weights/bomb/kernel", shape=(2**50,), dtype="f4", chunks=(1024,))


@pytest.mark.parametrize(
    "hostile",
    [_external_link, _virtual_dataset, _shape_bomb],
    ids=["external-link", "virtual-dataset", "shape-bomb"],
)
def test_row10_h5_with_links_virtual_datasets_and_shape_bombs(
    keras: Any, tmp_path: Path, hostile: Any
) -> None:
    import h5py

    path = _h5_model(keras, tmp_path)
    with h5py.File(path, "a", libver="latest") as handle:
        hostile(handle, _outside_file(tmp_path))
    bundle = model_bundle(
        tmp_path / "h5.kbundle", {H5_PATH: path.read_bytes()}, fmt="h5", model_path=H5_PATH
    )
    _refused_before_keras(bundle, H5_PATH)


def test_row10_keras_weights_with_an_external_link(saved_keras_file: Path, tmp_path: Path) -> None:
    """The weights inside a .keras zip get the same HDF5 checks once load has unzipped them."""
    import h5py

    with zipfile.ZipFile(saved_keras_file) as archive:
        weights = tmp_path / "model.weights.h5"
        weights.write_bytes(archive.read("model.weights.h5"))
    with h5py.File(weights, "a") as handle:
        _external_link(handle, _outside_file(tmp_path))
    hostile = tmp_path / "linked.keras"
    with (
        zipfile.ZipFile(saved_keras_file) as old,
        zipfile.ZipFile(hostile, "w") as new,
    ):
        for info in old.infolist():
            data = weights.read_bytes() if info.filename == weights.name else old.read(info)
            new.writestr(info.filename, data)
    bundle = model_bundle(tmp_path / "linked.kbundle", {MODEL_PATH: hostile.read_bytes()})
    _refused_before_keras(bundle, MODEL_PATH)


# --------------------------------------------------------------------------------------------
# Row 11: Lambda code in the model config


@pytest.fixture
def lambda_bundle(keras: Any, tmp_path: Path) -> tuple[Path, Path]:
    """A bundle of a model whose Lambda layer touches a marker file whenever its code runs."""
    marker = tmp_path / "lambda-ran"
    code = eval(
        f"lambda v: v * 2 if not __import__('pathlib').Path({str(marker)!r}).touch() else v"
    )
    model = keras.Sequential([keras.Input((3,)), keras.layers.Lambda(code)], name="with_lambda")
    bundle = kbundle.pack(model, tmp_path / "lambda.kbundle").path
    marker.unlink()  # building the model ran the code once, in this process, by design
    return bundle, marker


def test_row11_lambda_refused_in_safe_mode_and_loads_only_on_opt_out(
    lambda_bundle: tuple[Path, Path],
) -> None:
    import numpy as np

    bundle, marker = lambda_bundle
    with pytest.raises(ModelLoadError) as caught:
        kbundle.load(bundle)
    assert caught.value.message.startswith(
        "the verified model failed to load in Keras: ValueError: "
        "Requested the deserialization of a `Lambda` layer"
    )
    assert caught.value.hint == (
        "the model contains a Lambda layer or other marshalled code, which Keras refuses in "
        "safe mode; if you trust the bundle, load it with --unsafe-lambda (safe_mode=False)"
    )
    assert not marker.exists()

    model = kbundle.load(bundle, safe_mode=False)
    assert marker.exists()  # the code ran: only because the caller said so
    assert np.array_equal(model(np.ones((1, 3), "float32")), [[2.0, 2.0, 2.0]])


@pytest.mark.slow
def test_row11_lambda_refused_by_the_cli_without_unsafe_lambda(
    lambda_bundle: tuple[Path, Path], tmp_path: Path
) -> None:
    bundle, marker = lambda_bundle
    refused = run_cli("unpack", bundle, "-d", tmp_path / "out")
    assert_clean_failure(refused, 5)
    assert "load it with --unsafe-lambda (safe_mode=False)" in refused.stderr
    assert not (tmp_path / "out").exists()
    assert not marker.exists()


# --------------------------------------------------------------------------------------------
# Row 15: files swapped between verification and load


def _tiny_model_file(keras: Any, path: Path, seed: int) -> Path:
    keras.utils.set_random_seed(seed)
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)], name="swap_target").save(path)
    return path


def _content_digest(model: Path) -> str:
    """One digest over the member names and bytes of a .keras zip or its unzipped directory."""
    if model.is_dir():
        files = {str(f.relative_to(model)): f.read_bytes() for f in model.rglob("*") if f.is_file()}
    else:
        with zipfile.ZipFile(model) as archive:
            files = {i.filename: archive.read(i) for i in archive.infolist() if not i.is_dir()}
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return digest.hexdigest()


def test_row15_files_swapped_after_verification_are_never_loaded(
    keras: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``load`` verifies into a private directory and hands Keras only those files: a bundle
    replaced on disk after the check, even during the load, changes nothing; a bundle
    replaced between ``verify`` and ``load`` is caught by the pinned digest."""
    import numpy as np

    released = kbundle.pack(
        _tiny_model_file(keras, tmp_path / "a.keras", 1), tmp_path / "model.kbundle"
    )
    swapped = kbundle.pack(
        _tiny_model_file(keras, tmp_path / "b.keras", 2), tmp_path / "swapped.kbundle"
    )
    bundle = released.path
    expected = keras.saving.load_model(tmp_path / "a.keras").get_weights()

    seen: list[tuple[Path, int, str]] = []
    real_load = keras_io.load_model

    def swap_then_load(path: Path, *args: Any, **kwargs: Any) -> Any:
        # A .keras zip is loaded from its unzipped form, a directory inside the private one.
        private = next(p for p in path.parents if p.name.startswith("kbundle-load-"))
        seen.append((private, stat.S_IMODE(private.stat().st_mode), _content_digest(path)))
        bundle.write_bytes(swapped.path.read_bytes())  # the attacker's move, mid-load
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(keras_io, "load_model", swap_then_load)
    model = kbundle.load(bundle, expect=released.digest)

    [(private, mode, loaded_digest)] = seen
    assert private.name.startswith("kbundle-load-") and mode == 0o700
    assert loaded_digest == _content_digest(tmp_path / "a.keras")
    assert not private.exists()
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), expected, strict=True))

    # The bundle on disk is now the attacker's: a pinned load refuses it before any Keras work.
    monkeypatch.setattr(keras_io, "load_model", real_load)
    with pytest.raises(IntegrityError) as caught:
        kbundle.load(bundle, expect=released.digest)
    assert caught.value.findings[0].problem == "bundle digest differs from --expect"
    assert caught.value.findings[0].actual == swapped.digest
