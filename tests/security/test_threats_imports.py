"""THREATS.md rows 18 and 19: what a load imports and runs on a bundle's say-so.

Row 18: a bundle names modules (its custom objects' ``module``, and the ``module`` fields of
the model's config, which a Keras loader may import). Importing a module runs it, so without
trust a load imports only Keras's own packages and distributions the user allowed
(``--allow-distribution``), never a ``__main__`` module, never a Keras 2 implementation, and
hands Keras only what a module registered. Row 19: a SavedModel is code (its resource
initialisers and functions run when it is loaded), so loading one needs trust.

The installed code here is real: a small distribution (``evillayers``, with dist-info and
RECORD) written into a directory on the children's ``PYTHONPATH``, whose modules leave marker
files when imported; and the real ``certifi`` and ``tf_keras`` of this environment. Each
refusal is shown by the marker that does not appear, and each permission by the marker that
does. The audit-hook test runs untrusted loads under ``sys.addaudithook`` and checks every
import, exec, open and process event.
"""

from __future__ import annotations

import base64
import hashlib
import json
import marshal
import os
import os.path
import sys
import sysconfig
import textwrap
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from bundle_factory import forge, manifest_for, payload_entries, real_manifest
from conftest import assert_clean_failure, child_env, run_cli, run_python
from hostile import model_bundle

pytestmark = pytest.mark.keras

REPO = Path(__file__).resolve().parents[2]
CERTIFI = metadata.version("certifi")
TF_KERAS = metadata.version("tf-keras")
KERAS = metadata.version("keras")


# --------------------------------------------------------------------------------------------
# A real installed distribution whose modules leave marks


def _install(site: Path, name: str, version: str, files: dict[str, str]) -> None:
    """Write ``files`` (relative path -> text) into ``site`` as the distribution ``name``,
    with the dist-info a pip install leaves (METADATA, RECORD, top_level.txt)."""
    records = []
    for relative, text in files.items():
        target = site / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        data = target.read_bytes()
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        records.append(f"{relative},sha256={digest},{len(data)}")
    info = site / f"{name}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "top_level.txt").write_text(f"{name}\n")
    records += [
        f"{name}-{version}.dist-info/{n},," for n in ("METADATA", "RECORD", "top_level.txt")
    ]
    (info / "RECORD").write_text("\n".join(records) + "\n")


class Site:
    """A directory of installed test distributions, and the marker files their code leaves."""

    def __init__(self, root: Path) -> None:
        self.path = root / "site"
        self.markers = root / "markers"
        self.path.mkdir()
        self.markers.mkdir()
        touch = "import pathlib\npathlib.Path({!r}).touch()\n"
        _install(
            self.path,
            "evillayers",
            "1.0",
            {
                "evillayers/__init__.py": "",
                "evillayers/layers.py": touch.format(str(self.marker("layers-imported")))
                + textwrap.dedent(
                    """
                    import keras

                    @keras.saving.register_keras_serializable(package="evil")
                    class Boom(keras.layers.Layer):
                        def call(self, inputs):
                            return inputs * 2.0

                    def helper(*args, **kwargs):
                        pathlib.Path({!r}).touch()
                    """
                ).format(str(self.marker("helper-called"))),
                "evillayers/__main__.py": touch.format(str(self.marker("main-ran"))),
            },
        )
        _install(
            self.path,
            "exitlayers",
            "1.0",
            {"exitlayers/__init__.py": "raise SystemExit(3)\n"},
        )

    def marker(self, name: str) -> Path:
        return self.markers / name

    def marks(self) -> set[str]:
        return {p.name for p in self.markers.iterdir()}

    def clear(self) -> None:
        for path in self.markers.iterdir():
            path.unlink()

    def env(self, **extra: str) -> dict[str, str]:
        env = child_env(**extra)
        env["PYTHONPATH"] = os.pathsep.join([str(self.path), env["PYTHONPATH"]])
        return env


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    return Site(tmp_path_factory.mktemp("imports"))


