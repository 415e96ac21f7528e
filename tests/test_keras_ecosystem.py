"""Models of Keras's ecosystem (keras-hub backbones): packed without a flag, recorded as
built-ins with the distribution that provides them, probed with their dict inputs, and
loaded bit-identical in a fresh process.

keras-hub is a test dependency installed without its dependencies (see the Makefile: its
tensorflow-text pulls plain ``tensorflow`` over ``tensorflow-cpu``); the backbones are built
here at tiny sizes, never downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import child_env, run_cli, run_python

import kbundle

pytestmark = [pytest.mark.keras, pytest.mark.slow]

keras_hub = pytest.importorskip("keras_hub", reason="make dev installs keras-hub")

_LOAD_ALL = """
import json, sys
import keras, numpy as np
import kbundle

report = {}
for bundle in sys.argv[2:]:
    target = f"{sys.argv[1]}/{bundle.rsplit('/', 1)[-1]}"
    result = kbundle.unpack(bundle, target, load_model=True)
    probe = [(f.severity.name, f.actual) for f in result.environment if f.location == "probe"]
    model = kbundle.load(bundle)
    with np.load(result.path / "probe/inputs.npz") as data:
        arrays = [data[f"input_{i}"] for i in range(len(data.files))]
    with np.load(result.path / "probe/outputs.npz") as data:
        recorded = [data[f"output_{i}"] for i in range(len(data.files))]
    by_name = dict(zip(sorted(model.input), arrays))  # flattened in sorted key order
    outputs = [keras.ops.convert_to_numpy(t) for t in keras.tree.flatten(model(by_name))]
    same = len(outputs) == len(recorded) and all(
        np.array_equal(a, b) for a, b in zip(outputs, recorded)
    )
    report[bundle] = {"probe": probe, "bit_identical": same, "inputs": sorted(model.input)}
print(json.dumps(report))
"""


def _backbones() -> dict[str, Any]:
    models = keras_hub.models
    small = {"vocabulary_size": 50, "num_layers": 1, "hidden_dim": 8, "intermediate_dim": 16}
    return {
        "bert": models.BertBackbone(num_heads=2, max_sequence_length=8, **small),
        "gpt2": models.GPT2Backbone(num_heads=2, max_sequence_length=8, **small),
        "llama": models.LlamaBackbone(num_query_heads=2, num_key_value_heads=1, **small),
    }


def test_keras_hub_backbones_pack_without_a_flag_and_probe(tmp_path: Path, keras: Any) -> None:
    keras.utils.set_random_seed(7)
    bundles = []
    for name, model in _backbones().items():
        # The inputs are a dict whose keys are not in alphabetical order (token_ids first).
        assert next(iter(model.input)) == "token_ids"
        model.save(tmp_path / f"{name}.keras")
        bundle = tmp_path / f"{name}.kbundle"
        done = run_cli("pack", tmp_path / f"{name}.keras", "-o", bundle, "-q")
        assert done.returncode == 0, done.stderr
        assert "kbundle: note: no probe stored" not in done.stderr, done.stderr
        manifest = kbundle.inspect(bundle).manifest
        assert manifest.probe is not None
        backbone = next(o for o in manifest.custom_objects if o.qualname.endswith("Backbone"))
        assert (backbone.transport, backbone.distributions) == (
            "builtin",
            {"keras-hub": keras_hub.__version__},
        )
        assert backbone.module.startswith("keras_hub.src.models.")
        assert {o.transport for o in manifest.custom_objects} == {"builtin"}
        requirements = kbundle.unpack(bundle, tmp_path / f"{name}-files").path
        pins = (requirements / "env/requirements.txt").read_text().splitlines()
        assert f"keras-hub=={keras_hub.__version__}" in pins
        bundles.append(bundle)
    # The live model too: a dict-input model packed in the process that built it.
    live = kbundle.pack(_backbones()["gpt2"], tmp_path / "live.kbundle")
    assert (live.notes, live.manifest.probe is not None) == ((), True)

    (tmp_path / "loaded").mkdir()
    done = run_python("-c", _LOAD_ALL, tmp_path / "loaded", *bundles, env=child_env())
    assert done.returncode == 0, done.stderr
    assert "doesn't match the expected structure" not in done.stderr
    report = json.loads(done.stdout)
    assert {Path(bundle).stem: entry for bundle, entry in report.items()} == {
        name: {
            "probe": [["OK", "max abs diff 0, max rel diff 0"]],
            "bit_identical": True,
            "inputs": ["padding_mask", "segment_ids", "token_ids"]
            if name == "bert"
            else ["padding_mask", "token_ids"],
        }
        for name in ("bert", "gpt2", "llama")
    }
