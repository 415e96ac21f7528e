"""Shared test fixtures: the CLI as a real subprocess, and small real Keras models.

Models are built in the tests with real Keras on TensorFlow (never mocked); the CLI is run
as ``python -m kbundle`` in a child process with this checkout first on ``sys.path``.
"""

from __future__ import annotations

import itertools
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pytest
from storage_servers import FaultProxy, RangeFileServer, free_port, start_program

REPO = Path(__file__).resolve().parents[1]

# Quiet TensorFlow's C++ logging and make runs deterministic, here and in child processes.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


@pytest.fixture(scope="session", autouse=True)
def session_tmpdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TMPDIR for this process and every child: a directory under pytest's own base
    temporary directory, so whatever kbundle's temporary directories leave lands there (and
    pytest's rotation removes it), never in the system's /tmp."""
    import tempfile

    directory = tmp_path_factory.getbasetemp() / "tmpdir"
    directory.mkdir(exist_ok=True)
    os.environ["TMPDIR"] = str(directory)
    tempfile.tempdir = None  # gettempdir() reads TMPDIR again
    return directory


@pytest.fixture(autouse=True)
def nothing_left_in_tmpdir(session_tmpdir: Path) -> Any:
    """Every test leaves its temporary directories clean: kbundle removes its scratch
    directories itself (a process killed with SIGKILL cannot; such tests give the child a
    TMPDIR of their own)."""
    import shutil

    yield
    left = sorted(p.name for p in session_tmpdir.iterdir() if p.name.startswith("kbundle-"))
    for name in left:
        shutil.rmtree(session_tmpdir / name, ignore_errors=True)
    assert not left, f"left behind in TMPDIR: {left}"


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a kbundle child process: this checkout importable, TF quiet."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("KBUNDLE_DEBUG", None)
    env.update(extra)
    return env


def env_with_unreachable_index(**extra: str) -> dict[str, str]:
    """A child environment whose package index refuses connections (no pip config, no
    mirrors, no retries); ``PIP_*`` variables reach pip even under ``python -I``."""
    return child_env(
        PIP_CONFIG_FILE=os.devnull,
        PIP_INDEX_URL="http://127.0.0.1:9/simple",
        PIP_EXTRA_INDEX_URL="",
        PIP_FIND_LINKS="",
        PIP_RETRIES="0",
        **extra,
    )


def run_cli(
    *args: str | os.PathLike[str],
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m kbundle ARGS`` in a subprocess and return the completed process."""
    return run_python("-m", "kbundle", *args, cwd=cwd, env=env, timeout=timeout)


