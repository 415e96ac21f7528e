"""``kbundle diff``: two checkpoints of one real training run, architectures that differ,
bundled source, environments, assets and labels, and what does not count.

Everything compared is read from verified files; nothing is imported or loaded (the bundled
module of a custom object is checked to stay out of ``sys.modules``). The environment section
is checked against ``kbundle.check`` itself: the same engine gives the same verdicts.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import assert_clean_failure, run_cli

import kbundle
from kbundle.container.manifest import CustomObject, SourceFile
from kbundle.container.writer import PayloadFile
from kbundle.keras import BundleCheckpoint
from kbundle.models import compare
from kbundle.pipelines.pack import Extras

EXIT_DIFFERENT = 10


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three checkpoints (epochs 1-3) of one training run, written by BundleCheckpoint."""
    import keras

    keras.utils.set_random_seed(11)
    rng = np.random.default_rng(11)
    x = rng.standard_normal((128, 6)).astype("float32")
    y = (x[:, :2].sum(axis=1, keepdims=True) > 0).astype("float32")
    model = keras.Sequential(
        [
            keras.Input((6,), name="features"),
            keras.layers.Dense(8, activation="relu", name="hidden"),
            keras.layers.Dense(1, activation="sigmoid", name="score"),
        ],
        name="churn",
    )
    model.compile("adam", "binary_crossentropy", metrics=["accuracy"])
    directory = tmp_path_factory.mktemp("ckpt")
    callback = BundleCheckpoint(directory / "epoch{epoch:03d}.kbundle", labels={"run": "r1"})
    model.fit(x, y, epochs=3, batch_size=32, validation_split=0.25, verbose=0, callbacks=[callback])
    return [record.path for record in callback.records]


def sections(result: kbundle.BundleDiff) -> dict[str, list[str]]:
    return {
        name: [c.location for c in result.section(name)] for name in result.differing_sections()
    }


def test_two_checkpoints_of_one_run_differ_in_weights_and_labels(checkpoints: list[Path]) -> None:
    first, _, last = checkpoints
    result = kbundle.diff(first, last)
    assert not result.equal and not result.identical and result.verified
    assert result.differing_sections() == ["weights", "members", "metadata"]
    assert result.section("architecture") == [] and result.section("model") == []
    weights = {c.location: c for c in result.section("weights")}
    kernel = weights["layers/dense/vars/0"]
    assert (kernel.kind, kernel.before, kernel.after) == (
        "changed",
        "(6, 8) float32",
        "(6, 8) float32",
    )
    assert kernel.detail is not None and kernel.detail.startswith(
        "48 of 48 values differ, max |after - before| "
    )
    assert "optimizer/vars/0" in weights  # the iteration count
    (member,) = result.section("members")
    assert member.location == "model/model.keras"
    # metadata.json too when the two saves fell in different seconds
    assert member.detail in (
        "zip entries that differ: model.weights.h5",
        "zip entries that differ: metadata.json, model.weights.h5",
    )
    labels = {c.location: (c.before, c.after) for c in result.section("metadata")}
    assert labels["labels.epoch"] == ("1", "3")
    assert "labels.run" not in labels and "labels.val_loss" in labels
    assert "created" in [c.location for c in result.section("notes")] or first.stat()  # may tie


def test_the_cli_shows_the_diff_and_exits_10(checkpoints: list[Path]) -> None:
    first, _, last = checkpoints
    text = run_cli("diff", first, last)
    assert text.returncode == EXIT_DIFFERENT, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].startswith(f"before  {kbundle.inspect(first).digest}  {first} (format 1.1, ")
    assert "weights: 13 changes" in lines  # 4 weights; the optimizer: its step, 8 moments
    assert any(line.startswith("  ~ layers/dense/vars/0  (6, 8) float32") for line in lines)
    assert "  ~ labels.epoch  1 -> 3" in lines
    assert lines[-1] == "verdict: the bundles differ in weights, members, metadata (exit 10)"
    as_json = run_cli("diff", first, last, "--json")
    assert as_json.returncode == EXIT_DIFFERENT
    data = json.loads(as_json.stdout)
    assert (data["equal"], data["exit_code"]) == (False, EXIT_DIFFERENT)
    assert data["differing_sections"] == ["weights", "members", "metadata"]
    assert {c["section"] for c in data["changes"]} >= {"weights", "members", "metadata"}


