"""``kbundle.keras.BundleCheckpoint`` against ``keras.callbacks.ModelCheckpoint``.

Both callbacks run in the same ``fit`` on real training (a few epochs on data made here), so
every decision (which epochs are saved, under which names) can be compared one to one. The
bundles are then verified, loaded and compared with the model; ``keep``, signing, labels,
errors raised on the training thread and the absence of leftovers are checked on the files.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kbundle
from kbundle.errors import UsageError
from kbundle.keras import BundleCheckpoint


def regression(keras: Any, learning_rate: float = 0.3) -> tuple[Any, Any, Any]:
    """A small regression whose validation loss goes up and down with plain SGD at this rate
    (so that best-only saving skips some epochs)."""
    keras.utils.set_random_seed(5)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((96, 4)).astype("float32")
    noise = rng.standard_normal((96, 1)).astype("float32")
    y = (x @ np.array([1.0, -2.0, 0.5, 3.0], dtype="float32"))[:, None] + noise
    model = keras.Sequential(
        [
            keras.Input((4,), name="x"),
            keras.layers.Dense(8, activation="tanh"),
            keras.layers.Dense(1),
        ],
        name="regression",
    )
    model.compile(keras.optimizers.SGD(learning_rate), "mse", metrics=["mae"])
    return model, x, y


def classifier(keras: Any) -> tuple[Any, Any, Any]:
    keras.utils.set_random_seed(9)
    rng = np.random.default_rng(9)
    x = rng.standard_normal((160, 5)).astype("float32")
    y = (x[:, 0] + 0.3 * rng.standard_normal(160) > 0).astype("int64")
    model = keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(4, activation="relu"),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )
    model.compile(
        keras.optimizers.SGD(0.5), "sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    return model, x, y


def saved_epochs(directory: Path, suffix: str) -> list[int]:
    return sorted(int(p.name[1:3]) for p in directory.glob(f"e*{suffix}"))


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where tempfile puts everything during the test, to show nothing is left behind."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    return scratch


@pytest.mark.parametrize(
    ("build", "monitor", "mode", "threshold"),
    [
        (regression, "val_loss", "auto", None),
        (regression, "val_loss", "max", None),
        (regression, "val_mae", "min", 2.0),
        (classifier, "val_accuracy", "auto", None),
    ],
)
def test_best_only_saves_the_epochs_model_checkpoint_saves(
    tmp_path: Path,
    private_tmp: Path,
    keras: Any,
    build: Any,
    monitor: str,
    mode: str,
    threshold: float | None,
) -> None:
    model, x, y = build(keras)
    plain = keras.callbacks.ModelCheckpoint(
        str(tmp_path / "keras" / "e{epoch:02d}.keras"),
        monitor=monitor,
        mode=mode,
        save_best_only=True,
        initial_value_threshold=threshold,
    )
    bundled = BundleCheckpoint(
        tmp_path / "bundles" / "e{epoch:02d}.kbundle",
        monitor=monitor,
        mode=mode,
        save_best_only=True,
        initial_value_threshold=threshold,
    )
    history = model.fit(
        x, y, epochs=8, batch_size=16, validation_split=0.25, verbose=0, callbacks=[plain, bundled]
    )
    expected = saved_epochs(tmp_path / "keras", ".keras")
    assert saved_epochs(tmp_path / "bundles", ".kbundle") == expected
    assert [r.epoch for r in bundled.records] == expected
    assert bundled.best == plain.best
    if monitor == "val_loss" and mode == "auto":  # the data makes this run skip epochs
        values = history.history["val_loss"]
        assert 1 < len(expected) < len(values), values
    assert list(private_tmp.iterdir()) == []


def test_every_bundle_verifies_loads_and_records_the_epoch_and_logs(
    tmp_path: Path, private_tmp: Path, keras: Any
) -> None:
    model, x, y = regression(keras, learning_rate=0.05)
    callback = BundleCheckpoint(
        str(tmp_path / "ckpt" / "epoch{epoch:03d}-{val_loss:.2f}.kbundle"),
        labels={"run": "unit-test"},
        keep=2,
    )
    history = model.fit(
        x, y, epochs=4, batch_size=16, validation_split=0.25, verbose=0, callbacks=[callback]
    )
    assert [r.epoch for r in callback.records] == [1, 2, 3, 4]
    kept = sorted((tmp_path / "ckpt").iterdir())
    assert kept == [r.path for r in callback.records[-2:]]  # keep=2: the oldest were deleted
    val_loss = history.history["val_loss"]
    assert [p.name for p in kept] == [f"epoch{e:03d}-{val_loss[e - 1]:.2f}.kbundle" for e in (3, 4)]
    for record in callback.records[-2:]:
        report = kbundle.verify(record.path, expect=record.digest)
        labels = report.head.manifest.metadata.labels  # type: ignore[union-attr]
        assert labels["epoch"] == str(record.epoch)
        assert labels["run"] == "unit-test"
        assert float(labels["val_loss"]) == history.history["val_loss"][record.epoch - 1]
        assert set(labels) == {"epoch", "run", "loss", "mae", "val_loss", "val_mae"}
    loaded = kbundle.load(callback.records[-1].path)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert list(private_tmp.iterdir()) == []


def test_the_same_name_every_epoch_is_rewritten_in_place(tmp_path: Path, keras: Any) -> None:
    model, x, y = regression(keras, learning_rate=0.05)
    callback = BundleCheckpoint(tmp_path / "best.kbundle", save_best_only=True, keep=1)
    model.fit(x, y, epochs=3, validation_split=0.25, verbose=0, callbacks=[callback])
    assert [p.name for p in tmp_path.iterdir()] == ["best.kbundle"]
    assert kbundle.inspect(tmp_path / "best.kbundle").digest == callback.records[-1].digest


def test_sign_with_a_key_file_signs_every_bundle(
    tmp_path: Path, keras: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "keys").mkdir()
    key = kbundle.generate_key(tmp_path / "keys" / "release", passphrase=b"s3cret")
    monkeypatch.setenv("KBUNDLE_KEY_PASSPHRASE", "s3cret")
    model, x, y = regression(keras, learning_rate=0.05)
    callback = BundleCheckpoint(tmp_path / "ckpt" / "e{epoch}.kbundle", sign_with=key.private_path)
    model.fit(x, y, epochs=2, validation_split=0.25, verbose=0, callbacks=[callback])
    for record in callback.records:
        report = kbundle.verify(record.path, trusted_keys=[key.public_path])
        assert report.signature is not None and report.signature.trusted
        assert report.signature.trusted_signers == (key.key_id,)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            {"filepath": "ckpt/model.keras"},
            "BundleCheckpoint writes bundles; filepath must end in .kbundle: 'ckpt/model.keras'",
        ),
        (
            {"filepath": "m.kbundle", "save_freq": 10},
            "BundleCheckpoint saves at the end of epochs only: save_freq=10",
        ),
        (
            {"filepath": "m.kbundle", "keep": 0},
            "keep must be a positive number of bundles, or None for all: 0",
        ),
        (
            {"filepath": "m.kbundle", "mode": "lowest"},
            "mode must be one of ('auto', 'min', 'max'): 'lowest'",
        ),
    ],
)
def test_bad_arguments_are_refused_before_training(arguments: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError) as caught:
        BundleCheckpoint(**arguments)
    assert caught.value.message == message


def test_a_name_naming_an_unknown_log_fails_the_fit(tmp_path: Path, keras: Any) -> None:
    model, x, y = regression(keras)
    callback = BundleCheckpoint(tmp_path / "e{epoch}-{val_acc:.2f}.kbundle")
    with pytest.raises(UsageError) as caught:
        model.fit(x, y, epochs=1, validation_split=0.25, verbose=0, callbacks=[callback])
    assert caught.value.message.startswith(
        f"cannot format the checkpoint name {str(tmp_path / 'e{epoch}-{val_acc:.2f}.kbundle')!r}: "
        "KeyError('val_acc')"
    )
    assert list(tmp_path.iterdir()) == []


def test_a_failure_on_the_packing_thread_is_raised_on_the_training_thread(
    tmp_path: Path, private_tmp: Path, keras: Any
) -> None:
    model, x, y = regression(keras)
    missing = tmp_path / "tokenizer.json"
    callback = BundleCheckpoint(tmp_path / "ckpt" / "e{epoch}.kbundle", assets=[missing])
    with pytest.raises(UsageError) as caught:
        model.fit(x, y, epochs=3, validation_split=0.25, verbose=0, callbacks=[callback])
    assert caught.value.message == (
        f"asset {str(missing)!r} cannot be read: No such file or directory"
    )
    callback.wait()  # the packer stops; nothing is left behind
    assert not (tmp_path / "ckpt").exists() or list((tmp_path / "ckpt").iterdir()) == []
    assert list(private_tmp.iterdir()) == []


def test_the_auto_mode_needs_a_direction_it_can_infer(tmp_path: Path, keras: Any) -> None:
    model, x, y = regression(keras)
    callback = BundleCheckpoint(
        tmp_path / "e{epoch}.kbundle", monitor="val_custom", save_best_only=True
    )

    class Custom(keras.callbacks.Callback):  # type: ignore[misc]
        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            assert logs is not None
            logs["val_custom"] = float(epoch)

    with pytest.raises(UsageError, match=r"cannot tell whether monitor='val_custom'"):
        model.fit(x, y, epochs=1, validation_split=0.25, verbose=0, callbacks=[Custom(), callback])


def test_labels_json_round_trip(tmp_path: Path, keras: Any) -> None:
    """A non-finite log value is recorded as text, and the manifest stays valid JSON."""
    model, x, y = regression(keras, learning_rate=5.0)  # diverges to inf/nan
    callback = BundleCheckpoint(tmp_path / "e{epoch}.kbundle")
    model.fit(x, y, epochs=4, batch_size=16, verbose=0, callbacks=[callback])
    labels = json.loads(kbundle.inspect(callback.records[-1].path).manifest_bytes)["metadata"][
        "labels"
    ]
    assert labels["loss"] in ("inf", "nan") or float(labels["loss"]) > 1e6
