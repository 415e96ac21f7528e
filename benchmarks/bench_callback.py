"""What ``kbundle.keras.BundleCheckpoint`` costs a training run, against
``keras.callbacks.ModelCheckpoint`` on the same run.

Three fits of the same model on the same data, interleaved ``--repeat`` times (after one
untimed warm-up of each): no checkpoint, ``ModelCheckpoint`` saving a ``.keras`` file every
epoch, ``BundleCheckpoint`` packing a bundle every epoch. Reported, as medians:

* ``fit``: the whole ``model.fit`` call (for BundleCheckpoint it includes waiting at the end of
  fit for the last bundle);
* ``on the training thread per epoch``: the time the training thread spends inside the
  callback's ``on_epoch_end`` (the decision and the save; for BundleCheckpoint also any wait
  for the packer), measured by wrapping that method;
* ``overhead``: ``fit`` minus the fit without any checkpoint.

    python benchmarks/bench_callback.py                 # a 1.1M-parameter MLP, 8 epochs
    python benchmarks/bench_callback.py --units 2048 --epochs 5 --repeat 5

Timing is meaningful only on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def build(keras: Any, units: int, features: int) -> Any:
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((features,)),
            keras.layers.Dense(units, activation="relu"),
            keras.layers.Dense(units // 2, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    return model


def timed(callback: Any, spent: list[float]) -> Any:
    """``callback`` with its ``on_epoch_end`` timed into ``spent``."""
    inner: Callable[..., Any] = callback.on_epoch_end

    def on_epoch_end(epoch: int, logs: Any = None) -> None:
        start = time.perf_counter()
        inner(epoch, logs)
        spent.append(time.perf_counter() - start)

    callback.on_epoch_end = on_epoch_end
    return callback


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--units", type=int, default=1024, help="width of the first layer")
    parser.add_argument("--features", type=int, default=512)
    parser.add_argument("--samples", type=int, default=8192)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    import keras
    import numpy as np

    from kbundle.keras import BundleCheckpoint

    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.samples, args.features)).astype("float32")
    y = rng.integers(0, 10, args.samples)
    params = build(keras, args.units, args.features).count_params()
    work = Path(tempfile.mkdtemp(prefix="bench-callback-"))

    def run(kind: str) -> tuple[float, list[float], int]:
        shutil.rmtree(work / kind, ignore_errors=True)
        model = build(keras, args.units, args.features)
        spent: list[float] = []
        callbacks = []
        if kind == "keras":
            callbacks = [
                timed(
                    keras.callbacks.ModelCheckpoint(str(work / kind / "e{epoch:03d}.keras")), spent
                )
            ]
        elif kind == "kbundle":
            callbacks = [timed(BundleCheckpoint(work / kind / "e{epoch:03d}.kbundle"), spent)]
        (work / kind).mkdir(parents=True)
        os.sync()
        start = time.perf_counter()
        model.fit(x, y, epochs=args.epochs, batch_size=128, verbose=0, callbacks=callbacks)
        elapsed = time.perf_counter() - start
        size = sum(p.stat().st_size for p in (work / kind).iterdir())
        return elapsed, spent, size

    kinds = ("none", "keras", "kbundle")
    for kind in kinds:
        run(kind)  # warm-up: graph tracing, first saves
    fits: dict[str, list[float]] = {k: [] for k in kinds}
    epoch_end: dict[str, list[float]] = {k: [] for k in kinds}
    sizes: dict[str, int] = {}
    for _ in range(args.repeat):
        for kind in kinds:
            elapsed, spent, size = run(kind)
            fits[kind].append(elapsed)
            epoch_end[kind].extend(spent)
            sizes[kind] = size
    shutil.rmtree(work, ignore_errors=True)

    base = statistics.median(fits["none"])
    print(
        f"model: {params} parameters; {args.samples} samples x {args.epochs} epochs, batch 128; "
        f"median of {args.repeat} interleaved runs; {os.cpu_count()} CPUs"
    )
    print()
    print(
        "| callback | fit (s) | overhead vs no checkpoint (s) "
        "| on the training thread per epoch (ms) | written per run |"
    )
    print("|---|---|---|---|---|")
    for kind, label in (
        ("none", "none"),
        ("keras", "ModelCheckpoint"),
        ("kbundle", "BundleCheckpoint"),
    ):
        fit = statistics.median(fits[kind])
        per_epoch = f"{statistics.median(epoch_end[kind]) * 1000:.0f}" if epoch_end[kind] else "-"
        written = f"{sizes[kind] / 1e6:.1f} MB" if sizes.get(kind) else "-"
        print(f"| {label} | {fit:.2f} | {fit - base:+.2f} | {per_epoch} | {written} |")


if __name__ == "__main__":
    main()
