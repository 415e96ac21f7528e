"""The user's training script: one small model per case, its predictions, and its bundle.

Run as ``python train.py OUT`` from the project directory. Writes OUT/bundles/CASE.kbundle,
OUT/inputs/CASE.npy, OUT/expected/CASE.npy, OUT/files/CASE.keras (plain Keras files) and
OUT/results.json (pack-time errors the tests check).
"""

import json
import sys
from pathlib import Path

import keras
import numpy as np
from acme_layers.layers import Clip
from keras import ops
from mypkg.acme import Scale, soft_sign
from mypkg.blocks import Residual
from mypkg.layers import EagerWeights, MyCustomLayer, MyLoss, MyMetric, scaled_tanh
from mypkg.models import TinyModel
from sidefx import Tripled
from twomod.a import Shifted

import kbundle


class MainScale(keras.layers.Layer):
    """Defined in the __main__ script: no source file can be imported, so it is pickled."""

    def __init__(self, offset=0.5, **kwargs):
        super().__init__(**kwargs)
        self.offset = offset

    def build(self, input_shape):
        self.gain = self.add_weight(
            shape=(input_shape[-1],), initializer="random_normal", name="gain"
        )

    def call(self, inputs):
        return ops.sin(inputs * self.gain) + self.offset

    def get_config(self):
        return {**super().get_config(), "offset": self.offset}


def sequential(*layers, features=4):
    return keras.Sequential([keras.Input((features,)), *layers])


def build_cases():
    """name -> (model, input batch); weights are seeded, so every run builds the same."""
    cases = {}

    def add(name, make, features=4):
        keras.utils.set_random_seed(len(cases))
        model = make()
        x = np.random.default_rng(len(cases)).standard_normal((6, features)).astype("float32")
        model(x)  # builds subclassed models too
        cases[name] = (model, x)

    add("build_weights", lambda: sequential(MyCustomLayer(3)))
    add("init_weights", lambda: sequential(EagerWeights(4, 3)))
    add("nested", lambda: sequential(Residual(4)))
    add("subclassed", lambda: TinyModel(5))
    add("activation", lambda: sequential(keras.layers.Dense(3, activation=scaled_tanh)))
    add("registered", lambda: sequential(Scale(3.0), keras.layers.Dense(2, activation=soft_sign)))
    add("main_script", lambda: sequential(MainScale(0.25), keras.layers.Dense(2)))
    add("two_modules", lambda: sequential(Shifted(), keras.layers.Dense(2)))
    add("side_effect", lambda: sequential(Tripled(), keras.layers.Dense(2)))
    add("distribution", lambda: sequential(keras.layers.Dense(3), Clip(0.3)))
    add(
        "lambda",
        lambda: sequential(keras.layers.Lambda(lambda t: t * 2.0 + 1.0), keras.layers.Dense(2)),
    )

    def compiled():
        model = sequential(keras.layers.Dense(2))
        model.compile(optimizer="sgd", loss=MyLoss(0.3), metrics=[MyMetric()])
        return model

    add("loss_metric", compiled)
    return cases


def local_class_model():
    """A layer class made inside a function: no module holds it by name; the live model does."""

    class Doubler(keras.layers.Layer):
        def call(self, inputs):
            return inputs * 2.0

    return sequential(Doubler(), keras.layers.Dense(2))


def legacy_h5_file(out):
    """A legacy .h5 file: its config names classes without their modules."""
    keras.utils.set_random_seed(77)
    model = sequential(MyCustomLayer(3), Scale(1.5))
    x = np.random.default_rng(77).standard_normal((6, 4)).astype("float32")
    model.save(out / "files" / "legacy.h5")
    np.save(out / "inputs" / "legacy_h5.npy", x)
    np.save(out / "expected" / "legacy_h5.npy", model.predict(x, verbose=0))
    return out / "files" / "legacy.h5"


def local_function_model():
    """An activation made inside a function: not registered; only the live model holds it."""

    def clipped(x):
        return ops.clip(x, -1.0, 1.0)

    return sequential(keras.layers.Dense(2, activation=clipped))


def main(out):
    for area in ("bundles", "inputs", "expected", "files"):
        (out / area).mkdir(parents=True, exist_ok=True)
    results = {}
    for name, (model, x) in build_cases().items():
        np.save(out / "inputs" / f"{name}.npy", x)
        np.save(out / "expected" / f"{name}.npy", model.predict(x, verbose=0))
        model.save(out / "files" / f"{name}.keras")
        result = kbundle.pack(model, out / "bundles" / f"{name}.kbundle")
        results[name] = [
            {
                "name": o.name,
                "kind": o.kind,
                "transport": o.transport,
                "module": o.module,
                "sources": [s.path for s in o.sources],
                "requirement": o.requirement,
            }
            for o in result.manifest.custom_objects
        ]

    for name, model in (
        ("local_class", local_class_model()),
        ("local_function", local_function_model()),
    ):
        keras.utils.set_random_seed(99)
        x = np.random.default_rng(99).standard_normal((6, 4)).astype("float32")
        model(x)
        np.save(out / "inputs" / f"{name}.npy", x)
        np.save(out / "expected" / f"{name}.npy", model.predict(x, verbose=0))
        result = kbundle.pack(model, out / "bundles" / f"{name}.kbundle")
        results[name] = [
            {"name": o.name, "transport": o.transport} for o in result.manifest.custom_objects
        ]

    # Objects given in custom_objects= travel even when the config does not name them.
    result = kbundle.pack(
        sequential(EagerWeights(4, 3)),
        out / "bundles" / "given.kbundle",
        custom_objects={"scaled_tanh": scaled_tanh},
    )
    results["given"] = [
        {"name": o.name, "transport": o.transport} for o in result.manifest.custom_objects
    ]

    result = kbundle.pack(
        legacy_h5_file(out), out / "bundles" / "legacy_h5.kbundle", custom_modules=["mypkg.layers"]
    )
    results["legacy_h5"] = [
        {"name": o.name, "transport": o.transport} for o in result.manifest.custom_objects
    ]
    (out / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
