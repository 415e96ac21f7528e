"""Custom objects travel with the model, and run only when trusted (THREATS rows 11-13).

The user's project (tests/custom_objects_project) is copied into a temporary directory; its
training script packs one small model per case in one process. The bundles are loaded in
another process whose working directory and ``sys.path`` hold none of that project's code
(tests/custom_objects_deploy), and every prediction must be bit-identical to the original.
The CLI runs as a real subprocess. Hostile bundles (a pickle that writes a marker file, a
pickle recorded under another Python) are built here with the real bundle writer.
"""

from __future__ import annotations

import dataclasses
import inspect as pyinspect
import json
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import REPO, assert_clean_failure, child_env, run_cli

import kbundle
from kbundle.code.bundled import CodeConflictWarning, bundled_objects, check_runnable
from kbundle.code.capture import config_references
from kbundle.code.gate import ImportGate
from kbundle.code.sources import definition_digest, definition_source, imported_modules
from kbundle.container.manifest import (
    CustomObject,
    Manifest,
    ModelInfo,
    PickleInfo,
    SourceFile,
    parse_manifest,
    serialize_manifest,
)
from kbundle.container.writer import PayloadFile, write_bundle
from kbundle.env.capture import capture_environment
from kbundle.errors import BundleFormatError, EnvironmentMismatchError

PROJECT = Path(__file__).parent / "custom_objects_project"
DEPLOY = Path(__file__).parent / "custom_objects_deploy"
PROJECT_MODULES = ("mypkg", "twomod", "sidefx")
# Every case must load, bit-identical, where its code is absent.
CASES = (
    "build_weights",
    "init_weights",
    "nested",
    "subclassed",
    "loss_metric",
    "activation",
    "registered",
    "main_script",
    "two_modules",
    "side_effect",
    "distribution",
    "local_class",
    "local_function",
    "legacy_h5",
)
MARKER_VARIABLE = "KBUNDLE_SIDE_EFFECT_MARKER"


@dataclass(frozen=True)
class Workspace:
    root: Path
    project: Path
    site: Path
    out: Path
    deploy: Path

    def bundle(self, case: str) -> Path:
        return self.out / "bundles" / f"{case}.kbundle"

    def results(self) -> dict[str, Any]:
        return json.loads((self.out / "results.json").read_text())  # type: ignore[no-any-return]


