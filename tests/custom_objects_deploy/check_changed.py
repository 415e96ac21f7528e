"""A deploy process that has its own, changed ``mypkg`` imported when it loads a bundle.

Run as ``python check_changed.py OUT`` with the changed project on PYTHONPATH. Writes
OUT/changed.json: the warnings kbundle gave, whether the bundled definition was used, and
whether this process's own modules and registrations were left as they were.
"""

import json
import sys
import warnings
from pathlib import Path

import keras
import mypkg.acme as own_acme
import numpy as np

import kbundle


def main(out):
    own_scale = keras.saving.get_registered_object("acme>Scale")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = kbundle.load(out / "bundles" / "registered.kbundle", trust_code=True)
    prediction = model.predict(np.load(out / "inputs" / "registered.npy"), verbose=0)
    report = {
        "warnings": [
            {"category": w.category.__name__, "message": str(w.message)}
            for w in caught
            if w.category.__name__ == "CodeConflictWarning"
        ],
        "bundled_definition_used": bool(
            np.array_equal(prediction, np.load(out / "expected" / "registered.npy"))
        ),
        "loaded_class_is_own": type(model.layers[0]) is own_acme.Scale,
        "own_module_kept": sys.modules["mypkg.acme"] is own_acme,
        "own_registration_kept": keras.saving.get_registered_object("acme>Scale")
        is own_scale
        is own_acme.Scale,
    }
    (out / "changed.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