_PACK_BOOM = """
import sys
import keras
import kbundle
from evillayers.layers import Boom

keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((3,), name="x"), Boom(name="boom"), keras.layers.Dense(2)])
kbundle.pack(model, sys.argv[1])
"""


@pytest.fixture(scope="module")
def boom_bundle(site: Site, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle kbundle packed from a model using ``evil>Boom`` from the installed
    ``evillayers``: its custom object travels as a pinned distribution."""
    bundle = tmp_path_factory.mktemp("boom") / "boom.kbundle"
    done = run_python("-c", _PACK_BOOM, bundle, env=site.env())
    assert done.returncode == 0, done.stderr[-3000:]
    record = real_manifest(bundle)["custom_objects"]
    assert [(o["name"], o["transport"], o["requirement"]) for o in record] == [
        ("evil>Boom", "distribution", "evillayers==1.0")
    ]
    site.clear()
    return bundle


def _reforged(source: Path, target: Path, change: Any) -> Path:
    """``source`` with its manifest changed by ``change`` and every digest still valid."""
    manifest = real_manifest(source)
    change(manifest)
    entries = payload_entries(source)
    return forge(target, manifest_for(entries, manifest), entries)


def _record(manifest: dict[str, Any]) -> dict[str, Any]:
    (record,) = manifest["custom_objects"]
    return record  # type: ignore[no-any-return]


# --------------------------------------------------------------------------------------------
# Row 18: installed distributions


def test_row18_an_installed_distribution_is_imported_only_when_allowed(
    site: Site, boom_bundle: Path, tmp_path: Path
) -> None:
    refused = run_cli("unpack", boom_bundle, "-d", tmp_path / "a", env=site.env())
    assert_clean_failure(refused, 4)
    assert refused.stderr == (
        "kbundle: error: custom object evil>Boom: importing 'evillayers.layers' would run code "
        "of the installed distribution evillayers, which nobody allowed; allow it with --allow-distribution evillayers (allow_distributions=, or "
        "allow-distributions in [tool.kbundle]), or pass --trust-code (trust_code=True) if "
        "you trust the bundle\n"
    )
    assert site.marks() == set() and not (tmp_path / "a").exists()

    allowed = run_cli(
        "unpack",
        boom_bundle,
        "-d",
        tmp_path / "b",
        "--allow-distribution",
        "evillayers",
        env=site.env(),
    )
    assert allowed.returncode == 0, allowed.stderr
    assert site.marks() == {"layers-imported"}
    site.clear()

    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text(
        '[tool.kbundle]\nallow-distributions = ["EvilLayers"]\n'
    )
    configured = run_cli("unpack", boom_bundle, "-d", tmp_path / "c", cwd=project, env=site.env())
    assert configured.returncode == 0, configured.stderr
    assert site.marks() == {"layers-imported"}
    site.clear()


_LOAD = """
import json, sys
import kbundle
from kbundle.errors import KbundleError

try:
    model = kbundle.load(sys.argv[1], **json.loads(sys.argv[2]))
except KbundleError as exc:
    print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
else:
    print(json.dumps({"loaded": type(model).__name__}))
"""


def _load(site: Site, bundle: Path, **options: Any) -> dict[str, Any]:
    done = run_python("-c", _LOAD, bundle, json.dumps(options), env=site.env())
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])  # type: ignore[no-any-return]


def test_row18_python_api_takes_the_same_allowance(site: Site, boom_bundle: Path) -> None:
    assert _load(site, boom_bundle)["error"] == "UntrustedCodeError"
    assert site.marks() == set()
    assert _load(site, boom_bundle, allow_distributions=["evillayers"]) == {"loaded": "Sequential"}
    assert site.marks() == {"layers-imported"}
    site.clear()


@pytest.mark.parametrize(
    ("module", "requirement", "flags"),
    [
        ("evillayers.__main__", "evillayers==1.0", ["--allow-distribution", "evillayers"]),
        ("evillayers.__main__", "evillayers==1.0", ["--trust-code"]),
        ("certifi.__main__", f"certifi=={CERTIFI}", ["--allow-distribution", "certifi"]),
        ("certifi.__main__", f"certifi=={CERTIFI}", ["--trust-code"]),
    ],
)
def test_row18_a_main_module_is_never_imported(
    site: Site,
    boom_bundle: Path,
    tmp_path: Path,
    module: str,
    requirement: str,
    flags: list[str],
) -> None:
    def point_at_main(manifest: dict[str, Any]) -> None:
        record = _record(manifest)
        record.update(module=module, qualname="Boom", requirement=requirement)
        record["distributions"] = {requirement.split("==")[0]: requirement.split("==")[1]}

    bundle = _reforged(boom_bundle, tmp_path / "main.kbundle", point_at_main)
    result = run_cli("unpack", bundle, "-d", tmp_path / "out", *flags, env=site.env())
    assert_clean_failure(result, 4)
    assert f"{module!r} is a __main__ module, and importing one runs a program" in result.stderr
    assert "no option allows this module" in result.stderr
    assert site.marks() == set()
    assert "cacert.pem" not in result.stdout + result.stderr  # certifi's command line never ran


def _marshalled_lambda(marker: Path) -> list[Any]:
    """A Keras 2 ``Lambda`` function as tf-keras serialises it: marshalled bytecode."""
    function = eval(f"lambda v: (__import__('pathlib').Path({str(marker)!r}).touch(), v)[1]")
    return [base64.b64encode(marshal.dumps(function.__code__)).decode("ascii"), None, None]


def _keras2_sequential_zip(source: Path, target: Path, marker: Path, registered: str) -> None:
    """``source`` (a Keras 3 .keras zip) whose config now asks Keras to build the model with
    the class registered as ``registered``, from a Keras 2 config holding a marshalled Lambda."""
    config = {
        "module": "keras",
        "class_name": "Sequential",
        "registered_name": registered,
        "config": {
            "name": "evil",
            "layers": [
                {
                    "class_name": "InputLayer",
                    "config": {"batch_input_shape": [None, 3], "dtype": "float32", "name": "x"},
                },
                {
                    "class_name": "Lambda",
                    "config": {
                        "name": "payload",
                        "function": _marshalled_lambda(marker),
                        "function_type": "lambda",
                        "module": "builtins",
                        "output_shape": None,
                        "output_shape_type": "raw",
                        "output_shape_module": None,
                        "arguments": {},
                    },
                },
            ],
        },
    }
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            data = old.read(info)
            if info.filename == "config.json":
                data = json.dumps(config).encode()
            new.writestr(info, data)


def _keras2_deserialiser_bundle(
    directory: Path, saved_keras_file: Path, marker: Path, module: str, requirement: str
) -> Path:
    """A bundle whose custom object ``evil>Seq`` names a Keras 2 ``Sequential`` in ``module``
    (of the distribution ``requirement`` pins) for a config holding marshalled Lambda code
    that touches ``marker``."""
    model = directory / "evil.keras"
    _keras2_sequential_zip(saved_keras_file, model, marker, "evil>Seq")
    name, version = requirement.split("==")
    return model_bundle(
        directory / "evil.kbundle",
        {"model/model.keras": model.read_bytes()},
        custom_objects=[
            {
                "name": "evil>Seq",
                "kind": "model",
                "module": module,
                "qualname": "Sequential",
                "transport": "distribution",
                "requirement": requirement,
                "distributions": {name: version},
            }
        ],
    )


@pytest.mark.parametrize(
    ("module", "requirement"),
    [
        ("tf_keras.src.engine.sequential", f"tf-keras=={TF_KERAS}"),
        ("tensorflow.python.keras.engine.sequential", "tensorflow-cpu"),
    ],
)
def test_row18_a_keras2_deserialiser_is_never_handed_a_config(
    site: Site, tmp_path: Path, saved_keras_file: Path, module: str, requirement: str
) -> None:
    """The issue's example: a custom object naming Keras 2's Sequential makes Keras 3 hand it
    a config whose Lambda holds bytecode; Keras 2 ignores Keras 3's safe mode and runs it."""
    marker = tmp_path / "lambda-ran"
    if "==" not in requirement:
        requirement = f"{requirement}=={metadata.version(requirement)}"
    name = requirement.split("==")[0]
    bundle = _keras2_deserialiser_bundle(tmp_path, saved_keras_file, marker, module, requirement)
    for flags in ([], ["--allow-distribution", name], ["--trust-code"]):
        result = run_cli("unpack", bundle, "-d", tmp_path / "out", *flags, env=site.env())
        assert_clean_failure(result, 4)
        assert "a Keras 2 implementation whose deserialiser runs marshalled code" in result.stderr
        assert not marker.exists(), flags


def test_row18_an_object_must_be_what_its_module_registered(
    site: Site, boom_bundle: Path, tmp_path: Path
) -> None:
    """An allowed distribution's module may be imported, but the bundle may not pick any of
    its functions and have Keras call it as a layer."""
    bundle = _reforged(
        boom_bundle,
        tmp_path / "helper.kbundle",
        lambda manifest: _record(manifest).update(qualname="helper"),
    )
    result = run_cli(
        "unpack",
        bundle,
        "-d",
        tmp_path / "out",
        "--allow-distribution",
        "evillayers",
        env=site.env(),
    )
    assert_clean_failure(result, 4)
    assert (
        "custom object evil>Boom: evillayers.layers.helper is not what its module registered "
        "with Keras under 'evil>Boom'"
    ) in result.stderr
    assert site.marks() == {"layers-imported"}  # allowed, so imported; never called
    site.clear()


def test_row18_config_modules_a_keras_loader_would_import_need_an_allowance(
    site: Site, keras2_files: Path, tmp_path: Path
) -> None:
    """tf-keras imports whatever module a .keras config names (Keras 3 before 3.9 did too):
    a config naming an installed module, or Python's ``exit`` as an activation, is refused
    before any loader sees it."""

    def forged(name: str, change: Any) -> Path:
        source = keras2_files / "functional.keras"
        model = tmp_path / f"{name}.keras"
        with zipfile.ZipFile(source) as old, zipfile.ZipFile(model, "w") as new:
            for info in old.infolist():
                data = old.read(info)
                if info.filename == "config.json":
                    config = json.loads(data)
                    change(config)
                    data = json.dumps(config).encode()
                new.writestr(info, data)
        return model_bundle(
            tmp_path / f"{name}.kbundle",
            {"model/model.keras": model.read_bytes()},
            keras_version="2.15.0",
        )

    def installed_layer(config: dict[str, Any]) -> None:
        layer = config["config"]["layers"][1]
        layer.update(module="evillayers.layers", class_name="Boom", registered_name="Boom")

    def exit_activation(config: dict[str, Any]) -> None:
        layer = config["config"]["layers"][1]
        layer["config"]["activation"] = {
            "module": "builtins",
            "class_name": "function",
            "config": "exit",
            "registered_name": "function",
        }

    installed = forged("installed", installed_layer)
    result = run_cli("unpack", installed, "-d", tmp_path / "a", env=site.env())
    assert_clean_failure(result, 4)
    assert "the model's config names 'Boom': importing 'evillayers.layers' would run" in (
        result.stderr
    )
    assert site.marks() == set()

    python_exit = forged("exit", exit_activation)
    result = run_cli("unpack", python_exit, "-d", tmp_path / "b", env=site.env())
    assert_clean_failure(result, 4)
    assert "the model's config names function 'exit' of module builtins" in result.stderr


def test_row26_system_exit_from_imported_code_is_a_load_error(
    site: Site, boom_bundle: Path, tmp_path: Path
) -> None:
    def exiting(manifest: dict[str, Any]) -> None:
        _record(manifest).update(
            module="exitlayers", requirement="exitlayers==1.0", distributions={"exitlayers": "1.0"}
        )

    bundle = _reforged(boom_bundle, tmp_path / "exit.kbundle", exiting)
    result = run_cli(
        "unpack",
        bundle,
        "-d",
        tmp_path / "out",
        "--allow-distribution",
        "exitlayers",
        env=site.env(),
    )
    assert_clean_failure(result, 5)
    assert "custom object evil>Boom: importing exitlayers failed: SystemExit: 3" in result.stderr
    assert _load(site, bundle, allow_distributions=["exitlayers"])["error"] == "ModelLoadError"


# --------------------------------------------------------------------------------------------
# Row 19: SavedModel graphs run at load

_SAVEDMODEL = """
import sys
import tensorflow as tf

marker = sys.argv[2]

class Resource(tf.saved_model.experimental.TrackableResource):
    def _create_resource(self):
        return tf.raw_ops.VarHandleOp(dtype=tf.float32, shape=[], shared_name="")

    def _initialize(self):
        tf.io.write_file(marker, "the graph ran")  # a resource initialiser: runs at load
        return tf.raw_ops.AssignVariableOp(resource=self.resource_handle, value=1.0)

class Model(tf.Module):
    def __init__(self):
        super().__init__()
        self.resource = Resource()
        self.scale = tf.Variable(2.0)

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)])
    def serve(self, x):
        return x * self.scale

model = Model()
tf.saved_model.save(model, sys.argv[1], signatures={"serve": model.serve})
"""


@pytest.fixture(scope="module")
def savedmodel_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A bundle of a SavedModel whose resource initialiser writes ``marker`` when loaded."""
    root = tmp_path_factory.mktemp("savedmodel")
    marker = root / "graph-ran"
    done = run_python("-c", _SAVEDMODEL, root / "saved", marker)
    assert done.returncode == 0, done.stderr[-3000:]
    packed = run_cli("pack", root / "saved", "-o", root / "model.kbundle", "--quiet")
    assert packed.returncode == 0, packed.stderr
    marker.unlink(missing_ok=True)
    return root / "model.kbundle", marker


def test_row19_a_savedmodel_loads_only_with_trust(
    savedmodel_bundle: tuple[Path, Path], tmp_path: Path
) -> None:
    bundle, marker = savedmodel_bundle
    refused = run_cli("unpack", bundle, "-d", tmp_path / "a")
    assert_clean_failure(refused, 4)
    assert refused.stderr.startswith(
        "kbundle: error: loading a SavedModel runs its graph (functions and resource "
        "initialisers can read and write files), and nobody trusted this one; pass --trust-code"
    )
    assert not marker.exists() and not (tmp_path / "a").exists()

    extracted = run_cli("unpack", bundle, "-d", tmp_path / "b", "--no-load")
    assert extracted.returncode == 0, extracted.stderr
    assert not marker.exists()

    for target in (bundle, tmp_path / "b" / "model" / "saved_model"):
        diagnosed = run_cli("doctor", target)
        assert diagnosed.returncode == 4, diagnosed.stderr
        assert "load          not attempted: loading a SavedModel runs its graph" in (
            diagnosed.stdout
        )
        assert not marker.exists()

    trusted = run_cli("unpack", bundle, "-d", tmp_path / "c", "--trust-code")
    assert trusted.returncode == 0, trusted.stderr
    assert marker.read_text() == "the graph ran"  # the test can fail: loading runs the graph
    marker.unlink()
    trusted_doctor = run_cli("doctor", bundle, "--trust-code")
    assert trusted_doctor.returncode == 0, trusted_doctor.stdout + trusted_doctor.stderr
    assert marker.read_text() == "the graph ran"
    marker.unlink()


# --------------------------------------------------------------------------------------------
# The invariant, watched by the interpreter itself

_AUDITED = r"""
import json, os, sys
import kbundle
from kbundle.errors import KbundleError

bundles, allowed_roots, watched = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
kbundle.load(bundles.pop("warm-up"))  # TensorFlow and Keras import what they need, once
events = []
KINDS = ("exec", "open", "marshal.loads", "subprocess.Popen", "os.system",
         "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "ctypes.dlopen", "compile")

def hook(event, args):
    if event == "marshal.loads" and "importlib" in sys._getframe(1).f_code.co_filename:
        return  # bytecode of an imported module's .pyc: the import event covers it
    if event in KINDS:
        first = args[0] if args else None
        if event == "exec":
            first = getattr(first, "co_filename", str(first))
        elif event == "open":
            writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
            mode = args[1] if len(args) > 1 else None
            flags = args[2] if len(args) > 2 and isinstance(args[2], int) else 0
            first = (os.fsdecode(first) if isinstance(first, (str, bytes, os.PathLike))
                     else str(first),
                     bool(flags & writes) or (isinstance(mode, str) and mode[:1] in "wax+"))
        elif event == "compile":
            first = args[1] if len(args) > 1 else None
        events.append((current, event, first if isinstance(first, (str, tuple)) else str(first)))

class ImportRecorder:
    # First on sys.meta_path: sees every import not already satisfied by sys.modules, whoever
    # asks (importlib.import_module raises no "import" audit event).

    def find_spec(self, name, path=None, target=None):
        events.append((current, "import", name))
        return None

current = None
sys.meta_path.insert(0, ImportRecorder())
sys.addaudithook(hook)
outcomes = {}
for current, bundle in bundles.items():
    try:
        kbundle.load(bundle, **({"allow_distributions": ["evillayers"]} if current == "allowed" else {}))
        outcomes[current] = "loaded"
    except KbundleError as exc:
        outcomes[current] = type(exc).__name__
current = None
search_path = [entry for entry in sys.path if entry and os.path.isdir(entry)]
print(json.dumps({"outcomes": outcomes, "events": events, "search_path": search_path}))
"""

# Packages an untrusted load may import from (and run code of): the standard library, kbundle,
# and what Keras and TensorFlow themselves import. Never the Keras 2 implementations.
_LIBRARY_TOPS = {
    "kbundle",
    "keras",
    "tensorflow",
    "numpy",
    "h5py",
    "ml_dtypes",
    "google",
    "absl",
    "optree",
    "rich",
    "namex",
    "packaging",
    "zstandard",
    "click",
    "wrapt",
    "tensorboard",
    "opt_einsum",
    "gast",
    "astunparse",
    "termcolor",
    "flatbuffers",
    "markdown_it",
    "mdurl",
    "pygments",
    "grpc",
    "keras_hub",
    "keras_cv",
    "keras_nlp",
    "_distutils_hack",
}
_NEVER = ("tf_keras", "tensorflow.python.keras", "tensorflow.keras")


def _library_module(name: str) -> bool:
    parts = name.split(".")
    if "__main__" in parts or any(name == p or name.startswith(p + ".") for p in _NEVER):
        return False
    return parts[0] in _LIBRARY_TOPS or parts[0] in sys.stdlib_module_names


def _library_file(filename: str, roots: list[str]) -> bool:
    """Whether code from ``filename`` is the standard library's, kbundle's or a library's
    in ``_LIBRARY_TOPS`` (a file under site-packages names its module by its path)."""
    for site_dir in sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]:
        if filename.startswith(site_dir + os.sep):
            module = filename[len(site_dir) + 1 :].removesuffix(".py").replace(os.sep, ".")
            return _library_module(module.removesuffix(".__init__"))
    return filename.startswith(tuple(roots))


def _forbidden(event: list[Any], roots: list[str], readable: list[str], scratch: str) -> str | None:
    """Why an audit event of an untrusted load breaks the invariant, or None: an import
    outside the libraries, code run from elsewhere, a write outside the scratch directory, a
    read outside ``readable`` (the interpreter's search path and the bundles), a process."""
    _, kind, detail = event
    if kind == "import":
        return None if _library_module(str(detail)) else f"imported {detail}"
    if kind in ("exec", "compile"):
        if detail is None or str(detail).startswith("<"):
            return None  # eval/exec of generated text inside the libraries (namedtuple, ...)
        return None if _library_file(str(detail), roots) else f"{kind} of {detail}"
    if kind == "open":
        path, writes = detail
        if writes:
            return None if path.startswith((scratch, "/dev/shm/")) else f"wrote {path}"
        if not os.path.isabs(path):
            return None  # a name under a directory descriptor: shutil.rmtree of scratch
        keras_config = os.path.expanduser("~/.keras/")  # Keras reads its own keras.json
        if path.startswith(
            (*roots, *readable, scratch, keras_config, "/proc/", "/sys/", "/dev/", "/etc/")
        ):
            return None
        return f"read {path}"
    return f"{kind} {detail}"


def test_row18_19_untrusted_loads_import_exec_and_open_nothing_outside_the_libraries(
    site: Site,
    boom_bundle: Path,
    savedmodel_bundle: tuple[Path, Path],
    keras2_files: Path,
    saved_keras_file: Path,
    sequential_model: Any,
    tmp_path: Path,
) -> None:
    warm = tmp_path / "warm.kbundle"
    run_cli("pack", saved_keras_file, "-o", warm, "--quiet", "--no-probe")
    main = _reforged(
        boom_bundle,
        tmp_path / "main.kbundle",
        lambda m: _record(m).update(module="certifi.__main__", requirement=f"certifi=={CERTIFI}"),
    )
    legacy = _keras2_deserialiser_bundle(
        tmp_path,
        saved_keras_file,
        tmp_path / "lambda-ran",
        "tf_keras.src.engine.sequential",
        f"tf-keras=={TF_KERAS}",
    )
    h5 = tmp_path / "model.h5"
    sequential_model.save(h5)
    packed_h5 = run_cli("pack", h5, "-o", tmp_path / "plain-h5.kbundle", "--quiet", "--no-probe")
    assert packed_h5.returncode == 0, packed_h5.stderr
    entries = payload_entries(tmp_path / "plain-h5.kbundle")
    manifest = real_manifest(tmp_path / "plain-h5.kbundle")
    manifest["custom_objects"] = [
        {**_record(real_manifest(boom_bundle)), "module": "evillayers.__main__"}
    ]
    h5_bundle = forge(tmp_path / "h5-main.kbundle", manifest_for(entries, manifest), entries)
    bundles = {
        "warm-up": str(warm),
        "distribution": str(boom_bundle),
        "main-module": str(main),
        "keras2-deserialiser": str(legacy),
        "h5": str(h5_bundle),
        "savedmodel": str(savedmodel_bundle[0]),
        "allowed": str(boom_bundle),  # the control: an allowed import the checker must see
    }
    roots = sorted(
        {sys.prefix, sys.base_prefix, sysconfig.get_paths()["stdlib"], str(REPO / "kbundle")}
    )
    scratch = str(tmp_path)
    done = run_python(
        "-c",
        _AUDITED,
        json.dumps(bundles),
        json.dumps(roots),
        str(site.markers),
        cwd=tmp_path,
        env=site.env(TMPDIR=scratch),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["outcomes"] == {
        "distribution": "UntrustedCodeError",
        "main-module": "UntrustedCodeError",
        "keras2-deserialiser": "UntrustedCodeError",
        "h5": "UntrustedCodeError",
        "savedmodel": "UntrustedCodeError",
        "allowed": "loaded",
    }
    broken: dict[str, list[str]] = {}
    for event in report["events"]:
        why = _forbidden(event, roots, [*report["search_path"], *bundles.values()], scratch)
        if why is not None:
            broken.setdefault(event[0], []).append(why)
    # The control load imported the allowed distribution, and the checker saw it.
    control = broken.pop("allowed", [])
    assert {"imported evillayers", "imported evillayers.layers"} <= set(control), control
    assert broken == {}
    assert site.marks() == {"layers-imported"}  # from the control only
    assert not (tmp_path / "lambda-ran").exists() and not savedmodel_bundle[1].exists()
    site.clear()
