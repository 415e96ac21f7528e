"""THREATS.md row 23: bombs inside members that kbundle or Keras decode, and files that are
not what their declared format says.

Every decoder that runs on bundle content is budgeted from what the bundle declares: the
``.npz`` weights a ``.keras`` archive may carry instead of ``model.weights.h5`` (Keras falls
back to them), and the probe's input and output arrays. And a model file must be what its
declared format says by its first bytes, its kind and its name, because Keras picks its
reader by the name and the checks by the format: an HDF5 file with a zip appended passed the
HDF5 checks while Keras opened the zip.

Each bomb here is a few kilobytes that would allocate far more than its bundle's size.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bundle_factory import Entry, forge, manifest_for, payload_entries, real_manifest
from conftest import assert_clean_failure, run_cli
from hostile import model_bundle

import kbundle
from kbundle.errors import ModelFileError
from kbundle.models.checks import npz

pytestmark = pytest.mark.keras


def _npy(shape: tuple[int, ...], data: bytes, dtype: str = "<f4") -> bytes:
    """An ``.npy`` member: a version 1.0 header declaring ``shape`` of ``dtype``, then
    ``data`` (which may hold far fewer bytes than declared)."""
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode("latin1")
    header += b" " * (-(10 + len(header) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + data


def _zip(members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _deflate_bomb(name: str, header: bytes, zeros: int) -> bytes:
    """A zip holding ``name``: ``header`` then ``zeros`` zero bytes, deflated (~1000:1)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    crc = zlib.crc32(header)
    body = [compressor.compress(header)]
    chunk = bytes(1 << 20)
    left = zeros
    while left:
        piece = chunk[: min(left, len(chunk))]
        crc = zlib.crc32(piece, crc)
        body.append(compressor.compress(piece))
        left -= len(piece)
    body.append(compressor.flush())
    data = b"".join(body)
    size = len(header) + zeros
    # The zip is built by hand, so that no test allocates the uncompressed size.
    name_bytes = name.encode()
    local = struct.pack(
        "<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, 8, 0, 0, crc, len(data), size, len(name_bytes), 0
    )
    central = struct.pack(
        "<4sHHHHHHIIIHHHHHII",
        b"PK\x01\x02",
        20,
        20,
        0,
        8,
        0,
        0,
        crc,
        len(data),
        size,
        len(name_bytes),
        0,
        0,
        0,
        0,
        0,
        0,
    )
    directory_offset = len(local) + len(name_bytes) + len(data)
    directory = central + name_bytes
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 1, 1, len(directory), directory_offset, 0)
    return local + name_bytes + data + directory + end


# --------------------------------------------------------------------------------------------
# The .npz weights of a .keras archive


def _keras_with_npz_weights(saved_keras_file: Path, weights: bytes) -> bytes:
    """``saved_keras_file`` with ``model.weights.h5`` replaced by ``model.weights.npz``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(saved_keras_file) as old, zipfile.ZipFile(buffer, "w") as new:
        for info in old.infolist():
            if info.filename == "model.weights.h5":
                new.writestr("model.weights.npz", weights)
            else:
                new.writestr(info, old.read(info))
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("case", "weights", "problem"),
    [
        (
            "shape bomb",
            _zip({"layers/dense/vars/0.npy": _npy((1 << 28,), bytes(64))}),
            "its header declares another amount of data than it holds (expected 64 bytes, "
            "found 1073741824 bytes for shape (268435456,) of float32)",
        ),
        (
            "object array",
            _zip({"layers/dense/vars/0.npy": _npy((1,), b"\x80\x04N.", dtype="|O")}),
            "holds Python objects (a pickle), not numbers",
        ),
    ],
)
def test_row23_keras_npz_weights_are_budgeted_before_keras_reads_them(
    tmp_path: Path, saved_keras_file: Path, case: str, weights: bytes, problem: str
) -> None:
    model = _keras_with_npz_weights(saved_keras_file, weights)
    bundle = model_bundle(tmp_path / "npz.kbundle", {"model/model.keras": model})
    assert bundle.stat().st_size < 16 * 1024, case  # a few kilobytes, whatever it declares
    result = run_cli("unpack", bundle, "-d", tmp_path / "out")
    assert_clean_failure(result, 1)
    assert f"model/model.keras/model.weights.npz/layers/dense/vars/0.npy: {problem}" in (
        result.stderr
    )
    assert not (tmp_path / "out").exists()


def test_row23_keras_npz_deflate_bomb_is_refused(
    tmp_path: Path, saved_keras_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deflated member declaring 1000x what it stores; the floor is patched small so that
    the test does not compress gigabytes (the limit itself is what is tested)."""
    monkeypatch.setattr(npz, "NPZ_BOMB_FLOOR_BYTES", 1 << 20)
    header = _npy((1 << 22,), b"")
    weights = _deflate_bomb("layers/dense/vars/0.npy", header, 1 << 24)
    model = _keras_with_npz_weights(saved_keras_file, weights)
    bundle = model_bundle(tmp_path / "bomb.kbundle", {"model/model.keras": model})
    with pytest.raises(ModelFileError) as refused:
        kbundle.load(bundle)
    assert "model.weights.npz: declares far more data than it stores (a decompression bomb)" in (
        str(refused.value)
    )


# --------------------------------------------------------------------------------------------
# The probe's arrays