def _python(
    script: Path, *args: str | Path, cwd: Path, pythonpath: list[Path], **env: str
) -> subprocess.CompletedProcess[str]:
    environment = child_env(PYTHONPATH=os.pathsep.join(map(str, pythonpath)), **env)
    return subprocess.run(
        [sys.executable, str(script), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=environment,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )


def _deploy_env(**extra: str) -> dict[str, str]:
    """A CLI environment with only this checkout on PYTHONPATH."""
    return child_env(PYTHONPATH=str(REPO), **extra)


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """The project's training script, run once: every case's bundle and predictions."""
    root = tmp_path_factory.mktemp("custom_objects")
    ws = Workspace(root, root / "project", root / "site", root / "out", root / "deploy")
    shutil.copytree(PROJECT, ws.project, ignore=shutil.ignore_patterns("site", "__pycache__"))
    shutil.copytree(PROJECT / "site", ws.site, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(DEPLOY, ws.deploy, ignore=shutil.ignore_patterns("__pycache__"))
    result = _python(
        ws.project / "train.py",
        ws.out,
        cwd=ws.project,
        pythonpath=[REPO, ws.site],
        **{MARKER_VARIABLE: str(root / "pack-marker")},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return ws


@pytest.fixture(scope="module")
def loaded(packed: Workspace) -> dict[str, Any]:
    """Every case loaded with trust in a process without the project's code."""
    marker = packed.root / "load-marker"
    result = _python(
        packed.deploy / "load_all.py",
        packed.out,
        ",".join(CASES),
        cwd=packed.deploy,
        pythonpath=[REPO, packed.site],
        **{MARKER_VARIABLE: str(marker)},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report: dict[str, Any] = json.loads((packed.out / "loaded.json").read_text())
    report["marker"] = marker.read_text() if marker.exists() else None
    return report


# --------------------------------------------------------------------------------------------
# Pack: what travels, and how


@pytest.mark.slow
def test_each_object_travels_the_way_its_definition_allows(packed: Workspace) -> None:
    results = packed.results()

    def source(name: str, kind: str, module: str, *files: str) -> dict[str, Any]:
        return {
            "name": name,
            "kind": kind,
            "transport": "source",
            "module": module,
            "sources": list(files),
            "requirement": None,
        }

    layers = ("code/mypkg/__init__.py", "code/mypkg/layers.py")
    assert results["build_weights"] == [source("MyCustomLayer", "layer", "mypkg.layers", *layers)]
    assert results["init_weights"] == [source("EagerWeights", "layer", "mypkg.layers", *layers)]
    assert results["nested"] == [
        source(
            "Residual",
            "layer",
            "mypkg.blocks",
            "code/mypkg/__init__.py",
            "code/mypkg/blocks.py",
            "code/mypkg/layers.py",
        )
    ]
    assert results["subclassed"] == [
        source(
            "TinyModel",
            "model",
            "mypkg.models",
            "code/mypkg/__init__.py",
            "code/mypkg/layers.py",
            "code/mypkg/models.py",
        )
    ]
    assert results["loss_metric"] == [
        source("MyLoss", "loss", "mypkg.layers", *layers),
        source("MyMetric", "metric", "mypkg.layers", *layers),
    ]
    assert results["activation"] == [source("scaled_tanh", "activation", "mypkg.layers", *layers)]
    acme = ("code/mypkg/__init__.py", "code/mypkg/acme.py")
    assert results["registered"] == [
        source("acme>Scale", "layer", "mypkg.acme", *acme),
        source("acme>soft_sign", "activation", "mypkg.acme", *acme),
    ]
    assert results["two_modules"] == [
        source(
            "Shifted",
            "layer",
            "twomod.a",
            "code/twomod/__init__.py",
            "code/twomod/a.py",
            "code/twomod/b.py",
        )
    ]
    assert results["side_effect"] == [source("Tripled", "layer", "sidefx", "code/sidefx.py")]
    assert results["main_script"] == [
        {
            "name": "MainScale",
            "kind": "layer",
            "transport": "pickle",
            "module": "__main__",
            "sources": [],
            "requirement": None,
        }
    ]
    assert results["distribution"] == [
        {
            "name": "acme_layers>Clip",
            "kind": "layer",
            "transport": "distribution",
            "module": "acme_layers.layers",
            "sources": [],
            "requirement": "acme-layers==1.2.0",
        }
    ]
    assert results["lambda"] == []  # marshalled code is safe_mode's business, not a custom object
    # Defined inside a function: no module holds them by name, the live model does.
    assert results["local_class"] == [{"name": "Doubler", "transport": "pickle"}]
    assert results["local_function"] == [{"name": "clipped", "transport": "pickle"}]
    assert results["given"] == [
        {"name": "EagerWeights", "transport": "source"},
        {"name": "scaled_tanh", "transport": "source"},
    ]
    # A legacy .h5 config names classes without modules: the registry and the modules named
    # with custom_modules= (CLI --custom-objects) say which.
    assert results["legacy_h5"] == [
        {"name": "MyCustomLayer", "transport": "source"},
        {"name": "acme>Scale", "transport": "source"},
    ]


@pytest.mark.slow
def test_manifest_records_pickle_versions_digests_and_imports(packed: Workspace) -> None:
    manifest = kbundle.inspect(packed.bundle("main_script")).manifest
    (obj,) = manifest.custom_objects
    assert obj.pickle == PickleInfo(
        path="objects/MainScale.pkl",
        python=".".join(map(str, sys.version_info[:3])),
        protocol=pickle.HIGHEST_PROTOCOL,
        cloudpickle=__import__("cloudpickle").__version__,
    )
    expected_text = definition_source((PROJECT / "train.py").read_text(), "MainScale")
    assert expected_text is not None and expected_text.startswith(
        "class MainScale(keras.layers.Layer):"
    )
    assert obj.review_source == expected_text
    assert obj.source_digest == definition_digest(expected_text)
    carried = [m.path for m in manifest.members if m.path.startswith(("code/", "objects/"))]
    assert carried == ["objects/MainScale.pkl"]  # the review text is in the manifest
    assert obj.imports == ["cloudpickle", "keras"]  # unpickling imports cloudpickle itself

    (layer,) = kbundle.inspect(packed.bundle("build_weights")).manifest.custom_objects
    text = definition_source((PROJECT / "mypkg" / "layers.py").read_text(), "MyCustomLayer")
    assert text is not None and layer.source_digest == definition_digest(text)
    assert layer.imports == ["keras"]
    assert list(layer.distributions) == ["keras"]
    assert layer.sources == [
        SourceFile(module="mypkg", path="code/mypkg/__init__.py"),
        SourceFile(module="mypkg.layers", path="code/mypkg/layers.py"),
    ]


@pytest.mark.slow
def test_pack_of_a_model_file_imports_the_projects_own_modules_and_says_so(
    packed: Workspace, tmp_path: Path
) -> None:
    # The common case: a layer registered in the author's package, packed from the project.
    model_file = packed.out / "files" / "build_weights.keras"
    result = run_cli(
        "pack", model_file, "-o", tmp_path / "m.kbundle", cwd=packed.project, env=_deploy_env()
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines()[0] == (
        "kbundle: note: imported mypkg.layers from your project to find the model's custom "
        "objects (--no-project-imports turns this off)"
    )
    (obj,) = kbundle.inspect(tmp_path / "m.kbundle").manifest.custom_objects
    assert (obj.transport, [s.path for s in obj.sources]) == (
        "source",
        ["code/mypkg/__init__.py", "code/mypkg/layers.py"],
    )

    # A PYTHONPATH entry is part of the project too; another directory is not.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    on_path = run_cli(
        "pack",
        model_file,
        "-o",
        tmp_path / "p.kbundle",
        "-q",
        cwd=elsewhere,
        env=child_env(PYTHONPATH=f"{packed.project}{os.pathsep}{REPO}"),
    )
    assert on_path.returncode == 0, on_path.stderr
    assert "imported mypkg.layers from your project" in on_path.stderr
    assert_clean_failure(
        run_cli("pack", model_file, "-o", tmp_path / "n.kbundle", cwd=elsewhere, env=_deploy_env()),
        2,
    )

    # An installed distribution the config names is not the author's source: never imported.
    installed = run_cli(
        "pack",
        packed.out / "files" / "distribution.keras",
        "-o",
        tmp_path / "d.kbundle",
        cwd=packed.project,
        env=child_env(PYTHONPATH=f"{packed.site}{os.pathsep}{REPO}"),
    )
    assert_clean_failure(installed, 2)
    assert "is not defined in the packing process" in installed.stderr
    assert "imported" not in installed.stderr


def test_a_model_file_naming_a_standard_library_module_imports_nothing(
    saved_keras_file: Path, tmp_path: Path
) -> None:
    # "this" prints the Zen of Python when imported: a config naming it must not make pack
    # import it, from the project directory or anywhere.
    forged = tmp_path / "this.keras"
    with zipfile.ZipFile(saved_keras_file) as source, zipfile.ZipFile(forged, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename == "config.json":
                config = json.loads(data)
                layer = config["config"]["layers"][-1]
                layer.update(module="this", class_name="Zen", registered_name="Zen")
                data = json.dumps(config).encode()
            target.writestr(item, data)
    result = run_cli("pack", forged, "-o", tmp_path / "z.kbundle", cwd=tmp_path)
    assert_clean_failure(result, 2)
    assert "Beautiful is better than ugly" not in result.stdout + result.stderr
    assert "class 'Zen' (module this) is not defined in the packing process" in result.stderr
    assert not (tmp_path / "z.kbundle").exists()


@pytest.mark.slow
def test_cli_pack_of_a_model_file_imports_the_named_modules(
    packed: Workspace, tmp_path: Path
) -> None:
    model_file = packed.out / "files" / "build_weights.keras"
    refused = run_cli(
        "pack",
        model_file,
        "-o",
        tmp_path / "no.kbundle",
        "--quiet",
        "--no-project-imports",
        cwd=packed.project,
        env=_deploy_env(),
    )
    assert_clean_failure(refused, 2)
    assert refused.stderr.strip() == (
        "kbundle: error: cannot capture custom object MyCustomLayer: class 'MyCustomLayer' "
        "(module mypkg.layers) is not defined in the packing process; import it (kbundle "
        "pack --custom-objects mypkg.layers) or pass it with custom_objects={'MyCustomLayer': "
        "MyCustomLayer}; pack imports a module by itself only when it is a file under the "
        "current directory or a PYTHONPATH entry"
    )
    assert not (tmp_path / "no.kbundle").exists()

    # Every object that cannot be found is named at once.
    both = run_cli(
        "pack",
        packed.out / "files" / "registered.keras",
        "-o",
        tmp_path / "no.kbundle",
        "--quiet",
        "--no-project-imports",
        cwd=packed.project,
        env=_deploy_env(),
    )
    assert_clean_failure(both, 2)
    assert both.stderr.splitlines() == [
        "kbundle: error: cannot capture custom object acme>Scale: class 'Scale' (module mypkg.acme) "
        "is not defined in the packing process (and 1 more problem); import it (kbundle "
        "pack --custom-objects mypkg.acme) or pass it with custom_objects={'acme>Scale': Scale}; "
        "pack imports a module by itself only when it is a file under the current directory or "
        "a PYTHONPATH entry",
        "all 2 problems:",
        "  - custom object acme>Scale: class 'Scale' (module mypkg.acme) is not defined in the packing process",
        "  - custom object acme>soft_sign: function 'acme>soft_sign' is not Keras's, not registered, "
        "and not found in the model or the modules named for it",
    ]

    packed_file = run_cli(
        "pack",
        model_file,
        "-o",
        tmp_path / "file.kbundle",
        "--quiet",
        "--custom-objects",
        "mypkg.layers",
        cwd=packed.project,
        env=_deploy_env(),
    )
    assert packed_file.returncode == 0, packed_file.stderr
    (obj,) = kbundle.inspect(tmp_path / "file.kbundle").manifest.custom_objects
    assert (obj.name, obj.transport, [s.path for s in obj.sources]) == (
        "MyCustomLayer",
        "source",
        ["code/mypkg/__init__.py", "code/mypkg/layers.py"],
    )


# --------------------------------------------------------------------------------------------
# Load: bit-identical where the code is absent; nothing left behind


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_loads_bit_identical_where_its_code_is_absent(
    packed: Workspace, loaded: dict[str, Any], case: str
) -> None:
    assert loaded["absent_before"] == dict.fromkeys(PROJECT_MODULES, True)
    expected = np.load(packed.out / "expected" / f"{case}.npy")
    actual = np.load(packed.out / "loaded" / f"{case}.npy")
    assert actual.dtype == expected.dtype and np.array_equal(actual, expected)


@pytest.mark.slow
def test_loaded_models_use_the_bundled_classes(loaded: dict[str, Any]) -> None:
    cases = loaded["cases"]
    assert cases["build_weights"]["layers"] == ["mypkg.layers.MyCustomLayer"]
    assert cases["nested"]["layers"] == ["mypkg.blocks.Residual"]
    assert cases["subclassed"]["model"] == "TinyModel"
    assert cases["main_script"]["layers"][0] == "__main__.MainScale"
    assert cases["two_modules"]["layers"][0] == "twomod.a.Shifted"
    assert cases["distribution"]["layers"][1] == "acme_layers.layers.Clip"
    doubler = cases["local_class"]["layers"][0]  # cloudpickle may shorten a local qualname
    assert doubler.startswith("__main__.") and doubler.endswith("Doubler")
    assert cases["loss_metric"]["loss"] == "MyLoss"
    assert loaded["marker"] is not None and loaded["marker"].startswith(
        "sidefx imported by process"
    )


@pytest.mark.slow
def test_loading_leaves_sys_path_and_sys_modules_as_they_were(loaded: dict[str, Any]) -> None:
    assert loaded["sys_path_unchanged"] is True
    assert loaded["meta_path_unchanged"] is True
    assert loaded["leftover_modules"] == []
    # Names that were free stay registered, so the loaded models save again under them.
    assert loaded["registered_after"] == ["acme>Scale", "acme>soft_sign", "acme_layers>Clip"]


@pytest.mark.slow
def test_lambda_layer_error_explains_safe_mode_and_the_flag(
    packed: Workspace, loaded: dict[str, Any]
) -> None:
    message = loaded["lambda_safe_mode_error"]
    assert message.startswith(
        "the verified model failed to load in Keras: ValueError: Requested the deserialization of a `Lambda` layer"
    )
    assert message.endswith(
        "; the model contains a Lambda layer or other marshalled code, which Keras refuses in "
        "safe mode; if you trust the bundle, load it with --unsafe-lambda (safe_mode=False)"
    )
    assert np.array_equal(
        np.load(packed.out / "loaded" / "lambda.npy"),
        np.load(packed.out / "expected" / "lambda.npy"),
    )


# --------------------------------------------------------------------------------------------
# Trust: nothing runs without it


def _review_commands(bundle: Path, files: Path) -> list[list[str | Path]]:
    """Every command that reads a bundle without loading it: none may run its code."""
    return [
        ["inspect", bundle],
        ["verify", bundle],
        ["show-code", bundle],
        ["unpack", bundle, "-d", files, "--no-load"],
    ]


@pytest.mark.slow
def test_untrusted_load_is_refused_and_runs_nothing(packed: Workspace, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    env = _deploy_env(**{MARKER_VARIABLE: str(marker)})
    bundle = packed.bundle("side_effect")
    refused = run_cli("unpack", bundle, "-d", tmp_path / "out", cwd=tmp_path, env=env)
    assert_clean_failure(refused, 4)
    assert refused.stderr.startswith(
        "kbundle: error: loading would run bundled code nobody trusted: Tripled (source); "
        "review it with 'kbundle show-code', then pass --trust-code (trust_code=True)"
    )
    assert not (tmp_path / "out").exists()
    for args in _review_commands(bundle, tmp_path / "files"):
        assert run_cli(*args, cwd=tmp_path, env=env).returncode == 0
    with pytest.raises(
        kbundle.UntrustedCodeError, match=r"^loading would run bundled code nobody trusted: Tripled"
    ):
        kbundle.load(bundle)
    assert not marker.exists()
    assert "sidefx" not in sys.modules


def _rebundle(
    source: Path, target: Path, work: Path, edit: Callable[[Manifest, Path], Manifest]
) -> None:
    """Write ``source`` again as ``target`` after ``edit`` changed its manifest or files.

    This is what an attacker (or a newer kbundle) can do: the bundle is intact and
    consistent, only its content differs.
    """
    kbundle.unpack(source, work)
    manifest = edit(parse_manifest((work / "kbundle.json").read_bytes()), work)
    payload = [
        PayloadFile(m.path, None)
        if m.type == "dir"
        else PayloadFile(m.path, work / m.path, (work / m.path).stat().st_size)
        for m in manifest.members
    ]

    def make_manifest(digests: dict[str, str]) -> bytes:
        members = [
            m
            if m.type == "dir"
            else dataclasses.replace(m, size=(work / m.path).stat().st_size, digest=digests[m.path])
            for m in manifest.members
        ]
        return serialize_manifest(dataclasses.replace(manifest, members=members))

    with target.open("wb") as handle:
        write_bundle(handle, payload, make_manifest, level=3, threads=0, mtime=0)  # type: ignore[arg-type]


class _WritesMarker:
    """Unpickling this runs ``open(path, "w")``: the file appears only if the pickle ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


@pytest.mark.slow
def test_a_malicious_pickle_does_nothing_without_trust(packed: Workspace, tmp_path: Path) -> None:
    marker = tmp_path / "pickle-ran"

    def poison(manifest: Manifest, work: Path) -> Manifest:
        (work / "objects" / "MainScale.pkl").write_bytes(pickle.dumps(_WritesMarker(marker)))
        return manifest

    bundle = tmp_path / "evil.kbundle"
    _rebundle(packed.bundle("main_script"), bundle, tmp_path / "work", poison)
    env = _deploy_env()
    for args in _review_commands(bundle, tmp_path / "files"):
        result = run_cli(*args, cwd=tmp_path, env=env)
        assert result.returncode == 0, result.stderr
    refused = run_cli("unpack", bundle, "-d", tmp_path / "out", cwd=tmp_path, env=env)
    assert_clean_failure(refused, 4)
    assert "nobody trusted: MainScale (pickle);" in refused.stderr
    with pytest.raises(kbundle.UntrustedCodeError):
        kbundle.load(bundle)
    assert not marker.exists()
    # The same bundle with trust: the pickle runs (and is no layer, so Keras fails after).
    trusted = run_cli(
        "unpack", bundle, "-d", tmp_path / "trusted", "--trust-code", cwd=tmp_path, env=env
    )
    assert_clean_failure(trusted, 5)
    assert marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize("field", ["python", "cloudpickle"])
def test_a_pickle_from_another_python_or_cloudpickle_is_refused(
    packed: Workspace, tmp_path: Path, field: str
) -> None:
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    other_python = f"3.{sys.version_info.minor - 1}.4"
    cloudpickle_version = __import__("cloudpickle").__version__
    other_cloudpickle = f"{int(cloudpickle_version.split('.')[0]) - 1}.2.1"

    def relabel(manifest: Manifest, work: Path) -> Manifest:
        (obj,) = manifest.custom_objects
        assert obj.pickle is not None
        if field == "python":
            changed = dataclasses.replace(obj.pickle, python=other_python)
        else:
            changed = dataclasses.replace(obj.pickle, cloudpickle=other_cloudpickle)
        return dataclasses.replace(
            manifest, custom_objects=[dataclasses.replace(obj, pickle=changed)]
        )

    bundle = tmp_path / "old.kbundle"
    _rebundle(packed.bundle("main_script"), bundle, tmp_path / "work", relabel)
    refused = run_cli(
        "unpack", bundle, "-d", tmp_path / "out", "--trust-code", cwd=tmp_path, env=_deploy_env()
    )
    assert_clean_failure(refused, 3)
    fallback = "no source fallback: the bundle holds only its definition's text, for review ('kbundle show-code')"
    if field == "python":
        problem = f"was pickled under Python 3.{sys.version_info.minor - 1}, this is Python {here}"
        fix = f"load it under Python 3.{sys.version_info.minor - 1} with cloudpickle {cloudpickle_version.split('.')[0]}.x"
    else:
        problem = f"was pickled with cloudpickle {other_cloudpickle}, this is cloudpickle {cloudpickle_version} (another major version)"
        fix = f"load it under Python {here} with cloudpickle {other_cloudpickle.split('.')[0]}.x"
    assert refused.stderr.strip() == (
        f"kbundle: error: MainScale cannot be loaded here: {problem}; {fallback}; {fix}, or move "
        "MainScale into a module and pack again (source loads under any Python)"
    )


@pytest.mark.slow
def test_a_missing_distribution_is_named_before_keras_loads(
    packed: Workspace, tmp_path: Path
) -> None:
    refused = run_cli(
        "unpack",
        packed.bundle("distribution"),
        "-d",
        tmp_path / "out",
        cwd=tmp_path,
        env=_deploy_env(),
    )
    assert_clean_failure(refused, 3)
    assert "acme-layers" in refused.stderr and "1.2.0" in refused.stderr
    assert not (tmp_path / "out").exists()
    # The custom-object check's own words (an environment check may speak first in the CLI).
    (clip,) = kbundle.inspect(packed.bundle("distribution")).manifest.custom_objects
    with pytest.raises(EnvironmentMismatchError) as caught:
        check_runnable(
            _manifest([dataclasses.replace(clip, requirement="acme-layers-absent==1.2.0")])
        )
    assert str(caught.value) == (
        "acme_layers>Clip cannot be loaded here: comes from distribution "
        "acme-layers-absent==1.2.0, which is not installed; pip install 'acme-layers-absent==1.2.0'"
    )


# --------------------------------------------------------------------------------------------
# A loading environment with its own, different definition


def _changed_project(packed: Workspace, target: Path) -> Path:
    """A later version of the user's mypkg: Scale and MyCustomLayer compute other things."""
    shutil.copytree(
        packed.project / "mypkg", target / "mypkg", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name, old, new in (
        (
            "acme.py",
            "return inputs * self.gain * self.factor",
            "return inputs * self.gain * self.factor + 1.0",
        ),
        (
            "layers.py",
            "return ops.matmul(inputs, self.kernel) + self.bias",
            "return ops.matmul(inputs, self.kernel) - self.bias",
        ),
    ):
        path = target / "mypkg" / name
        text = path.read_text()
        assert old in text
        path.write_text(text.replace(old, new))
    return target


@pytest.mark.slow
def test_a_changed_local_definition_is_reported_and_the_bundled_one_used(
    packed: Workspace, tmp_path: Path
) -> None:
    changed = _changed_project(packed, tmp_path / "changed")
    result = _python(
        packed.deploy / "check_changed.py",
        packed.out,
        cwd=packed.deploy,
        pythonpath=[REPO, changed],
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads((packed.out / "changed.json").read_text())
    bundled = kbundle.inspect(packed.bundle("registered")).manifest.custom_objects[0]
    own_text = definition_source((changed / "mypkg" / "acme.py").read_text(), "Scale")
    assert own_text is not None
    assert report["warnings"] == [
        {
            "category": "CodeConflictWarning",
            "message": (
                f"the bundle's module 'mypkg' has the same name as 'mypkg' in this environment "
                f"({changed / 'mypkg' / '__init__.py'}); the bundled one is used to load the model "
                "and this environment's 'mypkg' is left as it was"
            ),
        },
        {
            "category": "CodeConflictWarning",
            "message": (
                f"acme>Scale: this environment already defines it (mypkg.acme.Scale, definition "
                f"{definition_digest(own_text)}), which differs from the bundle's (mypkg.acme.Scale, "
                f"definition {bundled.source_digest}); the bundled one is used"
            ),
        },
    ]
    assert report["bundled_definition_used"] is True
    assert report["loaded_class_is_own"] is False
    assert report["own_module_kept"] is True
    assert report["own_registration_kept"] is True

    # The CLI says the same, for a definition that is importable here but not imported.
    cli = run_cli(
        "unpack",
        packed.bundle("build_weights"),
        "-d",
        tmp_path / "out",
        "--trust-code",
        cwd=tmp_path,
        env=child_env(PYTHONPATH=os.pathsep.join([str(REPO), str(changed)])),
    )
    assert cli.returncode == 0, cli.stderr
    own_layer = definition_source((changed / "mypkg" / "layers.py").read_text(), "MyCustomLayer")
    assert own_layer is not None
    (layer,) = kbundle.inspect(packed.bundle("build_weights")).manifest.custom_objects
    assert (
        f"kbundle: warning: MyCustomLayer: this environment already defines it "
        f"(mypkg.layers.MyCustomLayer in {changed / 'mypkg' / 'layers.py'}, definition "
        f"{definition_digest(own_layer)}), which differs from the bundle's (mypkg.layers.MyCustomLayer, "
        f"definition {layer.source_digest}); the bundled one is used"
    ) in cli.stderr.splitlines()
    assert "model loads: Sequential" in cli.stderr


# --------------------------------------------------------------------------------------------
# Review: inspect and show-code list and print, never run


@pytest.mark.slow
def test_show_code_prints_the_bundled_source(packed: Workspace, tmp_path: Path) -> None:
    bundle = packed.bundle("two_modules")
    result = run_cli("show-code", bundle, "Shifted", cwd=tmp_path, env=_deploy_env())
    assert result.returncode == 0, result.stderr
    manifest = kbundle.inspect(bundle).manifest
    digest = {m.path: m.digest for m in manifest.members}
    project = packed.project / "twomod"
    (obj,) = manifest.custom_objects
    assert (
        result.stdout
        == "\n".join(
            [
                "# ==== Shifted (layer): twomod.a.Shifted",
                "# bundled source, imported as twomod.a",
                f"# definition {obj.source_digest}",
                f"# ---- code/twomod/__init__.py (module twomod) {digest['code/twomod/__init__.py']}",
                "# (empty file)",
                f"# ---- code/twomod/a.py (module twomod.a) {digest['code/twomod/a.py']}",
                (project / "a.py").read_text().rstrip("\n"),
                f"# ---- code/twomod/b.py (module twomod.b) {digest['code/twomod/b.py']}",
                (project / "b.py").read_text().rstrip("\n"),
                "",
            ]
        )
        + "\n"
    )

    as_json = json.loads(
        run_cli(
            "show-code", packed.bundle("main_script"), "--json", cwd=tmp_path, env=_deploy_env()
        ).stdout
    )
    (listing,) = as_json["objects"]
    assert (listing["name"], listing["transport"], listing["pickle"]["path"]) == (
        "MainScale",
        "pickle",
        "objects/MainScale.pkl",
    )
    assert listing["files"] == []
    assert listing["review_source"].startswith("class MainScale(keras.layers.Layer):")
    text = run_cli(
        "show-code", packed.bundle("main_script"), cwd=tmp_path, env=_deploy_env()
    ).stdout
    assert text.splitlines()[3:5] == [
        "# The pickle is what runs; this is its definition as captured at pack time, for review:",
        "class MainScale(keras.layers.Layer):",
    ]

    unknown = run_cli("show-code", bundle, "Nope", cwd=tmp_path, env=_deploy_env())
    assert_clean_failure(unknown, 2)
    assert unknown.stderr.strip() == (
        "kbundle: error: the bundle has no custom object called 'Nope' (it has: Shifted); "
        "run 'kbundle show-code BUNDLE' without a name to see them all"
    )


@pytest.mark.slow
def test_inspect_lists_objects_transports_and_digests(packed: Workspace, tmp_path: Path) -> None:
    result = run_cli("inspect", packed.bundle("registered"), cwd=tmp_path, env=_deploy_env())
    assert result.returncode == 0, result.stderr
    manifest = kbundle.inspect(packed.bundle("registered")).manifest
    scale, soft_sign = manifest.custom_objects
    lines = result.stdout.splitlines()
    start = lines.index("custom objects:")
    assert lines[start : start + 3] == [
        "custom objects:",
        f"  acme>Scale               layer        source       mypkg.acme.Scale {scale.source_digest}",
        f"  acme>soft_sign           activation   source       mypkg.acme.soft_sign {soft_sign.source_digest}",
    ]
    for path in (
        "code/mypkg/__init__.py",
        "code/mypkg/acme.py",
    ):  # each bundled file, with its digest
        member = manifest.member(path)
        assert member is not None
        assert f"  {member.size:>12}  {member.digest}  {path}" in lines
    (pickled,) = kbundle.inspect(packed.bundle("main_script")).manifest.custom_objects
    shown = run_cli("inspect", packed.bundle("main_script"), cwd=tmp_path, env=_deploy_env()).stdout
    assert (
        f"  MainScale                layer        pickle       __main__.MainScale {pickled.source_digest}"
        in shown.splitlines()
    )


@pytest.mark.slow
def test_review_commands_import_neither_tensorflow_nor_keras(
    packed: Workspace, tmp_path: Path
) -> None:
    script = (
        "import sys\n"
        "from kbundle.cli import main\n"
        "for command in (['inspect', sys.argv[1]], ['show-code', sys.argv[1]], ['verify', sys.argv[1]]):\n"
        "    main(command, standalone_mode=False)\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'cloudpickle', 'mypkg'))\n"
        "print('HEAVY', heavy)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(packed.bundle("registered"))],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_deploy_env(),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "HEAVY []"


# --------------------------------------------------------------------------------------------
# Units: isolation, config walking, source reading, manifest rules (no Keras needed)


def _manifest(objects: list[CustomObject]) -> Manifest:
    return Manifest(
        format_version="1.0",
        generator="test",
        created="2025-01-01T00:00:00Z",
        model=ModelInfo(format="keras", path="model/model.keras"),
        members=[],
        environment=capture_environment(),
        custom_objects=objects,
    )


def test_bundled_source_is_imported_in_isolation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    installed = tmp_path / "installed" / "shadowpkg"
    installed.mkdir(parents=True)
    (installed / "__init__.py").write_text("def thing():\n    return 'installed'\n")
    (installed / "other.py").write_text("VALUE = 'installed only'\n")
    monkeypatch.syspath_prepend(str(tmp_path / "installed"))
    own = __import__("shadowpkg")
    own_other = __import__("shadowpkg.other").other
    try:
        verified = tmp_path / "verified" / "code" / "shadowpkg"
        verified.mkdir(parents=True)
        bundled_init = (
            "from shadowpkg.helpers import twice\n\n\ndef thing():\n    return twice('bundled')\n"
        )
        (verified / "__init__.py").write_text(bundled_init)
        (verified / "helpers.py").write_text("def twice(text):\n    return text * 2\n")
        thing_text = definition_source(bundled_init, "thing")
        assert thing_text is not None
        obj = CustomObject(
            name="thing",
            kind="function",
            module="shadowpkg",
            qualname="thing",
            transport="source",
            source_digest=definition_digest(thing_text),
            sources=[
                SourceFile(module="shadowpkg", path="code/shadowpkg/__init__.py"),
                SourceFile(module="shadowpkg.helpers", path="code/shadowpkg/helpers.py"),
            ],
        )
        path_before, meta_before = list(sys.path), list(sys.meta_path)
        with (
            pytest.warns(CodeConflictWarning) as caught,
            bundled_objects(
                tmp_path / "verified",
                _manifest([obj]),
                label="t",
                registered=lambda name: None,
                gate=ImportGate(trusted=True),
            ) as objects,
        ):
            assert objects["thing"]() == "bundledbundled"
            assert sys.modules["shadowpkg"] is not own
            with pytest.raises(
                ModuleNotFoundError
            ):  # the installed package's other modules are hidden
                __import__("shadowpkg.other")
        assert sys.modules["shadowpkg"] is own and sys.modules["shadowpkg.other"] is own_other
        assert "shadowpkg.helpers" not in sys.modules
        assert (sys.path, sys.meta_path) == (path_before, meta_before)
        assert objects["thing"]() == "bundledbundled"  # its module's globals outlive the load
        assert pyinspect.getsource(objects["thing"]) == thing_text
        assert objects["thing"].__code__.co_filename == "kbundle:t/code/shadowpkg/__init__.py"
        own_text = definition_source((installed / "__init__.py").read_text(), "thing")
        assert own_text is not None
        assert [str(w.message) for w in caught] == [
            f"the bundle's module 'shadowpkg' has the same name as 'shadowpkg' in this environment "
            f"({installed / '__init__.py'}); the bundled one is used to load the model and this "
            "environment's 'shadowpkg' is left as it was",
            f"thing: this environment already defines it (shadowpkg.thing, definition "
            f"{definition_digest(own_text)}), which differs from the bundle's (shadowpkg.thing, "
            f"definition {obj.source_digest}); the bundled one is used",
        ]
    finally:
        for name in ("shadowpkg", "shadowpkg.other"):
            sys.modules.pop(name, None)


def test_config_references_find_every_custom_kind() -> None:
    config = {
        "module": "keras",
        "class_name": "Sequential",
        "registered_name": None,
        "config": {
            "layers": [
                {
                    "module": "keras.layers",
                    "class_name": "Dense",
                    "registered_name": None,
                    "config": {
                        "activation": {
                            "module": "builtins",
                            "class_name": "function",
                            "config": "acme>swish2",
                            "registered_name": "function",
                        },
                        "kernel_initializer": {
                            "module": "mypkg.init",
                            "class_name": "MyInit",
                            "registered_name": "MyInit",
                            "config": {},
                        },
                        "kernel_regularizer": {
                            "module": "builtins",
                            "class_name": "function",
                            "config": "l3",
                            "registered_name": "function",
                        },
                    },
                },
                {
                    "module": None,
                    "class_name": "MainLayer",
                    "registered_name": "MainLayer",
                    "config": {},
                },
                {
                    "module": "keras.layers",
                    "class_name": "Lambda",
                    "registered_name": None,
                    "config": {
                        "function": {"class_name": "__lambda__", "config": {"value": "..."}}
                    },
                },
            ]
        },
        "compile_config": {
            "loss": {
                "module": "mypkg.losses",
                "class_name": "MyLoss",
                "registered_name": "acme>MyLoss",
                "config": {},
            },
            "metrics": [
                {
                    "module": "builtins",
                    "class_name": "function",
                    "config": "my_metric",
                    "registered_name": "function",
                }
            ],
        },
    }
    found = [
        (r.name, r.class_name, r.module, r.function, r.kind_hint) for r in config_references(config)
    ]
    assert found == [
        ("acme>swish2", "acme>swish2", None, True, "activation"),
        ("MyInit", "MyInit", "mypkg.init", False, None),
        ("l3", "l3", None, True, "regularizer"),
        ("MainLayer", "MainLayer", None, False, None),
        ("acme>MyLoss", "MyLoss", "mypkg.losses", False, None),
        ("my_metric", "my_metric", None, True, "metric"),
    ]


def test_definitions_and_imports_are_read_without_running() -> None:
    source = (
        "import os, keras.ops as kops\n"
        "from . import helpers\n"
        "from ..shared.util import tool\n"
        "raise SystemExit('never run')\n"
        "def first():\n    pass\n"
        "@decorate(1)\n@decorate(2)\n"
        "class Outer:\n"
        "    class Inner:\n"
        "        x = 1\n"
        "def first():\n    return 2\n"
    )
    assert definition_source(source, "Outer.Inner") == "    class Inner:\n        x = 1\n"
    assert (
        definition_source(source, "Outer")
        == "@decorate(1)\n@decorate(2)\nclass Outer:\n    class Inner:\n        x = 1\n"
    )
    assert definition_source(source, "first") == "def first():\n    return 2\n"  # the last one wins
    assert definition_source(source, "f.<locals>.g") is None
    assert imported_modules(source, "pkg.sub.mod", is_package=False) == {
        "os",
        "keras",
        "keras.ops",
        "pkg.sub",
        "pkg.sub.helpers",
        "pkg",
        "pkg.shared",
        "pkg.shared.util",
        "pkg.shared.util.tool",
    }


@pytest.mark.slow
def test_manifest_refuses_code_outside_its_canonical_place(packed: Workspace) -> None:
    data = kbundle.inspect(packed.bundle("build_weights")).manifest.to_dict()
    data["custom_objects"][0]["sources"][1]["path"] = "code/mypkg/__init__.py"
    with pytest.raises(
        BundleFormatError,
        match=(
            r"^the manifest breaks 2 format rule\(s\): custom_objects\[0\]\.sources\[1\]\.path: module "
            r"mypkg\.layers must live at code/mypkg/layers\.py or code/mypkg/layers/__init__\.py: "
            r"'code/mypkg/__init__\.py' \(and 1 more\);"
        ),
    ):
        Manifest.from_dict(data)


def test_distribution_objects_load_from_the_installed_distribution() -> None:
    from packaging.version import Version

    installed = __import__("importlib.metadata").metadata.version("packaging")
    recorded = CustomObject(
        name="Version",
        kind="class",
        module="packaging.version",
        qualname="Version",
        transport="distribution",
        requirement="packaging==0.0.1",
        distributions={"packaging": "0.0.1"},
    )
    manifest = _manifest([recorded])
    check_runnable(manifest)  # installed, and the module is part of it: nothing to refuse
    with (
        pytest.warns(CodeConflictWarning) as caught,
        bundled_objects(
            Path("unused"),
            manifest,
            label="t",
            registered={"Version": Version}.get,  # as if packaging registered it with Keras
            gate=ImportGate(distributions=["packaging"]),
        ) as objects,
    ):
        assert objects == {"Version": Version}
    assert [str(w.message) for w in caught] == [
        f"Version comes from packaging {installed} here; the bundle recorded 0.0.1 (packaging==0.0.1)"
    ]

    impostor = dataclasses.replace(recorded, module="json.decoder", qualname="JSONDecoder")
    with pytest.raises(EnvironmentMismatchError) as refused:
        check_runnable(_manifest([impostor]))
    assert str(refused.value) == (
        "Version cannot be loaded here: module json.decoder is not part of distribution "
        "packaging here (it is in the standard library); remove what shadows json from "
        "sys.path, or reinstall 'packaging==0.0.1'"
    )


@pytest.mark.parametrize(
    ("module", "reason"),
    [
        ("json.decoder", "a standard-library module"),
        ("keras", "part of keras"),
        ("kbundle.cli", "part of kbundle"),
    ],
)
def test_a_bundle_may_not_replace_stdlib_keras_or_kbundle(module: str, reason: str) -> None:
    path = f"code/{module.replace('.', '/')}.py"
    obj = CustomObject(
        name="X",
        kind="layer",
        module=module,
        qualname="X",
        transport="source",
        sources=[SourceFile(module=module, path=path)],
    )
    with pytest.raises(BundleFormatError) as refused:
        check_runnable(_manifest([obj]))
    assert str(refused.value) == (
        f"custom object X comes with a bundled module {module!r}, which is {reason}; "
        "the bundle was not written by a conforming kbundle or was tampered with"
    )


def test_loading_the_same_bundle_twice_reports_no_conflict(tmp_path: Path) -> None:
    """The first load's objects stay alive (and registered): the second load must see that
    they are the same definition — from the text kept in linecache — and stay quiet."""
    verified = tmp_path / "verified"
    (verified / "code" / "lonepkg").mkdir(parents=True)
    text = "class Thing:\n    def value(self):\n        return 42\n"
    (verified / "code" / "lonepkg" / "__init__.py").write_text(text)
    obj = CustomObject(
        name="lone>Thing",
        kind="class",
        module="lonepkg",
        qualname="Thing",
        transport="source",
        source_digest=definition_digest(text),
        sources=[SourceFile(module="lonepkg", path="code/lonepkg/__init__.py")],
    )
    manifest = _manifest([obj])
    trusted = ImportGate(trusted=True)
    with bundled_objects(
        verified, manifest, label="first", registered=lambda name: None, gate=trusted
    ) as first:
        pass
    shutil.rmtree(verified / "code")  # the files are gone after a load; the objects are not
    (verified / "code" / "lonepkg").mkdir(parents=True)
    (verified / "code" / "lonepkg" / "__init__.py").write_text(text)
    # Any warning fails this test (filterwarnings = error).
    with bundled_objects(
        verified, manifest, label="second", registered=lambda name: first[name], gate=trusted
    ) as second:
        assert second["lone>Thing"] is not first["lone>Thing"]
    assert first["lone>Thing"]().value() == 42 and "lonepkg" not in sys.modules
