"""``kbundle doctor`` over a corpus of broken and healthy model files, each built here.

Keras 3 files are saved in this process and then damaged or edited as a user's files get
damaged: a member lost, a config edited, a pointer committed instead of the file. Keras 2
files are written by tf-keras in a child process (``TF_USE_LEGACY_KERAS=1``). Modules a
model names are installed into a real second interpreter (conftest's ``python_with_site``),
because doctor's child runs isolated (``python -I``) and sees only installed code.

Each case states the class doctor must file it under, the exit code, and what the finding
that explains it must say; then every finding of every diagnosis must carry a fix, and no
fix may send the user back to doctor.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import child_env, python_with_site, run_python

import kbundle

pytestmark = [pytest.mark.keras, pytest.mark.slow]

_LAYERS_AS_SAVED = """
import keras

@keras.saving.register_keras_serializable(package="pkg")
class Scale(keras.layers.Layer):
    def call(self, x):
        return x * 2.0

@keras.saving.register_keras_serializable(package="pkg")
class Foo(keras.layers.Layer):
    def call(self, x):
        return x * 3.0
"""
# The same module, released again: Scale now registers under the default package
# ("Custom>Scale"), Foo was renamed FooV2.
_LAYERS_NOW = """
import keras

@keras.saving.register_keras_serializable()
class Scale(keras.layers.Layer):
    def call(self, x):
        return x * 2.0

@keras.saving.register_keras_serializable(package="pkg")
class FooV2(keras.layers.Layer):
    def call(self, x):
        return x * 3.0
"""

_TF_KERAS_FILES = """
import sys
import numpy as np
import tf_keras as keras

