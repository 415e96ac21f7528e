"""Model files as found on disk: which format a path is, and what it says about itself.

Four formats: a Keras 3 ``.keras`` zip (``keras``), the same layout unzipped into a directory
(``keras-dir``, what ``keras.saving.save_model(..., zipped=False)`` writes), a legacy HDF5
``.h5`` file written by Keras 2, tf-keras or Keras 3 (``h5``), and a TensorFlow SavedModel
directory (``savedmodel``, written by ``tf.saved_model.save`` or ``model.export``).

Reading here never imports Keras or TensorFlow and never runs code from the file: JSON is read
as JSON, HDF5 attributes through h5py (imported lazily; kbundle works without it), and
``saved_model.pb`` through a schema-less protobuf reader. Descriptions are best effort: what
cannot be read is left out, never guessed. Whether a file is *safe* to read is decided by
:mod:`kbundle.models.checks`, which callers run first. Stable: internal.
"""

from __future__ import annotations

import json
import math
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from kbundle.container.manifest import TensorSpec
from kbundle.errors import UsageError
from kbundle.models.protowire import WireError, messages, read_fields, strings, varints
from kbundle.models.zipmember import open_zip_member

__all__ = [
    "CONTENT_SNIFF_BYTES",
    "HDF5_SIGNATURE",
    "KERAS_CONFIG_NAME",
    "KERAS_METADATA_NAME",
    "KERAS_WEIGHTS_NAME",
    "LFS_POINTER_START",
    "MAX_CONFIG_BYTES",
    "MODEL_FILE_NAMES",
    "SERVING_ENDPOINTS",
    "ZIP_SIGNATURE",
    "SavedModelInfo",
    "describe_model_file",
    "identify_format",
    "import_h5py",
    "keras_major",
    "open_keras_member",
    "other_content",
    "read_model_config",
    "read_saved_model",
    "saved_model_file",
    "serving_endpoint",
]

# Where each format lives inside a bundle's model/ area. The directory form must not end in
# ".keras": Keras opens any path ending so as a zip (and refuses to save a directory so named).
MODEL_FILE_NAMES = {
    "keras": "model.keras",
    "keras-dir": "keras_model",
    "h5": "model.h5",
    "savedmodel": "saved_model",
}

ZIP_SIGNATURE = b"PK\x03\x04"
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# The members of a Keras 3 archive (zip or directory form).
KERAS_CONFIG_NAME = "config.json"
KERAS_METADATA_NAME = "metadata.json"
KERAS_WEIGHTS_NAME = "model.weights.h5"
# A model's config.json is a few hundred KiB even for very large models; reading more than
# this into memory for a description is never needed.
MAX_CONFIG_BYTES = 64 * 1024 * 1024
# Keras 2 SavedModels carry the Keras config in this side file (a SavedMetadata proto).
KERAS_METADATA_PB = "keras_metadata.pb"
# SignatureDef keys TensorFlow adds for itself, not callable endpoints.
_INTERNAL_SIGNATURES = ("__saved_model_init_op",)
# TensorFlow's DataType enum (types.proto), the values models use.
_TF_DTYPES = {
    1: "float32",
    2: "float64",
    3: "int32",
    4: "uint8",
    5: "int16",
    6: "int8",
    7: "string",
    8: "complex64",
    9: "int64",
    10: "bool",
    14: "bfloat16",
    17: "uint16",
    18: "complex128",
    19: "float16",
    22: "uint32",
    23: "uint64",
}


