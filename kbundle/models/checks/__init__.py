"""Pre-load checks: is a model file intact, and safe to hand to Keras?

Run before Keras or TensorFlow sees a file — by ``pack`` on what it is given, and by the load
path on what a bundle carried (its checksums prove the bytes are the packed ones, not that the
packed ones are harmless). Every problem is collected as a :class:`~kbundle.findings.Finding`
with its evidence; nothing here imports Keras or TensorFlow or runs code from the file.

Per format:

* ``.keras`` zip: the archive structure (a truncated archive is walked header by header to
  say where it ends), member names (traversal, duplicates), member count, declared expansion
  per member and in total, encryption, the CRC-32 of *every* member (Python's ``zipfile``
  checks a CRC only when a member is read to its end, so each is read to its end here), the
  JSON members, and the HDF5 weights inside.
* ``.h5`` (and the weights of a ``.keras`` file or directory): the HDF5 signature, the file
  size against the end-of-file address the superblock records, then every object through
  h5py: external and soft links, external raw storage, virtual datasets, and datasets that
  declare far more data than they store (shape bombs).
* SavedModel: ``saved_model.pb`` parses as protobuf, the variables index and every data shard
  it names are present.

The limits are named constants with their reasons; tests patch them small. Stable: the
checks may grow; a file refused by one release stays refused by the next.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kbundle.errors import KbundleError
from kbundle.findings import Finding, Severity
from kbundle.models.checks.common import H5Objects, declared_format_findings, raise_problems
from kbundle.models.checks.h5 import check_h5
from kbundle.models.checks.keras import (
    StoredRange,
    ZipCrcWatch,
    check_keras_dir,
    check_keras_zip,
    unzip_sound_keras,
)
from kbundle.models.checks.savedmodel import check_saved_model

__all__ = [
    "H5Objects",
    "PackCheck",
    "ZipCrcWatch",
    "check_model_file",
    "require_sound_before_streaming",
    "require_sound_model",
    "unzip_sound_keras",
]


def require_sound_model(
    path: Path,
    fmt: str,
    *,
    error: type[KbundleError],
    hint: str,
    label: str | None = None,
) -> None:
    """Run :func:`check_model_file`; raise ``error`` naming the first ERROR finding, with all."""
    raise_problems(check_model_file(path, fmt, label=label), label or str(path), error, hint)


@dataclass(frozen=True, slots=True)
class PackCheck:
    """What :func:`require_sound_before_streaming` leaves to the pack that follows it."""

    watch: ZipCrcWatch | None  # CRC-32s to check as the file streams; None: nothing left
    h5_objects: H5Objects  # the model's HDF5 objects (empty for formats without HDF5)
    unchecked: tuple[str, ...] = ()  # what could not be checked here (INFO findings)


def require_sound_before_streaming(
    path: Path, fmt: str, *, error: type[KbundleError], hint: str
) -> PackCheck:
    """:func:`require_sound_model` for a file that is about to be read once from start to end
    anyway (pack streams it into the bundle): the CRC-32 of a ``.keras`` zip's large stored
    members (the weights) is left to the returned watch, which must be fed every byte of the
    file in order and then asked to :meth:`~ZipCrcWatch.require`, sparing pack a second read
    of the weights. The HDF5 objects the check walked are returned too, so that pack counts
    the parameters without opening the weights again."""
    deferred: list[StoredRange] = []
    objects: H5Objects = {}
    findings = (
        check_keras_zip(path, path.name, deferred=deferred, h5_objects=objects)
        if fmt == "keras"
        else check_model_file(path, fmt, h5_objects=objects)
    )
    raise_problems(findings, str(path), error, hint)
    unchecked = tuple(f.describe() for f in findings if f.severity == Severity.INFO)
    watch = ZipCrcWatch(path, deferred, error, hint) if deferred else None
    return PackCheck(watch, objects, unchecked)


def check_model_file(
    path: Path, fmt: str, *, label: str | None = None, h5_objects: H5Objects | None = None
) -> list[Finding]:
    """Every problem that makes ``path`` (a model in format ``fmt``) unsafe or unreadable.

    ``label`` names the file in findings (default: its file name). ERROR findings mean the
    file must not be loaded; INFO findings say what could not be checked here. ``h5_objects``,
    when given, receives the HDF5 objects walked.
    """
    name = label or path.name
    mismatch = declared_format_findings(path, fmt, name)
    if mismatch:
        return mismatch
    if fmt == "keras":
        return check_keras_zip(path, name, h5_objects=h5_objects)
    if fmt == "keras-dir":
        return check_keras_dir(path, name, h5_objects)
    if fmt == "h5":
        with path.open("rb") as handle:
            return check_h5(handle, path.stat().st_size, name, h5_objects)
    if fmt == "savedmodel":
        return check_saved_model(path, name)
    return [
        Finding(
            location=name,
            problem=f"unknown model format {fmt!r}",
            fix="pass a .keras or .h5 file, or a SavedModel directory",
        )
    ]
