"""Two model files side by side: how their architectures differ (from the configs) and which
weights differ (dataset by dataset in their HDF5 weights).

The architecture is read from each file's Keras config as JSON (kbundle.models.formats):
nothing is imported, resolved or constructed. Weights are read through h5py from files the
caller has already checked (kbundle.models.checks: no external links, virtual datasets or
shape bombs), in blocks of at most ``BLOCK_BYTES`` per side, so memory stays bounded
whatever the model's size. Stable: internal.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kbundle.models.formats import KERAS_WEIGHTS_NAME, import_h5py, open_keras_member

__all__ = [
    "BLOCK_BYTES",
    "ConfigChange",
    "DatasetChange",
    "architecture_changes",
    "dataset_changes",
    "zip_entry_changes",
]

# Per side, the most of one dataset held in memory at once while comparing: a few blocks of
# this size are cheap next to the model Keras itself holds, and large enough that reading is
# not dominated by per-call overhead.
BLOCK_BYTES = 16 * 1024 * 1024
# Values longer than this are cut in a change's before/after text (--json keeps them too).
_VALUE_WIDTH = 80
# Config keys that are bookkeeping rather than architecture: where Keras found a layer's
# class (moves between Keras versions) and a config's format marker.
_IGNORED_KEYS = frozenset({"module", "registered_name"})
# dtype kinds compared value by value: numbers, booleans, fixed-size bytes.
_NUMERIC_KINDS = "fiuc"
_BYTES_KINDS = "bSV"


@dataclass(frozen=True, kw_only=True, slots=True)
class ConfigChange:
    """One difference between two model configs: a layer added or removed, or one value of
    the config (``layers.dense_1.config.units``) changed."""

    kind: str  # "added", "removed" or "changed"
    location: str
    before: str | None = None
    after: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class DatasetChange:
    """One weight dataset that differs: added, removed, reshaped, or changed in value
    (``differing`` of ``total`` values, the largest absolute difference ``max_abs``)."""

    kind: str
    name: str
    before: str | None = None
    after: str | None = None
    differing: int | None = None
    total: int | None = None
    max_abs: float | None = None


# --------------------------------------------------------------------------------------------
# Architecture


def _text(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False)
    return text if len(text) <= _VALUE_WIDTH else text[: _VALUE_WIDTH - 3] + "..."


def _value_changes(before: Any, after: Any, prefix: str) -> list[ConfigChange]:
    """Where two JSON values differ: a key or item only one side has is one change (its
    whole value), a value both have is compared inside; iterative, as configs nest deeply."""
    changes = []
    stack: list[tuple[str, Any, Any]] = [(prefix, before, after)]
    while stack:
        location, old, new = stack.pop()
        if isinstance(old, dict) and isinstance(new, dict):
            children = []
            for key in sorted(old.keys() | new.keys(), key=str):
                if key in _IGNORED_KEYS:
                    continue
                where = f"{location}.{key}"
                if key not in new:
                    changes.append(
                        ConfigChange(kind="removed", location=where, before=_text(old[key]))
                    )
                elif key not in old:
                    changes.append(
                        ConfigChange(kind="added", location=where, after=_text(new[key]))
                    )
                else:
                    children.append((where, old[key], new[key]))
            stack.extend(reversed(children))
        elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
            pairs = list(enumerate(zip(old, new, strict=True)))
            stack.extend((f"{location}[{i}]", a, b) for i, (a, b) in reversed(pairs))
        elif old != new:
            changes.append(
                ConfigChange(kind="changed", location=location, before=_text(old), after=_text(new))
            )
    return changes


def _layers(config: dict[str, Any]) -> dict[str, dict[str, Any]] | None:
    """A functional or sequential config's layers by name, in order; None without a list."""
    inner = config.get("config")
    layers = inner.get("layers") if isinstance(inner, dict) else None
    if not isinstance(layers, list):
        return None
    named: dict[str, dict[str, Any]] = {}
    for index, layer in enumerate(layers):
        if not isinstance(layer, dict):
            continue
        layer_config = layer.get("config")
        name = layer_config.get("name") if isinstance(layer_config, dict) else None
        named[name if isinstance(name, str) else f"#{index}"] = layer
    return named


def architecture_changes(
    before: dict[str, Any] | None, after: dict[str, Any] | None
) -> list[ConfigChange]:
    """What differs between two Keras model configs: layers added and removed (by name), then
    each changed value of the layers both have and of the model's own config."""
    if before is None or after is None:
        if before is after:
            return []
        return [
            ConfigChange(
                kind="changed",
                location="config",
                before="present" if before is not None else "none recorded",
                after="present" if after is not None else "none recorded",
            )
        ]
    old_layers, new_layers = _layers(before), _layers(after)
    if old_layers is None or new_layers is None:
        return _value_changes(before, after, "model")
    changes = [
        ConfigChange(kind="removed", location=f"layers.{name}", before=_layer_summary(layer))
        for name, layer in old_layers.items()
        if name not in new_layers
    ]
    changes += [
        ConfigChange(kind="added", location=f"layers.{name}", after=_layer_summary(layer))
        for name, layer in new_layers.items()
        if name not in old_layers
    ]
    common = [name for name in new_layers if name in old_layers]
    if [n for n in old_layers if n in new_layers] != common:
        changes.append(
            ConfigChange(
                kind="changed",
                location="layers (order)",
                before=_text([n for n in old_layers if n in new_layers]),
                after=_text(common),
            )
        )
    for name in common:
        changes += _value_changes(old_layers[name], new_layers[name], f"layers.{name}")
    model_before = {**before, "config": _without_layers(before.get("config"))}
    model_after = {**after, "config": _without_layers(after.get("config"))}
    changes += _value_changes(model_before, model_after, "model")
    return changes