def identify_format(path: Path) -> str:
    """``keras``, ``keras-dir``, ``h5`` or ``savedmodel``; a clear error for anything else."""
    if path.is_dir():
        if saved_model_file(path) is not None:
            return "savedmodel"
        if (path / KERAS_CONFIG_NAME).is_file():
            return "keras-dir"
        raise UsageError(
            f"{path} is a directory but neither a SavedModel (no saved_model.pb) nor a .keras "
            "directory (no config.json)",
            hint="pass a .keras or .h5 file, or a SavedModel directory",
        )
    if not path.exists():
        raise UsageError(f"{path} does not exist", hint="check the model path")
    with path.open("rb") as handle:
        head = handle.read(CONTENT_SNIFF_BYTES)
    magic = head[:8]
    if magic.startswith(ZIP_SIGNATURE):
        return "keras"
    if magic == HDF5_SIGNATURE:
        return "h5"
    if magic.startswith(b"\x28\xb5\x2f\xfd"):  # a zstd frame: most likely a bundle already
        raise UsageError(
            f"{path} is a zstd file (a kbundle bundle?), not a Keras model",
            hint="pack the model file itself; 'kbundle inspect' shows what a bundle holds",
        )
    other = other_content(head, path.stat().st_size)
    if other is not None:
        raise UsageError(f"{path} {other[0]}", hint=other[1])
    raise UsageError(
        f"{path} is not a Keras model file (starts with {magic[:4].hex() or 'nothing'})",
        hint="pass a .keras or .h5 file, or a SavedModel directory; "
        "'kbundle doctor' diagnoses damaged files",
    )


# A Git LFS pointer file: what a clone without ``git lfs`` holds instead of the large file.
LFS_POINTER_START = b"version https://git-lfs."
# How much of a file's start is enough to tell what it is instead of a model.
CONTENT_SNIFF_BYTES = 512


def other_content(head: bytes, size: int) -> tuple[str, str] | None:
    """What a file that is not a model file is instead, from its size and first bytes
    (``head``, at least :data:`CONTENT_SNIFF_BYTES` of them when the file is that long):
    ``(what it is, what to do)`` for an empty file, a Git LFS pointer or a text file;
    ``None`` when it looks like none of them (binary data of some other kind)."""
    if size == 0:
        return (
            "is empty (0 bytes)",
            "the save or copy wrote nothing; copy the file again or save the model again",
        )
    if head.startswith(LFS_POINTER_START):
        return (
            "is a Git LFS pointer, not the model: the repository holds the model's bytes in "
            "Git LFS and they were never fetched",
            "run 'git lfs pull' in the repository (or download the file itself, not its pointer)",
        )
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        text = head[: exc.start].decode("utf-8") if exc.start > len(head) - 4 else ""
    if text and all(c.isprintable() or c in "\t\r\n" for c in text):
        first = " ".join(text.split())[:60]
        return (
            f"is text, not a model (it starts: {first!r})",
            "this is not a model file: find the model file it stands for (a download that saved "
            "an error page, or a note about the model)",
        )
    return None


def saved_model_file(directory: Path) -> Path | None:
    """The ``saved_model.pb`` (or ``.pbtxt``) of a SavedModel directory, if there is one."""
    for name in ("saved_model.pb", "saved_model.pbtxt"):
        if (directory / name).is_file():
            return directory / name
    return None


def keras_major(saved_by: dict[str, str]) -> int | None:
    """The Keras major version a file says wrote it (``keras_version``), if it says."""
    head = saved_by.get("keras_version", "").split(".")[0]
    return int(head) if head.isdigit() else None


# --------------------------------------------------------------------------------------------
# Describing


def describe_model_file(
    path: Path, fmt: str, *, h5_objects: Mapping[str, int | None] | None = None
) -> dict[str, Any]:
    """What the file says about the model: class, name, inputs, parameters, maker (``saved_by``).

    Keys are :class:`~kbundle.container.manifest.ModelInfo` fields; absent ones were not recorded.
    ``h5_objects`` is the file's HDF5 objects as the pre-load checks walked them
    (:data:`kbundle.models.checks.H5Objects`); without it the weights are opened to count them.
    """
    try:
        if fmt == "savedmodel":
            return _describe_saved_model(path)
        description: dict[str, Any] = {}
        config = read_model_config(path, fmt)
        if config:
            description.update(_describe_config(config))
        description["saved_by"] = model_saved_by(path, fmt)
        if fmt in ("keras", "keras-dir", "h5"):
            objects = _h5_objects(path, fmt) if h5_objects is None else h5_objects
            # Keras 3 keeps optimizer state beside the weights in the same file; Keras 2 .h5
            # files keep the weights under /model_weights. Neither place holds anything else.
            if fmt == "h5":
                description["parameter_count"] = _parameter_count(objects, "/model_weights")
            else:
                description["parameter_count"] = _parameter_count(objects, "/", skip="optimizer")
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return {}
    return {key: value for key, value in description.items() if value is not None}


