"""End-to-end demo: train a tiny model, then pack -> verify -> unpack with the kbundle CLI,
and check that the unpacked model predicts exactly what the trained one did.

Run with ``make demo`` (sets up .venv first) or ``python examples/demo.py [WORKDIR]``.
Everything is written under WORKDIR (default: ./demo-output), which is replaced each run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def kbundle(*args: str) -> str:
    """Run the kbundle CLI as a user would; show the command and return its stdout."""
    print(f"$ kbundle {' '.join(args)}", flush=True)
    result = subprocess.run(
        [sys.executable, "-m", "kbundle", *args], capture_output=True, text=True
    )
    sys.stderr.write(result.stderr)
    if result.returncode != 0:
        sys.exit(f"demo failed: kbundle {args[0]} exited with {result.returncode}")
    print(result.stdout, end="", flush=True)
    return result.stdout


def main() -> None:
    workdir = Path(sys.argv[1] if len(sys.argv) > 1 else "demo-output").resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)

    import keras
    import numpy as np

    print("1. train a tiny model on random data", flush=True)
    keras.utils.set_random_seed(7)
    features = np.random.default_rng(7).standard_normal((256, 10)).astype("float32")
    labels = (features.sum(axis=1) > 0).astype("float32")
    model = keras.Sequential(
        [
            keras.Input((10,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(1, activation="sigmoid"),
        ],
        name="demo_classifier",
    )
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    model.fit(features, labels, epochs=3, batch_size=32, verbose=0)
    model_path = workdir / "model.keras"
    model.save(model_path)
    expected = model.predict(features, verbose=0)

    print("2. pack, verify against the printed digest, unpack (which proves the model loads)")
    bundle = workdir / "model.kbundle"
    digest = kbundle("pack", str(model_path), "-o", str(bundle), "--quiet").split()[0]
    kbundle("verify", str(bundle), "--expect", digest)
    kbundle("inspect", str(bundle))
    unpacked = Path(
        kbundle("unpack", str(bundle), "-d", str(workdir / "unpacked"), "--expect", digest).strip()
    )

    print("3. the unpacked model predicts exactly what the trained one did")
    actual = keras.saving.load_model(unpacked).predict(features, verbose=0)
    if not np.array_equal(expected, actual):
        sys.exit(
            f"demo failed: predictions differ (max abs diff {np.max(np.abs(expected - actual))})"
        )
    size = bundle.stat().st_size
    print(
        f"OK: {len(features)} predictions bit-identical; "
        f"bundle {bundle} ({size} bytes), digest {digest}"
    )


if __name__ == "__main__":
    main()