def _layer_summary(layer: dict[str, Any]) -> str:
    config = layer.get("config") if isinstance(layer.get("config"), dict) else {}
    units = {k: v for k, v in (config or {}).items() if k in ("units", "filters", "activation")}
    return f"{layer.get('class_name', '?')}" + (f" {_text(units)}" if units else "")


def _without_layers(config: Any) -> Any:
    if not isinstance(config, dict):
        return config
    return {key: value for key, value in config.items() if key != "layers"}


# --------------------------------------------------------------------------------------------
# Weights


@contextmanager
def _weights(path: Path, fmt: str, h5py: Any) -> Iterator[Any]:
    """The model's HDF5 weights opened read-only (None for a format without them)."""
    if fmt == "h5":
        with h5py.File(path, "r") as handle:
            yield handle
        return
    if fmt not in ("keras", "keras-dir"):
        yield None
        return
    with open_keras_member(path, fmt, KERAS_WEIGHTS_NAME) as member:
        if member is None:
            yield None
            return
        with h5py.File(member, "r") as handle:
            yield handle


def _datasets(handle: Any, h5py: Any) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def record(name: str, item: Any) -> None:
        if isinstance(item, h5py.Dataset):
            found[name] = item

    handle.visititems(record)
    return found


def _shape_text(dataset: Any) -> str:
    return f"{tuple(dataset.shape)} {dataset.dtype}"


def dataset_changes(
    before: Path, before_format: str, after: Path, after_format: str
) -> list[DatasetChange] | None:
    """Every weight dataset that differs between two checked model files, by HDF5 path;
    None when either has no HDF5 weights to compare (a SavedModel) or h5py is missing."""
    h5py = import_h5py()
    if h5py is None:
        return None
    with (
        _weights(before, before_format, h5py) as old_file,
        _weights(after, after_format, h5py) as new_file,
    ):
        if old_file is None or new_file is None:
            return None
        old, new = _datasets(old_file, h5py), _datasets(new_file, h5py)
        changes = [
            DatasetChange(kind="removed", name=name, before=_shape_text(old[name]))
            for name in sorted(old.keys() - new.keys())
        ]
        changes += [
            DatasetChange(kind="added", name=name, after=_shape_text(new[name]))
            for name in sorted(new.keys() - old.keys())
        ]
        for name in sorted(old.keys() & new.keys()):
            change = _compare_dataset(name, old[name], new[name])
            if change is not None:
                changes.append(change)
    return sorted(changes, key=lambda change: change.name)


def _compare_dataset(name: str, old: Any, new: Any) -> DatasetChange | None:
    before, after = _shape_text(old), _shape_text(new)
    if old.shape != new.shape or old.dtype != new.dtype:
        return DatasetChange(kind="changed", name=name, before=before, after=after)
    kind = old.dtype.kind
    if kind not in _NUMERIC_KINDS + _BYTES_KINDS:
        return None  # variable-length or object data: not compared value by value
    import numpy  # h5py's own dependency

    differing, total, largest = 0, 0, None
    for old_block, new_block in zip(_blocks(old), _blocks(new), strict=True):
        unequal = numpy.asarray(old_block != new_block)
        if kind in "fc":  # NaN == NaN here: a weight that stayed NaN did not change
            unequal &= ~(numpy.isnan(old_block) & numpy.isnan(new_block))
        count = int(unequal.sum())
        total += int(numpy.size(old_block))
        if count:
            differing += count
            if kind in _NUMERIC_KINDS:  # in float64 or complex128: unsigned ints would wrap
                wide = "c16" if kind == "c" else "f8"
                gaps = numpy.abs(
                    numpy.asarray(new_block, dtype=wide)[unequal]
                    - numpy.asarray(old_block, dtype=wide)[unequal]
                )
                largest = max(float(gaps.max()), largest or 0.0)
    if not differing:
        return None
    return DatasetChange(
        kind="changed",
        name=name,
        before=before,
        after=after,
        differing=differing,
        total=total,
        max_abs=largest,
    )


def _blocks(dataset: Any) -> Iterator[Any]:
    """The dataset's values in blocks of whole rows (first axis), each at most
    ``BLOCK_BYTES`` unless a single row is larger."""
    if not dataset.shape:
        yield dataset[()]
        return
    rows = dataset.shape[0]
    row_bytes = max(1, dataset.dtype.itemsize * (dataset.size // rows if rows else 0))
    step = max(1, BLOCK_BYTES // row_bytes)
    for start in range(0, rows, step):
        yield dataset[start : start + step]


def zip_entry_changes(before: Path, after: Path) -> list[str]:
    """The entries of two checked ``.keras`` zips that differ (by CRC-32 and size, from the
    central directories), or that only one has; sorted."""

    def entries(path: Path) -> dict[str, tuple[int, int]]:
        with zipfile.ZipFile(path) as archive:
            return {info.filename: (info.CRC, info.file_size) for info in archive.infolist()}

    old, new = entries(before), entries(after)
    return sorted(name for name in old.keys() | new.keys() if old.get(name) != new.get(name))