def model_saved_by(path: Path, fmt: str) -> dict[str, str]:
    """Who saved the file, as it records it: ``keras_version`` and, where kept, ``backend``."""
    try:
        if fmt in ("keras", "keras-dir"):
            return _keras_metadata(path, fmt)
        if fmt == "h5":
            attributes = _h5_root_attributes(path)
            return {k: attributes[k] for k in ("keras_version", "backend") if k in attributes}
        if fmt == "savedmodel":
            return dict(_describe_saved_model(path).get("saved_by") or {})
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        pass
    return {}


def _describe_config(config: dict[str, Any]) -> dict[str, Any]:
    inner = config.get("config")
    if not isinstance(inner, dict):
        inner = {}
    return {
        "class_name": config.get("class_name")
        if isinstance(config.get("class_name"), str)
        else None,
        "name": inner.get("name") if isinstance(inner.get("name"), str) else None,
        "inputs": _config_inputs(inner),
        "outputs": _config_outputs(config.get("class_name"), inner),
    }


def _config_inputs(config: dict[str, Any]) -> list[TensorSpec] | None:
    specs = []
    layers = [layer for layer in config.get("layers") or [] if isinstance(layer, dict)]
    for layer in layers:
        if layer.get("class_name") == "InputLayer":
            specs.append(_input_spec(layer.get("config") or {}))
    if not specs and layers:
        # A Keras 2 Sequential built without an Input records the shape on its first layer.
        first = layers[0].get("config") or {}
        if isinstance(first, dict) and isinstance(first.get("batch_input_shape"), list):
            specs.append(_input_spec({**first, "name": None}))
    return specs or None


def _config_outputs(class_name: Any, config: dict[str, Any]) -> list[TensorSpec] | None:
    """Output names from the config; their shapes are known only to a built model."""
    layers = [layer for layer in config.get("layers") or [] if isinstance(layer, dict)]
    if class_name == "Sequential" and layers:
        names = [(layers[-1].get("config") or {}).get("name")]
    else:
        # Functional: [layer_name, node_index, tensor_index] per output, or one such triple
        # unwrapped when there is a single output (Keras 3).
        entries = config.get("output_layers") or []
        if isinstance(entries, list) and entries and isinstance(entries[0], str):
            entries = [entries]
        names = [entry[0] for entry in entries if isinstance(entry, list) and entry]
    if not names or not all(isinstance(name, str) for name in names):
        return None
    return [TensorSpec(name=name, shape=None, dtype=None) for name in names]


def _input_spec(config: dict[str, Any]) -> TensorSpec:
    shape = config.get("batch_shape") or config.get("batch_input_shape")
    name = config.get("name")
    dtype = config.get("dtype")
    return TensorSpec(
        name=name if isinstance(name, str) else None,
        shape=list(shape) if isinstance(shape, list) else None,
        dtype=dtype if isinstance(dtype, str) else None,
    )


def read_model_config(path: Path, fmt: str) -> dict[str, Any] | None:
    """The model's Keras config as recorded in the file, or ``None`` when there is none.

    ``.keras`` (both forms): ``config.json``; ``.h5``: the root ``model_config`` attribute;
    SavedModel: the root node of ``keras_metadata.pb`` (Keras 2 SavedModels only).
    """
    if fmt in ("keras", "keras-dir"):
        with open_keras_member(path, fmt, KERAS_CONFIG_NAME) as handle:
            return _json_object(handle.read(MAX_CONFIG_BYTES + 1)) if handle else None
    if fmt == "h5":
        return _json_object(_h5_root_attributes(path).get("model_config", ""))
    if fmt == "savedmodel":
        return _keras_metadata_pb(path).get("config_root")
    return None


def _json_object(data: str | bytes) -> dict[str, Any] | None:
    if not data or len(data) > MAX_CONFIG_BYTES:
        return None
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


@contextmanager
def open_keras_member(path: Path, fmt: str, name: str) -> Iterator[IO[bytes] | None]:
    """A member of a ``.keras`` archive or directory opened for reading, or ``None`` if absent."""
    if fmt == "keras-dir":
        member = path / name
        if not member.is_file():
            yield None
            return
        with member.open("rb") as file:
            yield file
        return
    with zipfile.ZipFile(path) as archive:
        try:
            info = archive.getinfo(name)
        except KeyError:
            yield None
            return
        with open_zip_member(archive, info) as entry:
            yield entry