@pytest.fixture(scope="module")
def probed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((10,), name="x"), keras.layers.Dense(2)])
    bundle = tmp_path_factory.mktemp("probed") / "model.kbundle"
    result = kbundle.pack(model, bundle)
    assert result.manifest.probe is not None
    return bundle


def _with_probe_input(probed: Path, target: Path, data: bytes) -> Path:
    entries = [
        Entry(e.name, data if e.name == "probe/inputs.npz" else e.data, e.type)
        for e in payload_entries(probed)
    ]
    return forge(target, manifest_for(entries, real_manifest(probed)), entries)


@pytest.mark.parametrize(
    ("case", "data", "problem"),
    [
        (
            "deflated",
            _zip({"input_0.npy": _npy((2, 10), bytes(80))}, zipfile.ZIP_DEFLATED),
            "probe/inputs.npz/input_0.npy: compressed, but kbundle stores probe arrays "
            "uncompressed",
        ),
        (
            "8M rows declared",
            _zip({"input_0.npy": _npy((8_000_000, 10), bytes(80))}),
            "probe/inputs.npz/input_0.npy: its header declares another amount of data than it "
            "holds (expected 80 bytes, found 320000000 bytes for shape (8000000, 10) of float32)",
        ),
        (
            "not an archive",
            b"\x93NUMPY plain text",
            "probe/inputs.npz: not a readable .npz archive",
        ),
    ],
)
def test_row23_probe_arrays_are_budgeted_before_numpy_reads_them(
    probed: Path, tmp_path: Path, case: str, data: bytes, problem: str
) -> None:
    bundle = _with_probe_input(probed, tmp_path / "probe.kbundle", data)
    result = run_cli("unpack", bundle, "-d", tmp_path / "out")
    assert_clean_failure(result, 1)
    assert problem in result.stderr, case
    assert not (tmp_path / "out").exists()


def test_row23_a_probe_deflate_bomb_is_refused(probed: Path, tmp_path: Path) -> None:
    """2M rows of zeros deflated into ~80 KB: the old reader ran the model on all of them."""
    bomb = _deflate_bomb("input_0.npy", _npy((2_000_000, 10), b""), 80_000_000)
    bundle = _with_probe_input(probed, tmp_path / "bomb.kbundle", bomb)
    assert bundle.stat().st_size < 200_000
    with pytest.raises(ModelFileError) as refused:
        kbundle.load(bundle)
    assert str(refused.value).startswith(
        "unsafe to read with NumPy: probe/inputs.npz: declares far more data than it stores "
        "(a decompression bomb) (expected at most 100x its "
    )


def test_npz_reader_reads_what_numpy_wrote(tmp_path: Path) -> None:
    """The checks accept every honest archive: numpy's own, of several dtypes and shapes."""
    path = tmp_path / "honest.npz"
    arrays = {
        "a_0": np.arange(12, dtype="float32").reshape(3, 4),
        "a_1": np.array([True, False]),
        "a_2": np.zeros((0, 5), dtype="int64"),
        "a_3": np.array(3.5, dtype=">f8"),
    }
    np.savez(path, **arrays)
    loaded = npz.read_npz(path, "honest.npz")
    for got, want in zip(loaded, arrays.values(), strict=True):
        np.testing.assert_array_equal(got, want)
    with path.open("rb") as handle:
        assert npz.npz_findings(handle, path.stat().st_size, "honest.npz") == []


# --------------------------------------------------------------------------------------------
# Declared format against the bytes


def _h5_with_zip(sequential_model: Any, tmp_path: Path) -> bytes:
    h5 = tmp_path / "model.h5"
    sequential_model.save(h5)
    appended = _zip({"config.json": json.dumps({"class_name": "Sequential"}).encode()})
    return h5.read_bytes() + appended


@pytest.mark.parametrize(
    ("fmt", "member", "which", "problem"),
    [
        (
            "h5",
            "model/model.keras",
            "polyglot",
            "model/model.keras: a h5 model must be named *.h5, as Keras chooses how to read a "
            "file by its name",
        ),
        (
            "h5",
            "model/model.h5",
            "polyglot",
            "an HDF5 file that is also a zip archive (data appended after it)",
        ),
        (
            "keras",
            "model/model.keras",
            "h5",
            "declared format keras, but its first bytes are not a zip signature",
        ),
    ],
)
def test_row23_declared_format_must_match_the_bytes_and_the_name(
    tmp_path: Path, sequential_model: Any, fmt: str, member: str, which: str, problem: str
) -> None:
    h5 = tmp_path / "plain.h5"
    sequential_model.save(h5)
    data = _h5_with_zip(sequential_model, tmp_path) if which == "polyglot" else h5.read_bytes()
    bundle = model_bundle(tmp_path / "x.kbundle", {member: data}, fmt=fmt, model_path=member)
    result = run_cli("unpack", bundle, "-d", tmp_path / "out")
    assert_clean_failure(result, 1)
    assert problem in result.stderr
    assert not (tmp_path / "out").exists()


def test_row23_pack_refuses_an_h5_file_with_a_zip_appended(
    tmp_path: Path, sequential_model: Any
) -> None:
    polyglot = tmp_path / "polyglot.h5"
    polyglot.write_bytes(_h5_with_zip(sequential_model, tmp_path))
    result = run_cli("pack", polyglot, "-o", tmp_path / "p.kbundle", "--no-probe")
    assert_clean_failure(result, 2)
    assert "an HDF5 file that is also a zip archive" in result.stderr
    assert not (tmp_path / "p.kbundle").exists()
