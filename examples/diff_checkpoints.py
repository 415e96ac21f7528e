"""``kbundle diff`` on two checkpoints of one training run (docs/diff.md).

    python examples/diff_checkpoints.py [WORKDIR]

Trains for three epochs with ``BundleCheckpoint`` writing a bundle every epoch, then runs
``kbundle diff`` on the first and the last: the weights changed (which datasets, how many
values, by how much), the architecture did not, and the labels say which epoch and loss each
came from. ``kbundle diff`` exits 10 when bundles differ. Everything is written under WORKDIR
(default ./diff-output).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

EXIT_DIFFERENT = 10


def main() -> None:
    workdir = Path(sys.argv[1] if len(sys.argv) > 1 else "diff-output").resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)

    import keras
    import numpy as np

    from kbundle.keras import BundleCheckpoint

    keras.utils.set_random_seed(11)
    x = np.random.default_rng(11).standard_normal((128, 6)).astype("float32")
    y = (x[:, :2].sum(axis=1, keepdims=True) > 0).astype("float32")
    model = keras.Sequential(
        [
            keras.Input((6,), name="features"),
            keras.layers.Dense(8, activation="relu", name="hidden"),
            keras.layers.Dense(1, activation="sigmoid", name="score"),
        ],
        name="churn",
    )
    model.compile("adam", "binary_crossentropy")
    checkpoint = BundleCheckpoint(workdir / "epoch{epoch:03d}.kbundle")
    model.fit(x, y, epochs=3, validation_split=0.25, verbose=0, callbacks=[checkpoint])

    first, last = checkpoint.records[0].path, checkpoint.records[-1].path
    print(f"$ kbundle diff {first.name} {last.name}", flush=True)
    result = subprocess.run(
        [sys.executable, "-m", "kbundle", "diff", str(first), str(last)],
        capture_output=True,
        text=True,
        cwd=workdir,
    )
    print(result.stdout, end="")
    sys.stderr.write(result.stderr)
    if result.returncode != EXIT_DIFFERENT:
        sys.exit(f"expected exit {EXIT_DIFFERENT} (the bundles differ), got {result.returncode}")
    print(f"diff OK: exit {result.returncode}")


if __name__ == "__main__":
    main()