def test_a_bundle_is_equal_to_itself_and_to_a_repack(
    tmp_path: Path, saved_keras_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767225600")
    one = kbundle.pack(saved_keras_file, tmp_path / "one.kbundle", probe=False).path
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767312000")
    two = kbundle.pack(saved_keras_file, tmp_path / "two.kbundle", probe=False).path
    same = kbundle.diff(one, one)
    assert same.identical and same.equal and same.changes == ()
    repacked = kbundle.diff(one, two)
    assert repacked.equal and not repacked.identical
    assert [(c.section, c.location, c.counts) for c in repacked.changes] == [
        ("notes", "created", False)
    ]
    result = run_cli("diff", one, two)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        result.stdout.splitlines()[-1] == "verdict: equal: only how they were made differs (exit 0)"
    )


def test_a_live_model_saved_twice_is_equal(tmp_path: Path, sequential_model: Any) -> None:
    one = kbundle.pack(sequential_model, tmp_path / "one.kbundle", probe=False).path
    time.sleep(1.1)  # Keras records the save time to the second in the .keras file
    two = kbundle.pack(sequential_model, tmp_path / "two.kbundle", probe=False).path
    result = kbundle.diff(one, two)
    assert result.equal, [c for c in result.changes if c.counts]
    (member,) = result.section("members")
    assert (member.counts, member.detail) == (False, "zip entries that differ: metadata.json")
    assert "model.saved_by.date_saved" in [c.location for c in result.section("notes")]


def test_architecture_changes_are_read_from_the_configs(tmp_path: Path, keras: Any) -> None:
    def model(units: int, extra: bool) -> Any:
        keras.utils.set_random_seed(0)
        layers = [
            keras.Input((4,), name="x"),
            keras.layers.Dense(units, name="hidden"),
            keras.layers.Dense(1, name="out"),
        ]
        if extra:
            layers.append(keras.layers.Dense(1, activation="sigmoid", name="squash"))
        return keras.Sequential(layers, name="arch")

    before = kbundle.pack(model(8, False), tmp_path / "a.kbundle", probe=False).path
    after = kbundle.pack(model(16, True), tmp_path / "b.kbundle", probe=False).path
    result = kbundle.diff(before, after)
    changes = {c.location: (c.kind, c.before, c.after) for c in result.section("architecture")}
    assert changes["layers.squash"] == (
        "added",
        None,
        'Dense {"activation": "sigmoid", "units": 1}',
    )
    assert changes["layers.hidden.config.units"] == ("changed", "8", "16")
    assert changes["layers.out.build_config.input_shape[1]"] == ("changed", "8", "16")
    weights = {c.location: (c.kind, c.before, c.after) for c in result.section("weights")}
    assert weights["layers/dense/vars/0"] == ("changed", "(4, 8) float32", "(4, 16) float32")
    assert weights["layers/dense_2/vars/0"] == ("added", None, "(1, 1) float32")
    model_fields = {c.location for c in result.section("model")}
    assert "model.parameter_count" in model_fields


