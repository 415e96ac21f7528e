"""Rules for what a model file says about its maker: the Keras, backend and TensorFlow that
wrote it (``saved_by``), and the ops its graph uses, against this environment.

``kbundle doctor`` asks these of a plain model file, where no packing environment was
recorded: the same engine, outcomes and wording as the bundle rules, over the facts the file
itself holds. Stable: internal; the field names are documented in docs/compatibility.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from kbundle.container.manifest import Environment
from kbundle.env.rules.base import CERTAIN, RISK, Result, parse_version, release

__all__ = ["GPU_ONLY_OPS", "KERAS2_FIX", "newer_version", "rules"]

# TensorFlow registers these ops with GPU kernels only: a graph that runs them cannot run on
# a CPU build (Keras RNN layers keep a CPU twin that TensorFlow swaps in; raw use does not).
GPU_ONLY_OPS = frozenset(
    {
        "CudnnRNN",
        "CudnnRNNV2",
        "CudnnRNNV3",
        "CudnnRNNBackprop",
        "CudnnRNNBackpropV2",
        "CudnnRNNBackpropV3",
        "CudnnRNNCanonicalToParams",
        "CudnnRNNCanonicalToParamsV2",
        "CudnnRNNParamsSize",
        "CudnnRNNParamsToCanonical",
        "CudnnRNNParamsToCanonicalV2",
        "NcclAllReduce",
        "NcclBroadcast",
        "NcclReduce",
    }
)
KERAS2_FIX = (
    "the file needs Keras 2: install tf-keras (kbundle loads Keras 2 files through it when "
    "Keras 3 cannot), or rebuild the model under Keras 3 and save it as .keras"
)


def _major(version: str | None) -> int | None:
    parsed = parse_version(version)
    return release(parsed, 1)[0] if parsed else None


def newer_version(left: str | None, right: str | None) -> bool:
    """Whether version ``left`` is newer than ``right`` (False when either is unreadable)."""
    was, now = parse_version(left), parse_version(right)
    return was is not None and now is not None and was > now


def rules(
    saved_by: Mapping[str, str],
    current: Environment,
    *,
    keras_version: str | None = None,
    backend: str | None = None,
    savedmodel_ops: Iterable[str] | None = None,
) -> Iterator[Result]:
    """The file's maker against ``current``. ``keras_version`` and ``backend`` are what Keras
    itself reports here when it was imported (else the captured environment's);
    ``savedmodel_ops`` are the op names of a SavedModel's graph (``None``: not a SavedModel
    with a readable graph)."""
    keras = current.keras
    here_version = keras_version or (keras.version if keras else None)
    here_backend = backend or (keras.backend if keras else None)
    saved_version = saved_by.get("keras_version")
    saved_major, here_major = _major(saved_version), _major(here_version)
    if saved_major is not None and here_major is not None and saved_major != here_major:
        tf_keras = current.distributions.get("tf-keras")
        yield Result(
            "saved_by.keras_version",
            saved_version,
            f"keras {here_version}",
            RISK,
            f"written by Keras {saved_major}, loading under Keras {here_major}",
            "Keras 3 reads Keras 2 .h5 files only in part, Keras 2 .keras files not at all",
            f"tf-keras {tf_keras} is installed: kbundle loads with it what Keras 3 cannot"
            if tf_keras and saved_major == 2
            else KERAS2_FIX
            if saved_major == 2
            else f"install keras>={saved_version}",
        )
    elif saved_major is not None and newer_version(saved_version, here_version):
        yield Result(
            "saved_by.keras_version",
            saved_version,
            f"keras {here_version}",
            RISK,
            "written by a newer Keras",
            "an older Keras may not know classes or arguments added since",
            f"upgrade keras to {saved_version} or later",
        )
    saved_backend = saved_by.get("backend")
    if saved_backend and here_backend and saved_backend != here_backend:
        yield Result(
            "saved_by.backend",
            saved_backend,
            here_backend,
            RISK,
            "written under another Keras backend",
            "weights load across backends; code calling backend ops runs only on its own",
            f"set KERAS_BACKEND={saved_backend}",
        )
    if savedmodel_ops is not None:
        yield from _graph_rules(saved_by, current, here_backend, set(savedmodel_ops))


def _graph_rules(
    saved_by: Mapping[str, str], current: Environment, backend: str | None, ops: set[str]
) -> Iterator[Result]:
    tf = current.tensorflow
    if tf is None:
        yield Result(
            "tensorflow.version",
            saved_by.get("tensorflow_version"),
            "not installed",
            CERTAIN,
            "TensorFlow is not installed; a SavedModel needs it",
            fix="install tensorflow (or tensorflow-cpu)",
        )
        return
    if backend and backend != "tensorflow":
        yield Result(
            "keras.backend",
            "tensorflow",
            backend,
            CERTAIN,
            "a SavedModel loads only with the TensorFlow backend",
            fix="set KERAS_BACKEND=tensorflow",
        )
    saved = saved_by.get("tensorflow_version")
    if saved and newer_version(saved, tf.version):
        yield Result(
            "saved_by.tensorflow_version",
            saved,
            f"{tf.distribution} {tf.version}",
            RISK,
            "written by a newer TensorFlow",
            "ops added since this TensorFlow are unknown to it ('Op type not registered')",
            f"install TensorFlow {saved} or later",
        )
    gpu_ops = sorted(ops & GPU_ONLY_OPS)
    if gpu_ops and (not tf.build_info.get("is_cuda_build") or not current.gpus):
        yield Result(
            "tensorflow.ops",
            "a CUDA build of TensorFlow with a GPU",
            f"{tf.distribution} {tf.version} "
            f"(CUDA build: {bool(tf.build_info.get('is_cuda_build'))}, "
            f"GPUs: {len(current.gpus)})",
            RISK,
            f"the graph uses GPU-only ops: {', '.join(gpu_ops)}",
            "these ops have only GPU kernels: calling the model fails with 'No OpKernel' unless "
            "the graph keeps a CPU twin (Keras LSTM/GRU layers do)",
            "run it where there is a GPU and a CUDA build, or re-export it on a CPU build",
        )
