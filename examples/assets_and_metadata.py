"""Assets and metadata: a classifier that travels with its label map and vocabulary, and
labels saying which data it was trained on (docs/assets-and-metadata.md).

    python examples/assets_and_metadata.py [WORKDIR]

Trains a tiny classifier, packs it with ``assets=`` and ``labels=``, shows what ``kbundle
inspect`` says, then ``kbundle.open`` loads the model and reads the verified label map to
name its predictions. Everything is written under WORKDIR (default ./assets-output).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def main() -> None:
    workdir = Path(sys.argv[1] if len(sys.argv) > 1 else "assets-output").resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    (workdir / "vocab").mkdir(parents=True)

    import keras
    import numpy as np

    import kbundle

    keras.utils.set_random_seed(1)
    x = np.random.default_rng(1).standard_normal((300, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("int64") + (x[:, 1] > 0).astype("int64")
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(12, activation="relu"),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=5, verbose=0)

    label_map = workdir / "labels.json"
    label_map.write_text(json.dumps({"0": "low", "1": "medium", "2": "high"}))
    (workdir / "vocab" / "features.txt").write_text("height\nweight\nage\nincome\n")

    bundle = workdir / "classifier.kbundle"
    result = kbundle.pack(
        model,
        bundle,
        assets=[label_map, workdir / "vocab"],
        labels={"dataset": "synthetic-v1", "owner": "examples"},
    )
    print(f"packed {bundle.name}: {result.digest}")
    shown = subprocess.run(
        [sys.executable, "-m", "kbundle", "inspect", str(bundle)], capture_output=True, text=True
    )
    print(
        "\n".join(
            line
            for line in shown.stdout.splitlines()
            if line[:11].strip() in ("assets", "labels", "provenance")
        )
    )

    with kbundle.open(bundle, expect=result.digest) as opened:
        names = json.loads(opened.assets["labels.json"].read_text())
        features = (opened.assets["vocab"] / "features.txt").read_text().split()
        predicted = opened.model.predict(x[:5], verbose=0).argmax(axis=1)
        print(f"features: {', '.join(features)}")
        print(f"predictions: {[names[str(i)] for i in predicted]}")
        print(f"trained on: {opened.metadata.labels['dataset']}")
    print("assets OK: the bundled label map named the predictions")


if __name__ == "__main__":
    main()