out = sys.argv[1]
keras.utils.set_random_seed(0)
model = keras.Sequential(
    [keras.Input((4,), name="x"), keras.layers.Dense(3), keras.layers.Dense(1)], name="plain"
)
model.save_weights(f"{out}/tf_keras.weights.h5")
model.compile(loss="mse", optimizer="adam", metrics=["mae"])
model.fit(np.ones((4, 4)), np.ones((4, 1)), verbose=0)
model.save(f"{out}/tf_keras_compiled_mse.h5")
"""


@dataclass(frozen=True)
class Case:
    """A file, how doctor runs on it, and what it must conclude."""

    path: Path
    exit_code: int
    failure_class: str | None
    says: str = ""  # in the problem or fix of a finding of ``failure_class`` (any, if None)
    python: Path | None = None
    args: tuple[str, ...] = ()


def _rezip(
    source: Path,
    target: Path,
    *,
    drop: str = "",
    edit: Callable[..., Any] | None = None,
    member: str = "config.json",
) -> Path:
    """``source`` (a .keras zip) rewritten as ``target`` without ``drop`` and with ``edit``
    applied to ``member``'s JSON."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            if info.filename == drop:
                continue
            data = old.read(info.filename)
            if edit is not None and info.filename == member:
                document = json.loads(data)
                edit(document)
                data = json.dumps(document).encode()
            new.writestr(info.filename, data)
    return target


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """An edit setting ``value`` at ``path`` (keys and indices separated by dots)."""

    def apply(document: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = document
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        node[int(last) if last.isdigit() else last] = value

    return apply


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, keras2_files: Path) -> dict[str, Case]:
    import keras

    root = tmp_path_factory.mktemp("corpus")
    keras.utils.set_random_seed(0)
    plain = keras.Sequential(
        [
            keras.Input((4,), name="x"),
            keras.layers.Dense(3, name="hidden"),
            keras.layers.Dense(1, name="head"),
        ],
        name="plain",
    )
    healthy = root / "healthy.keras"
    plain.save(healthy)
    plain.save(root / "healthy3.h5")
    keras.saving.save_model(plain, root / "healthy_dir", zipped=False)
    plain.save_weights(root / "keras3.weights.h5")
    plain.export(root / "exported", format="tf_saved_model", verbose=False)

    done = subprocess.run(
        [sys.executable, "-c", _TF_KERAS_FILES, str(root)],
        capture_output=True,
        text=True,
        env=child_env(TF_USE_LEGACY_KERAS="1"),
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    # The module as it was when the models were saved, then as installed now.
    saved_with = root / "as_saved" / "mylayers.py"
    saved_with.parent.mkdir()
    saved_with.write_text(_LAYERS_AS_SAVED)
    save_script = (
        "import sys, keras\nsys.path.insert(0, sys.argv[1])\nimport mylayers\n"
        "for name in ('Scale', 'Foo'):\n"
        "    layer = getattr(mylayers, name)()\n"
        "    keras.Sequential([keras.Input((4,)), layer, keras.layers.Dense(1)]).save(\n"
        "        f'{sys.argv[2]}/{name.lower()}.keras')\n"
    )
    saved = run_python("-c", save_script, saved_with.parent, root)
    assert saved.returncode == 0, saved.stderr
    (root / "now").mkdir()
    installed_now = python_with_site(root / "now", {"mylayers.py": _LAYERS_NOW})
    (root / "plain-keras3").mkdir()
    no_tf_keras = python_with_site(  # an environment whose tf_keras does not import
        root / "plain-keras3",
        {
            "tf_keras/__init__.py": "raise ModuleNotFoundError(\"No module named 'tf_keras'\", "
            "name='tf_keras')\n"
        },
    )

    zipped_savedmodel = root / "zipped_savedmodel.keras"
    with zipfile.ZipFile(zipped_savedmodel, "w") as archive:
        for file in sorted((root / "exported").rglob("*")):
            if file.is_file():
                archive.write(file, f"exported/{file.relative_to(root / 'exported')}")
    without_weights = root / "healthy_dir_without_weights"
    shutil.copytree(root / "healthy_dir", without_weights)
    (without_weights / "model.weights.h5").unlink()
    (root / "lfs.keras").write_text(
        "version https://git-lfs.github.com/spec/v1\n"
        "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
        "size 131072\n"
    )
    (root / "empty.keras").write_bytes(b"")
    (root / "readme.h5").write_text("The model is on the shared drive: models/plain.h5\n")
    data = healthy.read_bytes()
    (root / "truncated.keras").write_bytes(data[: len(data) // 2])

    bundle = kbundle.pack(healthy, root / "healthy.kbundle", level="none").path
    raw = bytearray(bundle.read_bytes())
    at = bytes(raw).index(data[200:232]) + 8  # inside the stored model file
    raw[at] ^= 0xFF
    (root / "altered.kbundle").write_bytes(bytes(raw))
    carried = _bundle_with_carried_code(root)

    newer = _set("keras_version", "3.99.0")
    return {
        case.path.name: case
        for case in [
            # Healthy files load.
            Case(healthy, 0, None),
            Case(root / "healthy3.h5", 0, None),
            Case(root / "healthy_dir", 0, None),
            Case(keras2_files / "functional.h5", 0, None),
            Case(keras2_files / "functional.keras", 0, None),
            Case(root / "exported", 0, None, args=("--trust-code",)),
            Case(bundle, 0, None),
            # Corruption, said as what it is.
            Case(root / "truncated.keras", 1, "corruption", "zip archive is truncated"),
            Case(
                _rezip(healthy, root / "no_weights.keras", drop="model.weights.h5"),
                1,
                "corruption",
                "missing: the archive holds no weights",
            ),
            Case(without_weights, 1, "corruption", "missing: the archive holds no weights"),
            Case(
                _rezip(
                    healthy, root / "more_units.keras", edit=_set("config.layers.2.config.units", 2)
                ),
                1,
                "corruption",
                "the config and the stored weights disagree at layer 'head': its config makes "
                "head/kernel of shape (3, 2), the file stores (3, 1)",
            ),
            Case(
                _rezip(
                    healthy,
                    root / "no_bias.keras",
                    edit=_set("config.layers.1.config.use_bias", False),
                ),
                1,
                "corruption",
                "the config and the stored weights disagree at layer 'hidden': its config makes "
                "1 variable(s), the file stores 2",
            ),
            Case(root / "lfs.keras", 1, "corruption", "run 'git lfs pull'"),
            Case(root / "empty.keras", 1, "corruption", "it is empty (0 bytes)"),
            Case(root / "readme.h5", 1, "corruption", "it is text, not a model"),
            Case(zipped_savedmodel, 1, "corruption", "is a SavedModel in a zip"),
            Case(root / "altered.kbundle", 1, "corruption", "fetch an intact copy"),
            # Serialization, with a fix that works.
            Case(
                root / "scale.keras",
                5,
                "serialization",
                "'mylayers' now registers Scale as 'Custom>Scale', not as 'pkg>Scale', the name "
                "the file records: importing it does not help; load with "
                "custom_objects={'pkg>Scale': Scale} (Scale from mylayers)",
                python=installed_now,
            ),
            Case(
                root / "foo.keras",
                5,
                "serialization",
                "'mylayers' no longer defines 'Foo'; if mylayers.FooV2 is the same class renamed, "
                "load with custom_objects={'pkg>Foo': FooV2}",
                python=installed_now,
            ),
            Case(root / "keras3.weights.h5", 5, "serialization", "model.load_weights(FILE)"),
            Case(root / "tf_keras.weights.h5", 5, "serialization", "model.load_weights(FILE)"),
            # Not a fault: the bundle carries the code, and doctor runs it only when trusted.
            Case(carried, 4, None, "then pass --trust-code"),
            # Environment: another Keras.
            Case(
                root / "tf_keras_compiled_mse.h5",
                3,
                "environment",
                "compile=False",
                python=no_tf_keras,
            ),
            Case(
                _rezip(
                    _rezip(
                        healthy,
                        root / "step.keras",
                        edit=_set("config.layers.1.class_name", "FutureDense"),
                    ),
                    root / "newer_layer.keras",
                    edit=newer,
                    member="metadata.json",
                ),
                3,
                "environment",
                "upgrade keras to 3.99.0 or later",
            ),
            Case(
                _rezip(
                    _rezip(
                        healthy,
                        root / "step2.keras",
                        edit=_set("config.layers.1.config.future_option", True),
                    ),
                    root / "newer_keyword.keras",
                    edit=newer,
                    member="metadata.json",
                ),
                3,
                "environment",
                "upgrade keras to 3.99.0 or later",
            ),
        ]
    }


def _bundle_with_carried_code(root: Path) -> Path:
    """A bundle whose custom layer travels as bundled source: loading it needs trust."""
    project = root / "project"
    project.mkdir()
    (project / "carried_layers.py").write_text(_LAYERS_AS_SAVED.replace("pkg", "carried"))
    script = (
        "import sys, keras, kbundle\nsys.path.insert(0, sys.argv[1])\nimport carried_layers\n"
        "model = keras.Sequential([keras.Input((4,)), carried_layers.Scale(), "
        "keras.layers.Dense(1)])\n"
        "kbundle.pack(model, sys.argv[2], probe=False)\n"
    )
    bundle = root / "carried.kbundle"
    done = run_python("-c", script, project, bundle, cwd=project)
    assert done.returncode == 0, done.stderr
    return bundle


@pytest.fixture(scope="module")
def diagnoses(corpus: dict[str, Case]) -> dict[str, tuple[int, dict[str, Any]]]:
    """``kbundle doctor --json`` on every case: (exit code, report)."""
    found = {}
    for name, case in corpus.items():
        done = run_python(
            "-m",
            "kbundle",
            "doctor",
            case.path,
            "--json",
            *case.args,
            python=case.python or sys.executable,
        )
        assert "Traceback" not in done.stderr, (name, done.stderr)
        found[name] = (done.returncode, json.loads(done.stdout))
    return found


_CASES = [
    "healthy.keras",
    "healthy3.h5",
    "healthy_dir",
    "functional.h5",
    "functional.keras",
    "exported",
    "healthy.kbundle",
    "truncated.keras",
    "no_weights.keras",
    "healthy_dir_without_weights",
    "more_units.keras",
    "no_bias.keras",
    "lfs.keras",
    "empty.keras",
    "readme.h5",
    "zipped_savedmodel.keras",
    "altered.kbundle",
    "scale.keras",
    "foo.keras",
    "keras3.weights.h5",
    "tf_keras.weights.h5",
    "carried.kbundle",
    "tf_keras_compiled_mse.h5",
    "newer_layer.keras",
    "newer_keyword.keras",
]


def test_the_corpus_is_what_the_cases_name(corpus: dict[str, Case]) -> None:
    assert sorted(corpus) == sorted(_CASES)


@pytest.mark.parametrize("name", _CASES)
def test_each_file_is_diagnosed_into_its_class(
    name: str, corpus: dict[str, Case], diagnoses: dict[str, tuple[int, dict[str, Any]]]
) -> None:
    case = corpus[name]
    code, report = diagnoses[name]
    assert (code, report["failure_class"], report["loads"]) == (
        case.exit_code,
        case.failure_class,
        case.exit_code == 0,
    ), json.dumps(report, indent=1)
    if case.says:
        classes = [case.failure_class] if case.failure_class else list(report["findings"])
        said = [f"{f['problem']} | {f.get('fix')}" for c in classes for f in report["findings"][c]]
        assert any(case.says in text for text in said), said


def test_every_finding_has_a_fix_and_none_sends_the_user_to_doctor(
    diagnoses: dict[str, tuple[int, dict[str, Any]]],
) -> None:
    fixes = []
    for name, (_, report) in diagnoses.items():
        for findings in report["findings"].values():
            for finding in findings:
                assert finding.get("fix"), (name, finding)
                fixes.append(finding["fix"])
        if report["load"].get("fix"):
            fixes.append(report["load"]["fix"])
    assert fixes
    assert [fix for fix in fixes if re.search(r"kbundle doctor|run .*doctor", fix)] == []


def test_the_load_finding_takes_the_fix_of_the_finding_that_explains_it(
    diagnoses: dict[str, tuple[int, dict[str, Any]]],
) -> None:
    """The failed load's own finding says what the static finding says: the exact
    custom_objects key for a changed registration."""
    for name, wanted in (("scale.keras", "load with custom_objects={'pkg>Scale': Scale}"),):
        _, report = diagnoses[name]
        (load,) = [f for f in report["findings"]["serialization"] if f["location"] == "load"]
        assert wanted in load["fix"], load
        assert "import the module that defines the missing object" not in load["fix"]


def test_a_bundle_on_standard_input_whose_code_is_trusted_says_to_diagnose_the_file(
    tmp_path: Path,
) -> None:
    """doctor hands a bundle's own code to its child process as a file only: a bundle read
    from standard input (or a URL, which may hold credentials) is not loaded with its code."""
    bundle = _bundle_with_carried_code(tmp_path)
    with bundle.open("rb") as stdin:
        done = subprocess.run(
            [sys.executable, "-m", "kbundle", "doctor", "-", "--trust-code", "--json"],
            stdin=stdin,
            capture_output=True,
            text=True,
            env=child_env(),
            timeout=300,
        )
    assert "Traceback" not in done.stderr, done.stderr
    report = json.loads(done.stdout)
    assert report["load"]["attempted"] is False
    assert report["load"]["skipped"] == (
        "the model needs the code the bundle carries (carried>Scale: source), which doctor "
        "loads from a bundle file only: download the bundle and run 'kbundle doctor' on the file"
    )
