"""Model files as found on disk: which format a path is, and what it says about itself.

Reading here never imports Keras or TensorFlow and never runs code from the file: a
``.keras`` archive's ``config.json`` and ``metadata.json`` are read as JSON. Stable: internal.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

from kbundle.errors import UsageError
from kbundle.manifest import TensorSpec

__all__ = ["MODEL_FILE_NAMES", "describe_model_file", "identify_format", "read_model_config"]

# Where each format lives inside a bundle's model/ area.
MODEL_FILE_NAMES = {
    "keras": "model.keras",
    "keras-dir": "model.keras",
    "h5": "model.h5",
    "savedmodel": "saved_model",
}


def identify_format(path: Path) -> str:
    """``keras``, ``keras-dir``, ``h5`` or ``savedmodel``; a clear error for anything else."""
    if path.is_dir():
        if (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file():
            return "savedmodel"
        if (path / "config.json").is_file():
            return "keras-dir"
        raise UsageError(
            f"{path} is a directory but neither a SavedModel (no saved_model.pb) nor a .keras "
            "directory (no config.json)",
            hint="pass a .keras or .h5 file, or a SavedModel directory",
        )
    if not path.exists():
        raise UsageError(f"{path} does not exist", hint="check the model path")
    with path.open("rb") as handle:
        magic = handle.read(8)
    if magic.startswith(b"PK\x03\x04"):
        return "keras"
    if magic == b"\x89HDF\r\n\x1a\n":
        return "h5"
    raise UsageError(
        f"{path} is not a Keras model file (starts with {magic[:4].hex() or 'nothing'})",
        hint="pass a .keras or .h5 file, or a SavedModel directory; "
        "'kbundle doctor' diagnoses damaged files",
    )


def describe_model_file(path: Path, fmt: str) -> dict[str, Any]:
    """What the file says about the model: class, name, inputs and its maker (``saved_by``)."""
    if fmt != "keras":
        return {}
    try:
        with zipfile.ZipFile(path) as archive:
            config = _json_member(archive, "config.json")
            meta = _json_member(archive, "metadata.json")
    except (zipfile.BadZipFile, OSError):
        return {}
    description: dict[str, Any] = {"saved_by": {str(k): str(v) for k, v in meta.items()}}
    if config:
        description["class_name"] = config.get("class_name")
        inner = config.get("config") if isinstance(config.get("config"), dict) else {}
        description["name"] = inner.get("name")
        description["inputs"] = _config_inputs(inner)
    return description


def _json_member(archive: zipfile.ZipFile, name: str) -> dict[str, Any]:
    try:
        with archive.open(name) as handle:
            data = json.loads(handle.read(16 * 1024 * 1024))
    except (KeyError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _config_inputs(config: dict[str, Any]) -> list[TensorSpec] | None:
    specs = []
    for layer in config.get("layers") or []:
        if isinstance(layer, dict) and layer.get("class_name") == "InputLayer":
            inner = layer.get("config") or {}
            shape = inner.get("batch_shape") or inner.get("batch_input_shape")
            specs.append(
                TensorSpec(
                    name=inner.get("name"),
                    shape=list(shape) if isinstance(shape, list) else None,
                    dtype=inner.get("dtype") if isinstance(inner.get("dtype"), str) else None,
                )
            )
    return specs or None


def read_model_config(path: Path, fmt: str) -> dict[str, Any]:
    """The model's Keras config as saved, read as JSON (``{}`` when the format has none).

    ``.keras`` files and directories keep it in ``config.json``; ``.h5`` files in the root's
    ``model_config`` attribute. A SavedModel keeps traced graphs, not a Keras config.
    """
    if fmt == "keras":
        try:
            with zipfile.ZipFile(path) as archive:
                return _json_member(archive, "config.json")
        except (zipfile.BadZipFile, OSError):
            return {}
    if fmt == "keras-dir":
        try:
            data = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}
    if fmt == "h5":
        try:
            import h5py  # noqa: PLC0415 - only when packing an .h5 file

            with h5py.File(path, "r") as handle:
                raw = handle.attrs.get("model_config")
        except (ImportError, OSError):
            return {}
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", "replace")
        try:
            data = json.loads(raw) if isinstance(raw, str) else None
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}
    return {}
