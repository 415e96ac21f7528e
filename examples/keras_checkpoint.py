"""A Keras callback that writes verified bundles during ``fit``
(docs/keras-callback.md).

    python examples/keras_checkpoint.py [WORKDIR]

Trains a small regression for 8 epochs with ``BundleCheckpoint`` keeping the three best
bundles by validation loss, shows what it wrote, and loads the best one back. Everything is
written under WORKDIR (default ./checkpoint-output).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def main() -> None:
    workdir = Path(sys.argv[1] if len(sys.argv) > 1 else "checkpoint-output").resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)

    import keras
    import numpy as np

    import kbundle
    from kbundle.keras import BundleCheckpoint

    keras.utils.set_random_seed(5)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((96, 4)).astype("float32")
    y = (x @ np.array([1.0, -2.0, 0.5, 3.0], dtype="float32"))[:, None]
    y += rng.standard_normal((96, 1)).astype("float32")
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(1)]
    )
    model.compile(keras.optimizers.SGD(0.3), "mse")

    checkpoint = BundleCheckpoint(
        workdir / "ckpt" / "epoch{epoch:03d}-{val_loss:.2f}.kbundle",
        monitor="val_loss",
        save_best_only=True,
        keep=3,
        labels={"experiment": "example"},
    )
    history = model.fit(
        x, y, epochs=8, batch_size=16, validation_split=0.25, verbose=0, callbacks=[checkpoint]
    )
    print("val_loss by epoch:", [round(v, 3) for v in history.history["val_loss"]])
    for record in checkpoint.records:
        print(f"epoch {record.epoch}: {record.path.name} {record.digest[:19]}...")
    kept = sorted(p.name for p in (workdir / "ckpt").iterdir())
    print(f"kept (keep=3): {kept}")

    best = checkpoint.records[-1]
    restored = kbundle.load(best.path, expect=best.digest)
    labels = kbundle.inspect(best.path).manifest.metadata.labels  # type: ignore[union-attr]
    print(f"best: epoch {labels['epoch']}, val_loss {float(labels['val_loss']):.3f}")
    assert restored.count_params() == model.count_params()
    print("checkpoints OK: the best bundle loads")


if __name__ == "__main__":
    main()