def _keras_metadata(path: Path, fmt: str) -> dict[str, str]:
    with open_keras_member(path, fmt, KERAS_METADATA_NAME) as handle:
        meta = _json_object(handle.read(MAX_CONFIG_BYTES + 1)) if handle else None
    return {str(k): str(v) for k, v in (meta or {}).items()}


def _h5_objects(path: Path, fmt: str) -> dict[str, int | None]:
    """Every HDF5 object of the model's weights reached through hard links, by path: a
    dataset's number of elements, None for a group (as kbundle.models.checks walks them)."""
    h5py = import_h5py()
    if h5py is None:
        return {}
    if fmt == "h5":
        return _h5_census(h5py, path)
    with open_keras_member(path, fmt, KERAS_WEIGHTS_NAME) as handle:
        return _h5_census(h5py, handle) if handle else {}


def _h5_census(h5py: Any, source: Path | IO[bytes]) -> dict[str, int | None]:
    objects: dict[str, int | None] = {"/": None}

    def record(name: str, item: Any) -> None:
        is_dataset = isinstance(item, h5py.Dataset)
        objects[f"/{name}"] = math.prod(item.shape or ()) if is_dataset else None

    with h5py.File(source, "r") as handle:
        handle.visititems(record)
    return objects


def _parameter_count(
    objects: Mapping[str, int | None], root: str, *, skip: str | None = None
) -> int | None:
    """Elements in every dataset under the group ``root`` (but not under its child ``skip``);
    None when there is no such group."""
    if root not in objects:
        return None
    prefix = root.rstrip("/") + "/"
    skipped = f"{prefix}{skip}" if skip else None
    return sum(
        count
        for path, count in objects.items()
        if count is not None
        and path.startswith(prefix)
        and not (skipped and (path == skipped or path.startswith(skipped + "/")))
    )


# --------------------------------------------------------------------------------------------
# HDF5 (h5py is optional: without it, HDF5 files are described from nothing but their name)


def import_h5py() -> Any:
    """The ``h5py`` module, or None when it is not installed."""
    try:
        import h5py
    except ImportError:
        return None
    return h5py


def _h5_root_attributes(path: Path) -> dict[str, str]:
    h5py = import_h5py()
    if h5py is None:
        return {}
    result = {}
    with h5py.File(path, "r") as handle:
        for key in ("keras_version", "backend", "model_config"):
            if key in handle.attrs:
                value = handle.attrs[key]
                result[key] = (
                    value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
                )
    return result


# --------------------------------------------------------------------------------------------
# SavedModel


@dataclass(frozen=True, kw_only=True, slots=True)
class SavedModelInfo:
    """What ``saved_model.pb`` records, read without TensorFlow (first MetaGraph).

    ``signatures`` maps each callable signature to its (inputs, outputs); ``ops`` lists every
    op type the graph and its functions use (TensorFlow's stripped op list).
    """

    tensorflow_version: str | None = None
    tensorflow_git_version: str | None = None
    tags: list[str] = field(default_factory=list)
    ops: list[str] = field(default_factory=list)
    signatures: dict[str, tuple[list[TensorSpec], list[TensorSpec]]] = field(default_factory=dict)


def read_saved_model(directory: Path) -> SavedModelInfo:
    """Parse ``saved_model.pb``; raises :class:`~kbundle.models.protowire.WireError` when
    malformed."""
    pb = directory / "saved_model.pb"
    if not pb.is_file() or pb.stat().st_size == 0:
        return SavedModelInfo()
    # TensorFlow itself reads the whole file into memory (protobuf caps it at 2 GiB).
    return _saved_model_info(memoryview(pb.read_bytes()))


