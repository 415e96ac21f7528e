"""The deploy side: load bundles where the code that defined their custom objects is absent.

Run as ``python load_all.py OUT CASE,CASE,...`` from a directory holding only this script.
Writes OUT/loaded/CASE.npy (predictions) and OUT/loaded.json (what the tests check).
"""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

import kbundle

PROJECT_MODULES = ("mypkg", "twomod", "sidefx")


def main(out, cases):
    absent = {name: importlib.util.find_spec(name) is None for name in PROJECT_MODULES}
    import keras

    path_before = list(sys.path)
    meta_path_before = list(sys.meta_path)

    report = {"absent_before": absent, "cases": {}}
    (out / "loaded").mkdir(exist_ok=True)
    for case in cases:
        model = kbundle.load(out / "bundles" / f"{case}.kbundle", trust_code=True)
        x = np.load(out / "inputs" / f"{case}.npy")
        np.save(out / "loaded" / f"{case}.npy", model.predict(x, verbose=0))
        report["cases"][case] = {
            "model": type(model).__name__,
            "layers": [
                f"{type(layer).__module__}.{type(layer).__qualname__}" for layer in model.layers
            ],
            "loss": type(model.loss).__name__ if getattr(model, "loss", None) is not None else None,
            "metrics": [type(m).__name__ for m in getattr(model, "metrics", [])],
        }
    try:
        kbundle.load(out / "bundles" / "lambda.kbundle")
    except kbundle.ModelLoadError as exc:
        report["lambda_safe_mode_error"] = str(exc)
    model = kbundle.load(out / "bundles" / "lambda.kbundle", safe_mode=False)
    np.save(
        out / "loaded" / "lambda.npy",
        model.predict(np.load(out / "inputs" / "lambda.npy"), verbose=0),
    )
    report["sys_path_unchanged"] = sys.path == path_before
    report["meta_path_unchanged"] = sys.meta_path == meta_path_before
    report["leftover_modules"] = sorted(
        m for m in sys.modules if m.split(".")[0] in PROJECT_MODULES
    )
    report["registered_after"] = sorted(keras.saving.get_custom_objects())
    (out / "loaded.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2].split(","))
