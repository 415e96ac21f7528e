"""Splitting a .keras zip's large stored members out of the stream (kbundle.models.zipsplit), and the
load path that uses it. Real zip files, a real Keras model for the end-to-end case."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kbundle
from kbundle.models.zipsplit import ZipSplit
from kbundle.pipelines import load as loading

BIG = 64 * 1024  # split threshold used in the unit tests (MIN_SPLIT_BYTES is 1 MiB)


def _zip(path: Path, members: dict[str, bytes], **options: Any) -> Path:
    with zipfile.ZipFile(path, "w", **options) as archive:
        for name, data in members.items():
            with archive.open(name, "w", force_zip64=name.endswith(".h5")) as out:
                out.write(data)
    return path


def _members() -> dict[str, bytes]:
    rng = np.random.default_rng(5)
    return {
        "metadata.json": b'{"keras_version": "3"}',
        "config.json": b'{"class_name": "Sequential"}' * 10,
        "model.weights.h5": rng.bytes(3 * BIG + 123),
        "assets/table.bin": rng.bytes(BIG),
        "assets/small.txt": b"small",
    }


def _split(source: bytes, tmp_path: Path, chunk: int) -> tuple[ZipSplit, bytes]:
    split = ZipSplit("model/model.keras", tmp_path / "unzipped", min_size=BIG)
    target = tmp_path / "model.keras"
    with split.writer(target) as writer:
        for start in range(0, len(source), chunk):
            writer.write(source[start : start + chunk])
    return split, target.read_bytes()


@pytest.mark.parametrize("chunk", [1, 7, 4096, 100_000, 10**9])
def test_large_stored_members_are_split_and_the_rest_kept_in_place(
    tmp_path: Path, chunk: int
) -> None:
    members = _members()
    source = _zip(tmp_path / "source.keras", members).read_bytes()
    split, written = _split(source, tmp_path, chunk)
    assert sorted(split.members) == ["assets/table.bin", "model.weights.h5"]
    assert len(written) == len(source)
    holes = bytearray(source)
    for member in split.members.values():
        assert (split.directory / member.name).read_bytes() == members[member.name]
        assert source[member.start : member.start + member.size] == members[member.name]
        holes[member.start : member.start + member.size] = bytes(member.size)
    assert written == bytes(holes)  # everything else byte for byte, zeros in the holes
    with zipfile.ZipFile(io.BytesIO(source)) as archive:
        for member in split.members.values():
            assert member.crc == archive.getinfo(member.name).CRC
    assert not (split.directory / "config.json").exists()  # small: left in the zip


def test_restore_gives_back_the_zip_byte_for_byte(tmp_path: Path) -> None:
    source = _zip(tmp_path / "source.keras", _members()).read_bytes()
    split, _ = _split(source, tmp_path, 50_000)
    split.restore(tmp_path / "model.keras")
    assert (tmp_path / "model.keras").read_bytes() == source
    assert split.members == {}
    assert not split.directory.exists()


def test_deflated_members_and_data_descriptors_are_not_split(tmp_path: Path) -> None:
    members = _members()
    deflated = _zip(tmp_path / "deflated.keras", members, compression=zipfile.ZIP_DEFLATED)
    split, written = _split(deflated.read_bytes(), tmp_path / "a", 4096)
    assert split.members == {}
    assert written == deflated.read_bytes()

    streamed = io.BytesIO()  # written to an unseekable stream: sizes follow the data
    with zipfile.ZipFile(_Unseekable(streamed), "w") as archive:
        for name, data in members.items():
            with archive.open(name, "w") as out:
                out.write(data)
    split, written = _split(streamed.getvalue(), tmp_path / "b", 4096)
    assert split.members == {}
    assert written == streamed.getvalue()


class _Unseekable(io.RawIOBase):
    def __init__(self, sink: io.BytesIO) -> None:
        super().__init__()
        self._sink = sink

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        return self._sink.write(data)

    def flush(self) -> None:
        pass


def test_unsafe_names_are_not_written_outside_the_directory(tmp_path: Path) -> None:
    payload = bytes(BIG)
    source = io.BytesIO()
    with zipfile.ZipFile(source, "w") as archive:
        archive.writestr("../escape.bin", payload)
        archive.writestr("/abs.bin", payload)
    (tmp_path / "inner").mkdir()
    split, _ = _split(source.getvalue(), tmp_path / "inner", 4096)
    assert split.members == {}
    assert not (tmp_path / "escape.bin").exists()


def _packed_model(keras: Any, tmp_path: Path, seed: int) -> tuple[Any, Path, Any]:
    """A model with weights above MIN_SPLIT_BYTES, its bundle, and an input for it."""
    from kbundle.models.zipsplit import MIN_SPLIT_BYTES

    units = int((MIN_SPLIT_BYTES / 4) ** 0.5) + 8
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((units,)), keras.layers.Dense(units)], name="big")
    bundle = tmp_path / "big.kbundle"
    kbundle.pack(model, bundle, probe=False)
    return model, bundle, np.random.default_rng(seed).random((2, units), dtype=np.float32)


@pytest.mark.keras
def test_load_writes_large_weights_straight_from_the_stream(
    keras: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, bundle, x = _packed_model(keras, tmp_path, 3)
    seen: list[Any] = []
    original = loading.unzip_sound_keras

    def spy(*args: Any, **kwargs: Any) -> None:
        seen.append(kwargs.get("split"))
        original(*args, **kwargs)

    monkeypatch.setattr(loading, "unzip_sound_keras", spy)
    loaded = kbundle.load(bundle)
    assert seen and seen[0] is not None and list(seen[0]) == ["model.weights.h5"]
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))


@pytest.mark.keras
def test_load_with_a_keras_that_reads_only_zips_refills_the_holes(
    keras: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kbundle.models import keras_io

    model, bundle, x = _packed_model(keras, tmp_path, 4)
    monkeypatch.setattr(keras_io, "loads_unzipped_keras", lambda: False)
    loaded = kbundle.load(bundle)
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))


def test_a_name_that_clashes_with_a_written_file_stays_in_the_zip(tmp_path: Path) -> None:
    first, second = b"\x01" * BIG, b"\x02" * BIG
    source = io.BytesIO()
    with zipfile.ZipFile(source, "w") as archive:
        archive.writestr("weights", first)
        archive.writestr("weights/inner.bin", second)  # "weights" is a file already
    split, written = _split(source.getvalue(), tmp_path, 4096)
    assert list(split.members) == ["weights"]
    assert second in written  # kept in the zip, not a hole
    assert first not in written
