"""Capturing the running environment as an :class:`~kbundle.container.manifest.Environment` record.

Capture is cheap by default: versions come from installed distribution metadata, the Keras
backend from ``KERAS_BACKEND`` or ``~/.keras/keras.json``, and TensorFlow's build (CUDA,
cuDNN, ROCm, TensorRT) from its generated ``build_info.py``, parsed as data and never
executed; with several TensorFlow distributions installed (they share one package
directory), the one recorded is the one whose files are really there. TensorFlow is imported
only when asked (``runtime=True``) or when it is already
imported, because importing it costs about two seconds; a runtime capture adds the git
version, compile flags and the devices TensorFlow sees. Comparing two records lives in
``kbundle.env.rules``. Stable: internal; the record's fields are format 1.0.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import importlib.machinery
import json
import os
import pickle
import platform
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kbundle.container.manifest import (
    Environment,
    KerasInfo,
    PlatformInfo,
    PythonInfo,
    TensorFlowInfo,
)
from kbundle.env.distributions import find, versions

__all__ = [
    "TENSORFLOW_DISTRIBUTIONS",
    "capture_environment",
    "imported_tensorflow",
    "installed_tensorflows",
]

# Every distribution that installs the ``tensorflow`` package, most specific first: a user
# with tensorflow-cpu must get tensorflow-cpu back, never plain tensorflow.
TENSORFLOW_DISTRIBUTIONS = (
    "tensorflow-cpu",
    "tensorflow-gpu",
    "tensorflow-intel",
    "tensorflow-macos",
    "tensorflow-aarch64",
    "tensorflow-rocm",
    "intel-tensorflow",
    "tf-nightly-cpu",
    "tf-nightly",
    "tensorflow",
)
# Libraries whose versions decide whether a saved model reads back (besides TF/Keras).
_KEY_LIBRARIES = (
    "numpy",
    "h5py",
    "cloudpickle",
    "ml-dtypes",
    "protobuf",
    "jax",
    "jaxlib",
    "torch",
    "keras-hub",
    "tf-keras",
)


def capture_environment(*, runtime: bool = False) -> Environment:
    """Record the current environment; import TensorFlow only if ``runtime`` or already imported."""
    distributions = versions()
    runtime = runtime or "tensorflow" in sys.modules
    return Environment(
        python=PythonInfo(
            version=platform.python_version(),
            implementation=platform.python_implementation(),
            pickle_protocol=pickle.DEFAULT_PROTOCOL,
        ),
        platform=_platform(),
        tensorflow=_tensorflow(distributions, runtime=runtime),
        keras=_keras(distributions),
        libraries={name: distributions[name] for name in _KEY_LIBRARIES if name in distributions},
        gpus=_gpus(runtime=runtime),
        distributions=distributions,
    )


def _platform() -> PlatformInfo:
    libc_name, libc_version = platform.libc_ver()
    return PlatformInfo(
        system=platform.system(),
        release=platform.release(),
        machine=platform.machine(),
        libc=f"{libc_name} {libc_version}" if libc_name else None,
    )


# A file every TensorFlow wheel installs and whose bytes differ between its builds (CPU,
# CUDA, ROCm): which distribution's RECORD matches it says whose files are really there.
_BUILD_INFO = "python/platform/build_info.py"


def installed_tensorflows(distributions: Mapping[str, str]) -> list[str]:
    """The TensorFlow distributions installed, most specific first (several share one
    ``tensorflow`` package directory, the last one installed having overwritten the others)."""
    return [d for d in TENSORFLOW_DISTRIBUTIONS if d in distributions]


def _tensorflow_package() -> Path | None:
    """The ``tensorflow`` package directory that is (or would be) imported; not imported here."""
    file = getattr(sys.modules.get("tensorflow"), "__file__", None)
    if file:
        return Path(file).parent
    spec = importlib.machinery.PathFinder.find_spec("tensorflow")
    locations = list(spec.submodule_search_locations or []) if spec else []
    return Path(locations[0]) if locations else None


def imported_tensorflow(distributions: Mapping[str, str]) -> str | None:
    """The TensorFlow distribution whose files the ``tensorflow`` package really holds.

    With one installed, that one. With several (keras-hub's tensorflow-text pulls plain
    ``tensorflow`` beside ``tensorflow-cpu``), the one whose RECORD lists the package's
    ``build_info.py`` with the hash the file has now: the last one installed. When several
    match (identical files) or none does, the most specific installed one.
    """
    installed = installed_tensorflows(distributions)
    if len(installed) <= 1:
        return installed[0] if installed else None
    package = _tensorflow_package()
    if package is None:
        return installed[0]
    marker = package / _BUILD_INFO
    try:
        digest = base64.urlsafe_b64encode(hashlib.sha256(marker.read_bytes()).digest())
    except OSError:
        return installed[0]
    actual = "sha256=" + digest.decode("ascii").rstrip("=")
    matching = [
        name for name in installed if (dist := find(name)) and dist.recorded_hash(marker) == actual
    ]
    return matching[0] if matching else installed[0]


def _tensorflow(distributions: dict[str, str], *, runtime: bool) -> TensorFlowInfo | None:
    distribution = imported_tensorflow(distributions)
    if distribution is None:
        return None
    version = distributions[distribution]
    if runtime:
        try:
            import tensorflow as tf
        except Exception:  # a broken TF install is recorded as static, not fatal
            runtime = False
        else:
            return TensorFlowInfo(
                distribution=distribution,
                version=version,
                captured="runtime",
                git_version=str(tf.version.GIT_VERSION),
                build_info=_jsonable(dict(tf.sysconfig.get_build_info())),
                compile_flags=[str(flag) for flag in tf.sysconfig.get_compile_flags()],
            )
    return TensorFlowInfo(
        distribution=distribution,
        version=version,
        captured="static",
        build_info=_static_build_info(),
    )


def _static_build_info() -> dict[str, Any]:
    """TensorFlow's generated ``build_info`` dict, read as a literal from the source file of
    the package that is imported (whichever distribution's files those are)."""
    package = _tensorflow_package()
    if package is None:
        return {}
    source = package / _BUILD_INFO
    try:
        tree = ast.parse(source.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return {}
    return _build_info_literal(tree)


def _build_info_literal(tree: ast.Module) -> dict[str, Any]:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "build_info" for target in node.targets
        ):
            value = node.value
            # build_info = collections.OrderedDict([(key, value), ...])
            if isinstance(value, ast.Call) and value.args:
                value = value.args[0]
            try:
                return _jsonable(dict(ast.literal_eval(value)))
            except (ValueError, TypeError, SyntaxError):
                return {}
    return {}


def _keras(distributions: dict[str, str]) -> KerasInfo | None:
    if (
        os.environ.get("TF_USE_LEGACY_KERAS") in ("1", "true", "True")
        and "tf-keras" in distributions
    ):
        distribution = "tf-keras"
    elif "keras" in distributions:
        distribution = "keras"
    elif "tf-keras" in distributions:
        distribution = "tf-keras"
    else:
        return None
    version = distributions[distribution]
    config = _keras_config()
    major = int(version.split(".")[0]) if version.split(".")[0].isdigit() else 0
    loaded = sys.modules.get("keras")
    if loaded is not None and hasattr(loaded, "backend") and distribution == "keras":
        backend = loaded.backend.backend()
    elif distribution == "tf-keras" or major < 3:
        backend = "tensorflow"
    else:
        backend = os.environ.get("KERAS_BACKEND") or config.get("backend") or "tensorflow"
    return KerasInfo(
        distribution=distribution,
        version=version,
        major=2 if distribution == "tf-keras" else major,
        backend=str(backend),
        floatx=str(config.get("floatx", "float32")),
        image_data_format=str(config.get("image_data_format", "channels_last")),
    )


def _keras_config() -> dict[str, Any]:
    keras_home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        with open(os.path.join(keras_home, "keras.json"), encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _gpus(*, runtime: bool) -> list[str]:
    if runtime and "tensorflow" in sys.modules:
        tf = sys.modules["tensorflow"]
        try:
            return [device.name for device in tf.config.list_physical_devices("GPU")]
        except Exception:
            return []
    # Without TensorFlow: the NVIDIA driver lists its GPUs here on Linux.
    root = Path("/proc/driver/nvidia/gpus")
    try:
        return sorted(f"nvidia:{entry.name}" for entry in root.iterdir())
    except OSError:
        return []


def _jsonable(data: dict[str, Any]) -> dict[str, Any]:
    return {
        str(k): v if isinstance(v, str | int | float | bool) or v is None else str(v)
        for k, v in data.items()
    }