def test_weights_compare_the_same_in_small_blocks(
    checkpoints: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = kbundle.diff(checkpoints[0], checkpoints[1]).section("weights")
    monkeypatch.setattr(compare, "BLOCK_BYTES", 8)  # a row or two at a time
    assert kbundle.diff(checkpoints[0], checkpoints[1]).section("weights") == whole


def _code_extras(text: str) -> Any:
    def extras(model: Any, scratch: Path, fmt: str) -> Extras:
        source = scratch / "scaled_layer_code.py"
        source.write_text(text)
        record = CustomObject(
            name="scaled",
            kind="function",
            module="scaled_layer_code",
            qualname="scaled",
            transport="source",
            sources=[SourceFile(module="scaled_layer_code", path="code/scaled_layer_code.py")],
        )
        return Extras(
            payload=(PayloadFile("code/scaled_layer_code.py", source, source.stat().st_size),),
            fields={"custom_objects": [record]},
        )

    return extras


def test_bundled_source_changes_are_a_unified_diff_and_nothing_is_imported(
    tmp_path: Path, saved_keras_file: Path
) -> None:
    before = kbundle.pack(
        saved_keras_file, tmp_path / "a.kbundle", probe=False,
        extras=_code_extras("def scaled(x):\n    return x * 2\n"),
    ).path  # fmt: skip
    after = kbundle.pack(
        saved_keras_file, tmp_path / "b.kbundle", probe=False,
        extras=_code_extras("import os\n\n\ndef scaled(x):\n    return x * 3\n"),
    ).path  # fmt: skip
    result = kbundle.diff(before, after)
    (change,) = result.section("custom_objects")
    assert change.location == "custom_objects.scaled.sources.code/scaled_layer_code.py"
    assert change.detail is not None
    diff_lines = change.detail.splitlines()
    assert diff_lines[:2] == [
        "--- before/code/scaled_layer_code.py",
        "+++ after/code/scaled_layer_code.py",
    ]
    assert "-    return x * 2" in diff_lines and "+    return x * 3" in diff_lines
    assert "+import os" in diff_lines
    assert "scaled_layer_code" not in sys.modules
    shown = run_cli("diff", before, after).stdout.splitlines()
    assert "      +    return x * 3" in shown


def test_environment_differences_get_the_verdicts_check_gives(
    tmp_path: Path, saved_keras_file: Path
) -> None:
    current = kbundle.check(  # this environment, as the manifest records it
        kbundle.pack(saved_keras_file, tmp_path / "now.kbundle", probe=False).path
    )
    del current
    now = kbundle.inspect(tmp_path / "now.kbundle").manifest.environment
    assert now.keras is not None
    older = dataclasses.replace(
        now,
        keras=dataclasses.replace(now.keras, version="3.0.5", backend="jax"),
        libraries={**now.libraries, "numpy": "1.26.4"},
    )

    def old_environment(model: Any, scratch: Path, fmt: str) -> Extras:
        return Extras(fields={"environment": older})

    before = kbundle.pack(
        saved_keras_file, tmp_path / "old.kbundle", probe=False, extras=old_environment
    ).path
    result = kbundle.diff(before, tmp_path / "now.kbundle", policy="strict")
    shown = {c.location: (c.before, c.after, c.severity) for c in result.section("environment")}
    verdicts = kbundle.check(before, policy="strict", current=now)
    expected = {
        f.location: (f.expected, f.actual, f.severity)
        for f in verdicts.findings
        if f.expected != f.actual
    }
    assert shown == expected
    assert shown["keras.backend"][:2] == ("jax", "tensorflow")
    assert "libraries.numpy" in shown
    assert result.policy == "strict"


def test_assets_differ_by_the_files_inside_them(tmp_path: Path, saved_keras_file: Path) -> None:
    def vocab(words: str) -> Path:
        folder = tmp_path / words.replace(" ", "_") / "vocab"
        folder.mkdir(parents=True)
        (folder / "words.txt").write_text(words)
        (folder / "stop.txt").write_text("a\n")
        return folder

    before = kbundle.pack(
        saved_keras_file, tmp_path / "a.kbundle", probe=False, assets=[vocab("the fox")]
    ).path
    after = kbundle.pack(
        saved_keras_file, tmp_path / "b.kbundle", probe=False, assets=[vocab("the dog")]
    ).path
    result = kbundle.diff(before, after)
    (change,) = result.section("assets")
    assert (change.location, change.before, change.after) == (
        "assets.vocab",
        "directory, 2 files",
        "directory, 2 files",
    )
    assert change.detail == "differs in: words.txt"
    assert [c.location for c in result.section("members")] == ["assets/vocab/words.txt"]


def test_manifest_only_compares_without_reading_the_payload(
    checkpoints: list[Path], tmp_path: Path
) -> None:
    damaged = tmp_path / "damaged.kbundle"
    data = bytearray(checkpoints[2].read_bytes())
    data[-1] ^= 0xFF  # in the trailer's digest: only reading every byte finds it
    damaged.write_bytes(bytes(data))
    result = kbundle.diff(checkpoints[0], damaged, deep=False)
    assert not result.verified
    assert result.section("weights") == [] and result.section("architecture") == []
    assert [c.location for c in result.section("members")] == ["model/model.keras"]
    refused = run_cli("diff", checkpoints[0], damaged)
    assert_clean_failure(refused, 1)
    assert "failed verification" in refused.stderr


def test_diff_text_escapes_what_the_bundles_say(tmp_path: Path, saved_keras_file: Path) -> None:
    before = kbundle.pack(
        saved_keras_file, tmp_path / "a.kbundle", probe=False, labels={"x": "1"}
    ).path
    after = kbundle.pack(
        saved_keras_file,
        tmp_path / "b.kbundle",
        probe=False,
        labels={"x": "2\x1b[2K\nverdict: equal"},
    ).path
    shown = run_cli("diff", before, after).stdout
    assert "\x1b" not in shown
    assert "  ~ labels.x  1 -> 2\\x1b[2K\\nverdict: equal" in shown.splitlines()