def _saved_model_info(data: memoryview) -> SavedModelInfo:
    # SavedModel{meta_graphs=2}; MetaGraphDef{meta_info_def=1, signature_def=5};
    # MetaInfoDef{stripped_op_list=2, tags=4, tensorflow_version=5, tensorflow_git_version=6}.
    for _field in read_fields(data):  # walk the top level once so a cut-off file is noticed
        pass
    meta_graph = next(messages(data, 2), None)
    if meta_graph is None:
        return SavedModelInfo()
    meta_info = next(messages(meta_graph, 1), memoryview(b""))
    ops = sorted(
        {
            name
            for op_list in messages(meta_info, 2)
            for op in messages(op_list, 1)
            for name in strings(op, 1)
        }
    )
    signatures = {}
    for entry in messages(meta_graph, 5):
        key = next(strings(entry, 1), "")
        value = next(messages(entry, 2), memoryview(b""))
        if key and key not in _INTERNAL_SIGNATURES:
            signatures[key] = (_tensor_specs(value, 1), _tensor_specs(value, 2))
    return SavedModelInfo(
        tensorflow_version=next(strings(meta_info, 5), None),
        tensorflow_git_version=next(strings(meta_info, 6), None),
        tags=list(strings(meta_info, 4)),
        ops=ops,
        signatures=dict(sorted(signatures.items())),
    )


def _tensor_specs(signature: memoryview, number: int) -> list[TensorSpec]:
    # SignatureDef{inputs=1, outputs=2: map<string, TensorInfo{dtype=2, tensor_shape=3}>};
    # TensorShapeProto{dim=2: Dim{size=1}, unknown_rank=3}.
    specs = []
    for entry in messages(signature, number):
        name = next(strings(entry, 1), None)
        info = next(messages(entry, 2), memoryview(b""))
        dtype = next(varints(info, 2), None)
        shape_proto = next(messages(info, 3), None)
        shape: list[int | None] | None = None
        if shape_proto is not None and not any(f.value for f in varints(shape_proto, 3)):
            shape = []
            for dim in messages(shape_proto, 2):
                size = next(varints(dim, 1), None)
                shape.append(None if size is None or size.signed < 0 else size.signed)
        specs.append(
            TensorSpec(
                name=name, shape=shape, dtype=_TF_DTYPES.get(int(dtype.value)) if dtype else None
            )
        )
    return specs


def _keras_metadata_pb(directory: Path) -> dict[str, Any]:
    """Keras 2's ``keras_metadata.pb``: the root node's JSON (class, config, keras_version)."""
    path = directory / KERAS_METADATA_PB
    if not path.is_file() or path.stat().st_size > MAX_CONFIG_BYTES:
        return {}
    data = path.read_bytes()
    # SavedMetadata{nodes=1: SavedObject{node_path=3, metadata=5}}
    for node in messages(data, 1):
        if next(strings(node, 3), None) == "root":
            root = _json_object(next(strings(node, 5), "")) or {}
            config = {"class_name": root.get("class_name"), "config": root.get("config")}
            return {"root": root, "config_root": config if root.get("class_name") else None}
    return {}


def _describe_saved_model(directory: Path) -> dict[str, Any]:
    info = read_saved_model(directory)
    saved_by = {
        key: value
        for key, value in (
            ("tensorflow_version", info.tensorflow_version),
            ("tensorflow_git_version", info.tensorflow_git_version),
        )
        if value
    }
    description: dict[str, Any] = {"saved_by": saved_by}
    try:
        keras_root = _keras_metadata_pb(directory).get("root") or {}
    except WireError:
        keras_root = {}
    for key in ("keras_version", "backend"):
        if isinstance(keras_root.get(key), str):
            saved_by[key] = keras_root[key]
    if isinstance(keras_root.get("class_name"), str):
        description["class_name"] = keras_root["class_name"]
        description["name"] = (
            keras_root.get("name") if isinstance(keras_root.get("name"), str) else None
        )
    endpoint = serving_endpoint(info)
    if endpoint is not None:
        description["inputs"], description["outputs"] = info.signatures[endpoint]
    return description


# model.export names its endpoint "serve" (returning tensors, not a dict); tf.saved_model.save
# and tf-keras name theirs "serving_default".
SERVING_ENDPOINTS = ("serve", "serving_default")


def serving_endpoint(info: SavedModelInfo) -> str | None:
    """The signature ``kbundle.load`` calls: ``serve``, ``serving_default``, else the only one."""
    for name in SERVING_ENDPOINTS:
        if name in info.signatures:
            return name
    return next(iter(info.signatures)) if len(info.signatures) == 1 else None