def run_python(
    *args: str | os.PathLike[str],
    python: str | os.PathLike[str] = sys.executable,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    """Run ``python ARGS`` (this interpreter unless ``python``) in a subprocess, output captured."""
    return subprocess.run(
        [str(python), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env or child_env(),
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def assert_clean_failure(result: subprocess.CompletedProcess[str], code: int) -> None:
    """A failure with the documented exit code, a 'kbundle: error:' line and no traceback."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert "kbundle: error:" in result.stderr, result.stderr


@pytest.fixture(scope="session")
def keras() -> Any:
    import keras as keras_module

    return keras_module


@pytest.fixture
def sequential_model(keras: Any) -> Any:
    """A small Sequential model with deterministic weights."""
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((10,), name="features"),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(1, activation="sigmoid"),
        ],
        name="tiny_sequential",
    )


@pytest.fixture
def functional_model(keras: Any) -> Any:
    """A functional model with two inputs and two outputs."""
    keras.utils.set_random_seed(1)
    left = keras.Input((8,), name="left")
    right = keras.Input((4, 3), name="right")
    merged = keras.layers.Concatenate()(
        [keras.layers.Dense(6)(left), keras.layers.Flatten()(right)]
    )
    hidden = keras.layers.Dense(12, activation="tanh")(merged)
    score = keras.layers.Dense(1, name="score")(hidden)
    label = keras.layers.Dense(3, activation="softmax", name="label")(hidden)
    return keras.Model([left, right], [score, label], name="two_in_two_out")


@pytest.fixture
def sample_inputs() -> Callable[[Any], Any]:
    """Deterministic inputs matching a model's declared input shapes."""
    import numpy as np

    def make(model: Any) -> Any:
        rng = np.random.default_rng(42)
        arrays = [
            rng.standard_normal((4, *[d or 1 for d in t.shape[1:]])).astype("float32")
            for t in model.inputs
        ]
        return arrays[0] if len(arrays) == 1 else arrays

    return make


USER_LAYERS = """\
import keras


@keras.saving.register_keras_serializable(package="mypkg")
class Scale(keras.layers.Layer):
    def __init__(self, factor=2.0, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, x):
        return x * self.factor

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}
"""


@pytest.fixture(scope="module")
def user_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new user's project: ``mypkg/mylayers.py`` registers ``mypkg>Scale``, and
    ``model.keras`` uses it (saved by a training script run in the project directory)."""
    project = tmp_path_factory.mktemp("project")
    (project / "mypkg").mkdir()
    (project / "mypkg" / "__init__.py").write_text("")
    (project / "mypkg" / "mylayers.py").write_text(USER_LAYERS)
    trained = run_python(
        "-c",
        "import keras\n"
        "from mypkg.mylayers import Scale\n"
        "model = keras.Sequential([keras.Input((3,)), Scale(3.0), keras.layers.Dense(2)])\n"
        "model.save('model.keras')\n",
        cwd=project,
    )
    assert trained.returncode == 0, trained.stderr
    return project


@pytest.fixture
def saved_keras_file(tmp_path: Path, sequential_model: Any) -> Path:
    """The sequential model saved as a .keras file."""
    path = tmp_path / "model.keras"
    sequential_model.save(path)
    return path


def zip_member_data_offset(path: Path, member: str) -> int:
    """Where ``member``'s stored bytes start in the zip ``path`` (after its local header)."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        header = archive.getinfo(member).header_offset
    raw = path.read_bytes()
    name_len = int.from_bytes(raw[header + 26 : header + 28], "little")
    extra_len = int.from_bytes(raw[header + 28 : header + 30], "little")
    return header + 30 + name_len + extra_len


def python_with_site(tmp_path: Path, files: dict[str, str]) -> Path:
    """An interpreter whose own site-packages holds ``files`` (relative path -> text) ahead of
    this environment's packages: a real virtual environment (no pip) whose ``.pth`` file adds
    this environment's site-packages after its own. kbundle starts its children with
    ``python -I``, which ignores PYTHONPATH and the current directory; this is how a test
    changes what such a child imports."""
    import sysconfig

    venv = tmp_path / "site-overlay"
    made = run_python("-m", "venv", "--without-pip", venv)
    assert made.returncode == 0, made.stderr
    python = venv / ("Scripts" if os.name == "nt" else "bin") / "python"
    purelib = run_python(
        "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", python=python
    ).stdout.strip()
    site_dir = Path(purelib)
    for relative, text in files.items():
        (site_dir / relative).parent.mkdir(parents=True, exist_ok=True)
        (site_dir / relative).write_text(text)
    here = sysconfig.get_paths()["purelib"]
    (site_dir / "zz-parent-environment.pth").write_text(f"import site; site.addsitedir({here!r})\n")
    return python


def env_without_tf_keras(tmp_path: Path) -> dict[str, str]:
    """A child environment in which ``import tf_keras`` fails as if it were not installed."""
    shim = tmp_path / "no-tf-keras" / "tf_keras"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'tf_keras'\", name='tf_keras')\n"
    )
    env = child_env()
    env["PYTHONPATH"] = os.pathsep.join([str(shim.parent), env["PYTHONPATH"]])
    return env


# --------------------------------------------------------------------------------------------
# Real Keras 2 files (tf-keras), written once per session in a child process: Keras 2 and
# Keras 3 cannot share one process as "keras", so the child runs with TF_USE_LEGACY_KERAS=1.

KERAS2_INPUT = [[0.5, -1.0, 2.0, 0.25], [1.5, 0.0, -0.5, 3.0]]

_KERAS2_SCRIPT = """
import json, sys
from pathlib import Path
import numpy as np
import tensorflow as tf
import tf_keras as keras

out, marker = Path(sys.argv[1]), sys.argv[2]
keras.utils.set_random_seed(0)
x = np.array(json.loads(sys.argv[3]), dtype="float32")

class Scale(keras.layers.Layer):
    def __init__(self, factor=2.0, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor
    def call(self, inputs):
        return inputs * self.factor
    def get_config(self):
        return {**super().get_config(), "factor": self.factor}

def functional(name, middle):
    inputs = keras.Input((4,), name="x")
    return keras.Model(inputs, keras.layers.Dense(1, name="head")(middle(inputs)), name=name)

models = {
    "plain": keras.Sequential([keras.Input((4,), name="x"), keras.layers.Dense(3), keras.layers.Dense(1)], name="plain"),
    "functional": functional("functional", lambda t: keras.layers.Dense(3, name="hidden")(t)),
    "custom": functional("custom", lambda t: Scale(3.0, name="scale")(t)),
    "tfop": functional("tfop", lambda t: tf.math.square(t)),
    "tfop_lambda": functional("tfop_lambda", lambda t: keras.layers.Lambda(
        eval("lambda v: v * 2 if not __import__('pathlib').Path(%r).touch() else v" % marker))(tf.math.square(t))),
}
expected = {}
for name, model in models.items():
    expected[name] = model(x).numpy()
    model.save(out / f"{name}.h5")
models["functional"].save(out / "functional.keras")
models["plain"].save(out / "plain_savedmodel")
np.savez(out / "expected.npz", **expected)
"""


@pytest.fixture(scope="session")
def keras2_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Keras 2 models saved by tf-keras: ``plain.h5``, ``custom.h5`` (a custom ``Scale``
    layer), ``tfop.h5`` (a TFOpLambda Keras 3 cannot read), ``tfop_lambda.h5`` (TFOpLambda then
    a Lambda whose code touches ``lambda-ran`` in the same directory when it runs),
    ``functional.h5`` and ``functional.keras`` (which Keras 3 cannot read: it names
    ``tf_keras.src.engine.functional``), ``plain_savedmodel/`` and ``expected.npz`` (each
    model's outputs on ``KERAS2_INPUT``)."""
    import json

    out = tmp_path_factory.mktemp("keras2")
    marker = out / "lambda-ran"
    done = subprocess.run(
        [sys.executable, "-c", _KERAS2_SCRIPT, str(out), str(marker), json.dumps(KERAS2_INPUT)],
        capture_output=True,
        text=True,
        env=child_env(TF_USE_LEGACY_KERAS="1"),
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    marker.unlink(missing_ok=True)  # building the Lambda model ran its code once, by design
    return out


# --------------------------------------------------------------------------------------------
# Servers for the storage tests (tests/storage/): moto's S3 server and an HTTP file server on
# 127.0.0.1, each behind a fault-injecting, byte-counting proxy (storage_servers.py). The
# fixtures start and stop every server themselves: nothing is started by hand, not even by CI.

# moto's server and s3fs read credentials from the environment: fixed fake ones, and no
# profile or config of the machine's (children inherit these through conftest.child_env).
for _name, _value in {
    "AWS_ACCESS_KEY_ID": "kbundle-test-key-id",
    "AWS_SECRET_ACCESS_KEY": "kbundle-test-secret-key",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}.items():
    os.environ[_name] = _value
os.environ.pop("AWS_PROFILE", None)
os.environ.pop("AWS_SESSION_TOKEN", None)

_buckets = itertools.count()


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[tuple[str, int]]:
    """moto's standalone S3 server (the real S3 HTTP API) on 127.0.0.1, for the session."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield host, port
    server.stop()


@dataclass
class Bucket:
    """A fresh bucket (container) on a store's server, reached through ``proxy``; ``fs`` is
    a filesystem straight to the server (no proxy), for setting up and checking."""

    scheme: ClassVar[str]
    name: str
    proxy: FaultProxy
    fs: Any

    @property
    def options(self) -> dict[str, Any]:
        """The storage options that reach the server through the proxy."""
        return {"endpoint_url": self.proxy.endpoint}

    @property
    def cli_options(self) -> list[str]:
        return [arg for k, v in self.options.items() for arg in ("--storage-option", f"{k}={v}")]

    def url(self, key: str) -> str:
        return f"{self.scheme}://{self.name}/{key}"

    def path(self, key: str) -> str:
        return f"{self.name}/{key}"

    def put(self, key: str, data: bytes) -> None:
        self.fs.pipe_file(self.path(key), data)

    def get(self, key: str) -> bytes:
        return bytes(self.fs.cat_file(self.path(key)))

    def exists(self, key: str) -> bool:
        self.fs.invalidate_cache()
        return bool(self.fs.exists(self.path(key)))


B = TypeVar("B", bound=Bucket)


def _fresh_bucket(kind: type[B], upstream: tuple[str, int], fs: Any) -> Iterator[B]:
    """A bucket of a unique name on ``fs``, behind a new proxy to ``upstream``."""
    proxy = FaultProxy(upstream)
    name = f"kbundle-test-{os.getpid()}-{next(_buckets)}"
    fs.mkdir(name)
    try:
        yield kind(name, proxy, fs)
    finally:
        proxy.stop()


@dataclass
class S3Bucket(Bucket):
    """A bucket on the moto server."""

    scheme: ClassVar[str] = "s3"

    def presign(self, key: str) -> str:
        """An HTTP URL for GET of ``key`` through the proxy, signed as `aws s3 presign` signs
        (SigV4, the signature in the query). moto does not check it."""
        import s3fs

        signer = s3fs.S3FileSystem(
            endpoint_url=self.proxy.endpoint,
            config_kwargs={"signature_version": "s3v4"},
            skip_instance_cache=True,
        )
        return str(signer.sign(self.path(key), expiration=600))

    def uploads(self) -> list[dict[str, Any]]:
        """Multipart uploads started and neither completed nor aborted."""
        found = self.fs.call_s3("list_multipart_uploads", Bucket=self.name)
        return list(found.get("Uploads") or [])


@pytest.fixture
def s3(moto_endpoint: tuple[str, int]) -> Iterator[S3Bucket]:
    import s3fs

    host, port = moto_endpoint
    fs = s3fs.S3FileSystem(endpoint_url=f"http://{host}:{port}", skip_instance_cache=True)
    yield from _fresh_bucket(S3Bucket, moto_endpoint, fs)


# gcsfs (2026.10 and later) asks Google's gRPC control plane for each bucket's layout, with a
# minute-long timeout per attempt; the emulator has no such plane. Plain GCSFileSystem, then.
os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"


@pytest.fixture(scope="session")
def gcs_endpoint() -> Iterator[tuple[str, int]]:
    """gcp-storage-emulator (the GCS JSON API, resumable uploads included) on 127.0.0.1, in
    memory, for the session."""
    from gcp_storage_emulator.server import create_server

    logging.getLogger("gcp_storage_emulator").setLevel(logging.ERROR)
    port = free_port()
    server = create_server("127.0.0.1", port, in_memory=True)
    server.start()
    yield "127.0.0.1", port
    server.stop()


@dataclass
class GcsBucket(Bucket):
    """A bucket on the GCS emulator."""

    scheme: ClassVar[str] = "gs"

    @property
    def options(self) -> dict[str, Any]:
        return {"endpoint_url": self.proxy.endpoint, "token": "anon"}


@pytest.fixture
def gcs(gcs_endpoint: tuple[str, int]) -> Iterator[GcsBucket]:
    import gcsfs

    host, port = gcs_endpoint
    fs = gcsfs.GCSFileSystem(
        endpoint_url=f"http://{host}:{port}", token="anon", skip_instance_cache=True
    )
    yield from _fresh_bucket(GcsBucket, gcs_endpoint, fs)


# Azurite, Microsoft's Azure Storage emulator (a Node program, installed by `make dev` beside
# the virtual environment), with its documented development account.
_AZURITE = Path(sys.prefix) / "azurite" / "node_modules" / ".bin" / "azurite-blob"
_AZURITE_ACCOUNT = "devstoreaccount1"
_AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


@pytest.fixture(scope="session")
def azure_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """Azurite's blob service on 127.0.0.1, in memory, for the session."""
    if not _AZURITE.exists():
        pytest.fail(f"{_AZURITE} is missing: run make dev (it installs azurite with npm)")
    port = free_port()
    argv = [str(_AZURITE), "--inMemoryPersistence", "--blobHost", "127.0.0.1"]
    argv += ["--blobPort", str(port), "--skipApiVersionCheck", "--loose", "--silent"]
    server = start_program(argv, port, tmp_path_factory.mktemp("azurite") / "azurite.log")
    yield "127.0.0.1", port
    server.kill()  # in memory, nothing to keep; SIGTERM waits on clients' idle connections
    server.wait(timeout=30)


@dataclass
class AzureContainer(Bucket):
    """A container on azurite."""

    scheme: ClassVar[str] = "az"

    @property
    def options(self) -> dict[str, Any]:
        # 4 MiB blocks (adlfs's default is 50 MiB), so a test bundle goes up in several.
        return {"connection_string": _azurite_connection(self.proxy.endpoint), "blocksize": 4 << 20}


def _azurite_connection(endpoint: str) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={_AZURITE_ACCOUNT};"
        f"AccountKey={_AZURITE_KEY};BlobEndpoint={endpoint}/{_AZURITE_ACCOUNT};"
    )


@pytest.fixture
def azure(azure_endpoint: tuple[str, int]) -> Iterator[AzureContainer]:
    import adlfs

    host, port = azure_endpoint
    fs = adlfs.AzureBlobFileSystem(
        connection_string=_azurite_connection(f"http://{host}:{port}"), skip_instance_cache=True
    )
    yield from _fresh_bucket(AzureContainer, azure_endpoint, fs)


@dataclass
class HttpFiles:
    """Files served over HTTP with range support from ``root``, through ``proxy``."""

    root: Path
    proxy: FaultProxy

    def url(self, name: str) -> str:
        return f"{self.proxy.endpoint}/{name}"


@pytest.fixture
def http_files(tmp_path: Path) -> Iterator[HttpFiles]:
    root = tmp_path / "served"
    root.mkdir()
    server = RangeFileServer(root)
    proxy = FaultProxy(("127.0.0.1", server.port))
    try:
        yield HttpFiles(root, proxy)
    finally:
        proxy.stop()
        server.stop()


@pytest.fixture(scope="session")
def model_file(tmp_path_factory: pytest.TempPathFactory, keras: Any) -> Path:
    """A small real Keras model, saved as ``.keras``."""
    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [
            keras.Input((6,), name="x"),
            keras.layers.Dense(4, activation="relu"),
            keras.layers.Dense(1),
        ],
        name="remote_small",
    )
    path = tmp_path_factory.mktemp("models") / "small.keras"
    model.save(path)
    return path


@pytest.fixture(scope="session")
def bundle_file(tmp_path_factory: pytest.TempPathFactory, model_file: Path) -> Path:
    """``model_file`` packed (with its probe) into a local bundle."""
    import kbundle

    path = tmp_path_factory.mktemp("bundles") / "small.kbundle"
    kbundle.pack(model_file, path)
    return path


@pytest.fixture(scope="session")
def large_model_file(tmp_path_factory: pytest.TempPathFactory, keras: Any) -> Path:
    """A real Keras model of about 21 MB: packed with ``--level none`` its bundle takes an
    S3 multipart upload of several parts (5 MiB held back for part 1, then 8 MiB parts)."""
    keras.utils.set_random_seed(4)
    model = keras.Sequential(
        [keras.Input((2300,), name="x"), keras.layers.Dense(2300), keras.layers.Dense(1)],
        name="remote_large",
    )
    path = tmp_path_factory.mktemp("models") / "large.keras"
    model.save(path)
    return path
