"""Custom objects travel with the model: pack a model with custom layers, load it elsewhere.

Trains a tiny model that uses ``MyCustomLayer`` (from the local module my_layers.py, so its
source travels) and ``Offset`` (defined in this script, so it is cloudpickled), packs it,
then loads the bundle in a fresh Python process whose working directory and sys.path hold
neither definition: first without trust (refused, exit code 4, nothing runs), then with
``--trust-code``. Runs offline in seconds::

    python examples/custom_layer.py
"""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
from keras import ops

sys.path.insert(0, str(Path(__file__).resolve().parent))  # my_layers.py, as in a project
from my_layers import MyCustomLayer

import kbundle


class Offset(keras.layers.Layer):
    """Defined in the __main__ script: no importable source, so it travels as a pickle."""

    def __init__(self, shift=0.5, **kwargs):
        super().__init__(**kwargs)
        self.shift = shift

    def call(self, inputs):
        return inputs + self.shift

    def get_config(self):
        return {**super().get_config(), "shift": self.shift}


LOADER = """
import sys, numpy as np, kbundle
model = kbundle.load(sys.argv[1], trust_code=True)
np.save(sys.argv[3], model.predict(np.load(sys.argv[2]), verbose=0))
"""


def main() -> None:
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((6,)), MyCustomLayer(8), Offset(0.25), keras.layers.Dense(1)]
    )
    model.compile(optimizer="adam", loss="mse")
    x = np.random.default_rng(0).standard_normal((64, 6)).astype("float32")
    y = ops.convert_to_numpy(ops.sum(x[:, :3], axis=1, keepdims=True))
    model.fit(x, y, epochs=2, verbose=0)

    work = Path(tempfile.mkdtemp(prefix="kbundle-example-"))
    result = kbundle.pack(model, work / "model.kbundle")
    print(f"packed {result.path}: {result.digest}")
    for obj in result.manifest.custom_objects:
        print(f"  {obj.name}: {obj.transport} ({obj.module}.{obj.qualname})")

    # The deploy side: a fresh process in an empty directory, this checkout's kbundle only.
    env = dict(os.environ, PYTHONPATH=str(Path(kbundle.__file__).resolve().parents[1]))
    deploy = work / "deploy"
    deploy.mkdir()
    refused = subprocess.run(
        [sys.executable, "-m", "kbundle", "unpack", str(result.path), "-d", str(deploy / "out")],
        capture_output=True,
        text=True,
        cwd=deploy,
        env=env,
    )
    print(f"without --trust-code: exit {refused.returncode}: {refused.stderr.strip()}")

    np.save(work / "x.npy", x[:8])
    subprocess.run(
        [sys.executable, "-c", LOADER, str(result.path), str(work / "x.npy"), str(work / "y.npy")],
        check=True,
        cwd=deploy,
        env=env,
    )
    same = np.array_equal(np.load(work / "y.npy"), model.predict(x[:8], verbose=0))
    print(f"with trust: the loaded model's predictions are bit-identical: {same}")
    print(f"review the bundled code with: kbundle show-code {result.path}")


if __name__ == "__main__":
    main()
