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

import io
import json
import math
import re
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

from kbundle._io.writers import QueuedWriter
from kbundle.container.limits import CHUNK_SIZE
from kbundle.errors import KbundleError, ModelFileError, first_sentence
from kbundle.findings import Finding, Severity
from kbundle.models.formats import (
    HDF5_SIGNATURE,
    KERAS_CONFIG_NAME,
    KERAS_METADATA_NAME,
    KERAS_WEIGHTS_NAME,
    MAX_CONFIG_BYTES,
    ZIP_SIGNATURE,
    read_saved_model,
    saved_model_file,
)
from kbundle.models.npz import npz_findings
from kbundle.models.protowire import WireError
from kbundle.models.zipmember import data_offset, open_zip_member, zip_name_problem
from kbundle.models.zipsplit import SplitMember

__all__ = [
    "MAX_H5_EXPANSION",
    "MAX_H5_OBJECTS",
    "MAX_ZIP_EXPANSION",
    "MAX_ZIP_MEMBERS",
    "STREAMED_CRC_MIN_BYTES",
    "H5Objects",
    "PackCheck",
    "ZipCrcWatch",
    "check_model_file",
    "require_sound_before_streaming",
    "require_sound_model",
    "unzip_sound_keras",
]

# A Keras archive holds config.json, metadata.json, the weights and its assets (vocabularies
# and similar, a handful of files). Ten thousand members is far beyond any model and bounds
# the per-member work a hostile archive can demand.
MAX_ZIP_MEMBERS = 10_000
# Keras stores archive members uncompressed (ratio 1) and DEFLATE cannot exceed ~1032:1, so a
# member (or the archive as a whole) declaring more than 100x what it stores is a bomb. Below
# the floor the ratio is not checked: small, highly compressible members are harmless.
MAX_ZIP_EXPANSION = 100
ZIP_BOMB_FLOOR_BYTES = 64 * 1024 * 1024
# Keras writes a few objects per weight; a million objects is far beyond any model and bounds
# the walk over a hostile file's object graph (which may contain hard-link cycles).
MAX_H5_OBJECTS = 1_000_000
# A dataset's declared size must be backed by stored bytes: Keras writes every weight in
# full, uncompressed. One declaring 1000x more than it stores (a (2**50,) shape over a fill
# value) would make the loader allocate memory it never needs. Small datasets are exempt.
MAX_H5_EXPANSION = 1000
H5_BOMB_FLOOR_BYTES = 64 * 1024 * 1024
# Keras 3's other weights store, read when a .keras archive has no model.weights.h5.
KERAS_NPZ_WEIGHTS_NAME = "model.weights.npz"
# HDF5 looks for its superblock at 0, 512, 1024, 2048, ... (a user block may precede it).
_H5_SUPERBLOCK_SEARCH_LIMIT = 1 << 20
_UNDEFINED_ADDRESS = (1 << 64) - 1
_SHARD_RE = re.compile(r"^variables\.data-(\d{5})-of-(\d{5})$")

FileFindings = list[Finding]
Sink = Callable[[bytes | memoryview], object]  # receives a member's data as it is read
_DAMAGED_START = (
    "the file is damaged at its start; restore it from a backup or save the model again"
)
_CUT_SHORT = "an interrupted save or copy cuts a file short"
_INCOMPLETE = "the file is incomplete; copy it again or save the model again"


def require_sound_model(
    path: Path,
    fmt: str,
    *,
    error: type[KbundleError],
    hint: str,
    label: str | None = None,
) -> None:
    """Run :func:`check_model_file`; raise ``error`` naming the first ERROR finding, with all."""
    _raise_problems(check_model_file(path, fmt, label=label), label or str(path), error, hint)


# Every HDF5 object a check walked, by path ("/", "/layers/dense/vars/0"): a dataset's number
# of elements, or None for a group.
H5Objects = dict[str, "int | None"]


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
    file in order and then asked to :meth:`~ZipCrcWatch.require` — a second read of a 1 GiB
    model cost 0.3 s of a 2.7 s pack here. The HDF5 objects the check walked are returned
    too, so that pack counts the parameters without opening the weights again."""
    deferred: list[_StoredRange] = []
    objects: H5Objects = {}
    findings = (
        _check_keras_zip(path, path.name, deferred=deferred, h5_objects=objects)
        if fmt == "keras"
        else check_model_file(path, fmt, h5_objects=objects)
    )
    _raise_problems(findings, str(path), error, hint)
    unchecked = tuple(f.describe() for f in findings if f.severity == Severity.INFO)
    watch = ZipCrcWatch(path, deferred, error, hint) if deferred else None
    return PackCheck(watch, objects, unchecked)


@dataclass(frozen=True, slots=True)
class _StoredRange:
    """A stored zip member's data: where it is in the archive and the CRC-32 it declares."""

    where: str
    start: int
    size: int
    crc: int


class ZipCrcWatch:
    """Checks the CRC-32 of stored zip members from the archive's bytes as they stream past."""

    def __init__(
        self, path: Path, ranges: list[_StoredRange], error: type[KbundleError], hint: str
    ) -> None:
        self._path, self._error, self._hint = path, error, hint
        self._ranges = sorted(ranges, key=lambda r: r.start)
        self._crcs = [0] * len(self._ranges)
        self._offset = 0

    def __call__(self, chunk: bytes | memoryview) -> None:
        """The next bytes of the archive, in order from its first byte."""
        view, begin = memoryview(chunk), self._offset
        self._offset += len(view)
        for index, member in enumerate(self._ranges):
            low, high = max(member.start, begin), min(member.start + member.size, self._offset)
            if low < high:
                self._crcs[index] = zlib.crc32(view[low - begin : high - begin], self._crcs[index])

    def require(self) -> None:
        """Raise the watch's error when a member's bytes do not match their CRC-32."""
        findings = [
            _bad_crc(member.where, member.crc, actual)
            for member, actual in zip(self._ranges, self._crcs, strict=True)
            if actual != member.crc
        ]
        _raise_problems(findings, str(self._path), self._error, self._hint)


def _raise_problems(
    findings: FileFindings, name: str, error: type[KbundleError], hint: str
) -> None:
    problems = [f for f in findings if f.severity >= Severity.ERROR]
    if not problems:
        return
    more = len(problems) - 1
    raise error(
        f"{name} is corrupt or unsafe to load: {problems[0].describe()}"
        + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""),
        hint=problems[0].fix or hint,
        findings=problems,
    )


def check_model_file(
    path: Path, fmt: str, *, label: str | None = None, h5_objects: H5Objects | None = None
) -> list[Finding]:
    """Every problem that makes ``path`` (a model in format ``fmt``) unsafe or unreadable.

    ``label`` names the file in findings (default: its file name). ERROR findings mean the
    file must not be loaded; INFO findings say what could not be checked here. ``h5_objects``,
    when given, receives the HDF5 objects walked.
    """
    name = label or path.name
    mismatch = _declared_format_findings(path, fmt, name)
    if mismatch:
        return mismatch
    if fmt == "keras":
        return _check_keras_zip(path, name, h5_objects=h5_objects)
    if fmt == "keras-dir":
        return _check_keras_dir(path, name, h5_objects)
    if fmt == "h5":
        with path.open("rb") as handle:
            return _check_h5(handle, path.stat().st_size, name, h5_objects)
    if fmt == "savedmodel":
        return _check_saved_model(path, name)
    return [Finding(location=name, problem=f"unknown model format {fmt!r}")]


_KIND_OF_FORMAT = {"keras": "file", "h5": "file", "keras-dir": "dir", "savedmodel": "dir"}


def _declared_format_findings(path: Path, fmt: str, name: str) -> FileFindings:
    """The file must be what its declared format says, by its kind and its first bytes: a
    loader that goes by the name and one that goes by the content must read the same thing.
    An HDF5 file with a zip appended passes the HDF5 checks, and a loader that sees a zip
    reads the zip instead."""
    kind = _KIND_OF_FORMAT.get(fmt)
    if kind is None:
        return [Finding(location=name, problem=f"unknown model format {fmt!r}")]
    if path.is_dir() if kind == "file" else not path.is_dir():
        found = "a directory" if kind == "file" else "a file"
        return [
            Finding(
                location=name,
                problem=f"format {fmt} is a {kind}, but this is {found}",
                expected=kind,
                actual=found,
                fix="this is not a model kbundle packed; do not load it",
            )
        ]
    if fmt == "keras":
        # zipfile finds an archive by its end record, so data before it goes unseen (an HDF5
        # file, say); a .keras file starts with its first member. (The HDF5 checks find
        # the signature of an h5 file themselves, where a user block may precede it.)
        with path.open("rb") as handle:
            magic = handle.read(len(ZIP_SIGNATURE))
        if magic != ZIP_SIGNATURE:
            return [
                Finding(
                    location=name,
                    problem="declared format keras, but its first bytes are not a zip signature",
                    expected=ZIP_SIGNATURE.hex(),
                    actual=magic.hex() or "an empty file",
                    fix=_DAMAGED_START,
                )
            ]
    if fmt == "h5" and zipfile.is_zipfile(path):
        return [
            Finding(
                location=name,
                problem="an HDF5 file that is also a zip archive (data appended after it): "
                "a loader that looks for a zip would read the appended one",
                fix="this is not a file Keras wrote; do not load it",
            )
        ]
    return []


# --------------------------------------------------------------------------------------------
# .keras


def _check_keras_zip(
    path: Path,
    name: str,
    extract_to: Path | None = None,
    deferred: list[_StoredRange] | None = None,
    split: Mapping[str, SplitMember] | None = None,
    h5_objects: H5Objects | None = None,
) -> FileFindings:
    size = path.stat().st_size
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        return [_zip_structure_finding(path, name, size, exc)]
    with archive:
        findings = _zip_directory_findings(archive, name, size)
        if any(f.severity >= Severity.ERROR for f in findings):
            return findings  # reading members of a hostile directory is what a bomb wants
        if split:
            findings += _split_findings(archive, name, split)
            if any(f.severity >= Severity.ERROR for f in findings):
                return findings
        for info in archive.infolist():
            if split and info.filename in split:
                continue  # checked above, already written
            if deferred is not None and _defer(archive, info, name, deferred):
                continue
            findings += _zip_member_findings(archive, info, name, extract_to)
        if not any(f.severity >= Severity.ERROR for f in findings):
            opener: Opener = (
                (lambda member: _zip_open(archive, member))
                if extract_to is None
                else (lambda member: _dir_open(extract_to, member))
            )
            findings += _keras_layout_findings(opener, name, f"{name}/", h5_objects)
    return findings


# Stored members at least this large may have their CRC-32 checked by a ZipCrcWatch.
STREAMED_CRC_MIN_BYTES = 1024 * 1024


def _defer(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, deferred: list[_StoredRange]
) -> bool:
    """Leave a large stored member's CRC-32 to a ZipCrcWatch (True), or not."""
    if not _plain_stored(info) or info.file_size < STREAMED_CRC_MIN_BYTES or archive.fp is None:
        return False
    start = data_offset(archive.fp, info)
    if start is None:
        return False
    stored = _StoredRange(f"{name}/{info.filename}", start, info.file_size, info.CRC)
    if not all(_apart(stored, other) for other in deferred):
        return False
    deferred.append(stored)
    return True


def _plain_stored(info: zipfile.ZipInfo) -> bool:
    """The member's data in the archive is its content: stored, not encrypted, same size."""
    return (
        info.compress_type == zipfile.ZIP_STORED
        and not info.flag_bits & 0x1
        and info.compress_size == info.file_size
    )


def _split_findings(
    archive: zipfile.ZipFile, name: str, split: Mapping[str, SplitMember]
) -> FileFindings:
    """Each member split out of the stream against the central directory: listed, stored, at
    the same byte range, with the CRC-32 it declares; and no other member's data in its
    range (that data is a hole in the zip on disk, not the archive's bytes)."""
    findings: FileFindings = []
    listed = {info.filename: info for info in archive.infolist()}
    ranges: list[_StoredRange] = []
    for member in sorted(split.values(), key=lambda m: m.start):
        where = f"{name}/{member.name}"
        info = listed.get(member.name)
        start = data_offset(archive.fp, info) if info is not None and archive.fp else None
        if (
            info is None
            or not _plain_stored(info)
            or info.file_size != member.size
            or start != member.start
        ):
            findings.append(
                Finding(
                    location=where,
                    problem="a local file header disagrees with the central directory",
                    expected="the member's name, size and data offset as the directory lists them",
                    why="zip readers that trust different headers see different files",
                    fix="this is not a file Keras wrote; do not load it",
                )
            )
            continue
        if member.crc != info.CRC:
            findings.append(_bad_crc(where, info.CRC, member.crc))
        ranges.append(_StoredRange(where, member.start, member.size, member.crc))
    for info in archive.infolist():
        if info.filename in split or info.is_dir() or archive.fp is None:
            continue
        start = data_offset(archive.fp, info)
        other = _StoredRange(info.filename, start or info.header_offset, info.compress_size, 0)
        if not all(_apart(other, taken) for taken in ranges):
            findings.append(
                Finding(
                    location=f"{name}/{info.filename}",
                    problem="member data overlaps another member's",
                    fix="this is not a file Keras wrote; do not load it",
                )
            )
    return findings


def _apart(one: _StoredRange, other: _StoredRange) -> bool:
    """No shared bytes (a hostile archive may point two members at the same data)."""
    return one.start + one.size <= other.start or other.start + other.size <= one.start


def unzip_sound_keras(
    path: Path,
    directory: Path,
    *,
    label: str,
    hint: str,
    split: Mapping[str, SplitMember] | None = None,
) -> None:
    """Check the ``.keras`` zip ``path`` as :func:`require_sound_model` does and, in the same
    read, write its members into ``directory`` (created here unless ``split`` is given): the
    unzipped form, which Keras loads from the files themselves. Loaded from the zip, Keras
    first copies the weights member into memory; for a 1 GiB model in a fresh process that
    took 9-17 s here against 2.5-5 s from the directory.

    ``split`` lists members already written into ``directory`` while the zip was extracted
    (:mod:`kbundle.models.zipsplit`; their data is a hole in ``path``): each must be a stored member
    the central directory lists at exactly that byte range with exactly that CRC-32, and no
    other member may reach into its range. Raises :class:`ModelFileError` naming the first
    problem (with all of them)."""
    findings = _declared_format_findings(path, "keras", label)
    if not findings:
        if split is None:
            directory.mkdir()
        findings = _check_keras_zip(path, label, directory, split=split or {})
    _raise_problems(findings, label, ModelFileError, hint)


def _zip_open(archive: zipfile.ZipFile, member: str) -> tuple[IO[bytes], int] | None:
    try:
        info = archive.getinfo(member)
    except KeyError:
        return None
    return open_zip_member(archive, info), info.file_size


def _zip_structure_finding(path: Path, name: str, size: int, exc: Exception) -> Finding:
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic != ZIP_SIGNATURE:
        return Finding(
            location=name,
            problem="wrong magic bytes: not a zip archive",
            expected=ZIP_SIGNATURE.hex(),
            actual=magic.hex() or "an empty file",
            fix=_DAMAGED_START,
        )
    where = _zip_cut(path, size)
    return Finding(
        location=where[0] if where else name,
        problem="zip archive is truncated: the central directory at its end is missing"
        if where
        else f"zip archive structure is unreadable ({exc})",
        expected=where[1] if where else None,
        actual=f"{size} bytes" if where else None,
        why=_CUT_SHORT,
        fix=_INCOMPLETE,
    )


def _zip_cut(path: Path, size: int) -> tuple[str, str] | None:
    """Where a zip without its end record was cut: (member, bytes its data needs)."""
    offset = 0
    with path.open("rb") as handle:
        while offset < size:
            handle.seek(offset)
            header = handle.read(30)
            if len(header) < 30 or header[:4] != ZIP_SIGNATURE:
                if header[:4] == b"PK\x01\x02":
                    return (
                        f"{path.name} (central directory)",
                        f"an end-of-central-directory record after byte {offset}",
                    )
                return None
            # Local file header: flags at 6, compressed size at 18, name and extra lengths at 26.
            (flags,) = struct.unpack_from("<H", header, 6)
            (csize,) = struct.unpack_from("<I", header, 18)
            name_len, extra_len = struct.unpack_from("<HH", header, 26)
            member = handle.read(name_len).decode("utf-8", "replace")
            if flags & 0x08 or csize == 0xFFFFFFFF:
                return None  # sizes are in a trailing descriptor or zip64 record: cannot tell
            end = offset + 30 + name_len + extra_len + csize
            if end > size:
                return (
                    f"{path.name}/{member}",
                    f"at least {end} bytes (the member's data ends there)",
                )
            offset = end
    return None


def _zip_directory_findings(archive: zipfile.ZipFile, name: str, size: int) -> FileFindings:
    infos = archive.infolist()
    findings: FileFindings = []
    if len(infos) > MAX_ZIP_MEMBERS:
        return [
            Finding(
                location=name,
                problem="too many zip members",
                expected=f"at most {MAX_ZIP_MEMBERS}",
                actual=str(len(infos)),
                fix="this is not an archive Keras wrote; do not load it",
            )
        ]
    seen: set[str] = set()
    for info in infos:
        where = f"{name}/{info.filename}"
        problem = zip_name_problem(info.filename)
        if problem:
            findings.append(
                Finding(
                    location=where,
                    problem=f"unsafe member name: {problem}",
                    fix="this is not an archive Keras wrote; do not load it",
                )
            )
        key = info.filename.rstrip("/").casefold()
        if key in seen:
            findings.append(
                Finding(
                    location=where,
                    problem="duplicate member name",
                    why="readers disagree on which copy wins",
                    fix="this is not an archive Keras wrote; do not load it",
                )
            )
        seen.add(key)
        if info.flag_bits & 0x1:
            findings.append(
                Finding(
                    location=where,
                    problem="member is encrypted",
                    fix="Keras cannot read encrypted archives; save the model again",
                )
            )
        if (
            info.file_size > ZIP_BOMB_FLOOR_BYTES
            and info.file_size > MAX_ZIP_EXPANSION * info.compress_size
        ):
            findings.append(_bomb(where, info.file_size, info.compress_size, MAX_ZIP_EXPANSION))
    declared = sum(info.file_size for info in infos)
    if declared > ZIP_BOMB_FLOOR_BYTES and declared > MAX_ZIP_EXPANSION * size:
        findings.append(_bomb(name, declared, size, MAX_ZIP_EXPANSION))
    return findings


def _bomb(where: str, declared: int, stored: int, ratio: int) -> Finding:
    return Finding(
        location=where,
        problem="declares far more data than it stores (decompression or shape bomb)",
        expected=f"at most {ratio}x the {stored} bytes stored",
        actual=f"{declared} bytes declared",
        why="reading it would allocate memory or disk for data that is not there",
        fix="this is not a file Keras wrote; do not load it",
    )


def _zip_member_findings(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, extract_to: Path | None
) -> FileFindings:
    """The member read to its end (CRC-32, size); with ``extract_to``, also written there."""
    if extract_to is None:
        return _read_member_findings(archive, info, f"{name}/{info.filename}", None)
    target = extract_to / info.filename  # the name passed zip_name_problem
    try:
        if info.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            return []
        target.parent.mkdir(parents=True, exist_ok=True)
        # Written on its own thread while the next chunk is read and checked.
        with QueuedWriter.create(target) as sink:
            return _read_member_findings(archive, info, f"{name}/{info.filename}", sink.write)
    except OSError as exc:
        return [
            Finding(
                location=f"{name}/{info.filename}",
                problem=f"cannot unzip the member: {exc.strerror or exc}",
                fix="free space in the temporary directory (TMPDIR) and try again",
            )
        ]


def _read_member_findings(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, where: str, sink: Sink | None
) -> FileFindings:
    if info.is_dir():
        return []
    if info.compress_type == zipfile.ZIP_STORED and info.flag_bits & 0x1 == 0:
        stored = _stored_crc_findings(archive, info, where, sink)
        if stored is not None:
            return stored
    read = 0
    try:
        with archive.open(info) as handle:
            while chunk := handle.read(CHUNK_SIZE):
                read += len(chunk)
                if sink:
                    sink(chunk)
    except zipfile.BadZipFile as exc:
        text = str(exc)
        if text.startswith("Bad CRC-32"):
            return [_bad_crc(where, info.CRC, _recompute_crc(archive, info))]
        return [
            Finding(
                location=where,
                problem=f"member is unreadable: {text}",
                fix="restore the file from a backup or save the model again",
            )
        ]
    except (zlib.error, EOFError, OSError, NotImplementedError) as exc:
        return [
            Finding(
                location=where,
                problem=f"member is unreadable: {type(exc).__name__}: {exc}",
                fix="restore the file from a backup or save the model again",
            )
        ]
    if read != info.file_size:
        return [
            Finding(
                location=where,
                problem="member size differs from its directory entry",
                expected=f"{info.file_size} bytes",
                actual=f"{read} bytes",
                fix="restore the file from a backup or save the model again",
            )
        ]
    return []


def _stored_crc_findings(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, where: str, sink: Sink | None
) -> FileFindings | None:
    """CRC-32 of a stored member from direct reads (``None``: let zipfile read it instead).

    The weights of a .keras file are stored, and can be gigabytes: large reads and one
    ``zlib.crc32`` per chunk cost a fraction of going through ``ZipExtFile``."""
    if info.compress_size != info.file_size or archive.filename is None:
        return None
    if sink is not None and (archive.fp is None or data_offset(archive.fp, info) is None):
        return None  # let zipfile read it, and say what is wrong
    actual = _recompute_crc(archive, info, sink)
    if actual is None and sink is not None:  # part of it was written: report, do not retry
        return [
            Finding(
                location=where,
                problem="member data ends before its declared size",
                expected=f"{info.compress_size} bytes",
                why=_CUT_SHORT,
                fix=_INCOMPLETE,
            )
        ]
    if actual is None:
        return None
    if actual == info.CRC:
        return []
    return [_bad_crc(where, info.CRC, actual)]


def _bad_crc(where: str, expected: int, actual: int | None) -> Finding:
    return Finding(
        location=where,
        problem="bad CRC-32: the member's bytes changed after it was written",
        expected=f"crc32 {expected:08x}",
        actual=f"crc32 {actual:08x}" if actual is not None else None,
        why="bit rot, a bad copy, or an edit inside the archive",
        fix="restore the file from a backup or save the model again",
    )


def _recompute_crc(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, sink: Sink | None = None
) -> int | None:
    """The CRC-32 of a member's data as it is now (``zipfile`` raises instead of telling);
    ``sink`` is given the data as it is read."""
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) or archive.fp is None:
        return None
    handle = cast(io.BufferedReader, archive.fp)  # zipfile opened the path itself
    start = data_offset(handle, info)
    if start is None:
        return None
    handle.seek(start)
    inflate = (
        zlib.decompressobj(-zlib.MAX_WBITS) if info.compress_type == zipfile.ZIP_DEFLATED else None
    )
    crc, left = 0, info.compress_size
    buffer = memoryview(bytearray(CHUNK_SIZE))  # one buffer: no fresh pages per chunk
    try:
        while left > 0:
            count = handle.readinto(buffer[: min(CHUNK_SIZE, left)])
            if not count:
                return None
            left -= count
            raw: bytes | memoryview = buffer[:count]
            if inflate is None:
                crc = zlib.crc32(raw, crc)
                if sink:
                    sink(raw)
                continue
            while raw:  # inflate in bounded pieces: output per call is capped, memory too
                piece = inflate.decompress(raw, CHUNK_SIZE)
                crc = zlib.crc32(piece, crc)
                if sink:
                    sink(piece)
                raw = inflate.unconsumed_tail
    except zlib.error:
        return None
    return crc


# --------------------------------------------------------------------------------------------
# The Keras 3 layout (both forms)

Opener = Callable[[str], "tuple[IO[bytes], int] | None"]


def _keras_layout_findings(
    open_member: Opener, name: str, prefix: str, h5_objects: H5Objects | None = None
) -> FileFindings:
    findings: FileFindings = []
    for member, required in ((KERAS_CONFIG_NAME, True), (KERAS_METADATA_NAME, False)):
        opened = open_member(member)
        if opened is None:
            if required:
                findings.append(
                    Finding(
                        location=f"{prefix}{member}",
                        problem="missing",
                        fix="the archive is incomplete; save the model again",
                    )
                )
            continue
        handle, size = opened
        with handle:
            findings += _json_findings(handle, size, f"{prefix}{member}")
    opened = open_member(KERAS_WEIGHTS_NAME)
    if opened is not None:
        handle, size = opened
        with handle:
            findings += _check_h5(handle, size, f"{prefix}{KERAS_WEIGHTS_NAME}", h5_objects)
    opened = open_member(KERAS_NPZ_WEIGHTS_NAME)  # Keras reads it when there is no .h5
    if opened is not None:
        handle, size = opened
        with handle:
            findings += npz_findings(handle, size, f"{prefix}{KERAS_NPZ_WEIGHTS_NAME}")
    return findings


def _json_findings(handle: IO[bytes], size: int, where: str) -> FileFindings:
    if size > MAX_CONFIG_BYTES:
        return [
            Finding(
                location=where,
                problem="JSON member larger than the limit",
                expected=f"at most {MAX_CONFIG_BYTES} bytes",
                actual=f"{size} bytes",
                fix="this is not a file Keras wrote; do not load it",
            )
        ]
    try:
        value = json.loads(handle.read(MAX_CONFIG_BYTES))
    except (ValueError, RecursionError) as exc:
        return [
            Finding(
                location=where,
                problem=f"not valid JSON ({str(exc).splitlines()[0][:200]})",
                fix="the file is damaged; restore it from a backup or save the model again",
            )
        ]
    if not isinstance(value, dict):
        return [
            Finding(
                location=where,
                problem="not a JSON object",
                fix="the file is damaged; restore it from a backup or save the model again",
            )
        ]
    return []


def _check_keras_dir(path: Path, name: str, h5_objects: H5Objects | None = None) -> FileFindings:
    return _keras_layout_findings(
        lambda member: _dir_open(path, member), name, f"{name}/", h5_objects
    )


def _dir_open(directory: Path, member: str) -> tuple[IO[bytes], int] | None:
    file = directory / member
    if file.is_symlink() or not file.is_file():
        return None
    return file.open("rb"), file.stat().st_size


# --------------------------------------------------------------------------------------------
# HDF5


def _check_h5(
    handle: IO[bytes], size: int, name: str, h5_objects: H5Objects | None = None
) -> FileFindings:
    findings = _h5_superblock_findings(handle, size, name)
    if findings:
        return findings
    try:
        import h5py
    except ImportError:
        return [
            Finding(
                location=name,
                problem="HDF5 objects not checked: h5py is not installed",
                severity=Severity.INFO,
                fix="pip install h5py (Keras needs it to read this file)",
            )
        ]
    handle.seek(0)
    return _h5_object_findings(h5py, handle, name, h5_objects)


def _h5_superblock_findings(handle: IO[bytes], size: int, name: str) -> FileFindings:
    offset = 0
    while offset < min(size, _H5_SUPERBLOCK_SEARCH_LIMIT):
        handle.seek(offset)
        if handle.read(8) == HDF5_SIGNATURE:
            break
        offset = 512 if offset == 0 else offset * 2
    else:
        handle.seek(0)
        return [
            Finding(
                location=name,
                problem="wrong magic bytes: no HDF5 signature",
                expected=HDF5_SIGNATURE.hex(),
                actual=handle.read(8).hex() or "an empty file",
                fix=_DAMAGED_START,
            )
        ]
    expected = _h5_end_of_file(handle, offset)
    if expected is not None and expected > size:
        return [
            Finding(
                location=name,
                problem="HDF5 file is truncated",
                expected=f"{expected} bytes (the superblock's end-of-file address)",
                actual=f"{size} bytes",
                why=_CUT_SHORT,
                fix=_INCOMPLETE,
            )
        ]
    return []


def _h5_end_of_file(handle: IO[bytes], offset: int) -> int | None:
    """Base address + end-of-file address from the superblock at ``offset`` (any version)."""
    handle.seek(offset + 8)
    head = handle.read(16)
    if len(head) < 16:
        return None
    version = head[0]
    if version in (0, 1):
        width = head[5]  # size of offsets
        fields_at = offset + 24 + (4 if version == 1 else 0)
    elif version in (2, 3):
        width = head[1]
        fields_at = offset + 12
    else:
        return None
    if width not in (2, 4, 8):
        return None
    handle.seek(fields_at)
    raw = handle.read(width * 3)  # base address, free-space/extension address, end of file
    if len(raw) < width * 3:
        return None
    base, _, end = (int.from_bytes(raw[i * width : (i + 1) * width], "little") for i in range(3))
    if end == _UNDEFINED_ADDRESS or base == _UNDEFINED_ADDRESS:
        return None
    return base + end


def _h5_object_findings(
    h5py: Any, handle: IO[bytes], name: str, h5_objects: H5Objects | None
) -> FileFindings:
    findings: FileFindings = []
    where = name
    try:
        with h5py.File(handle, "r") as root:
            for object_path, kind, item in _h5_walk(h5py, root):
                where = f"{name}:{object_path}"
                findings += _h5_item_findings(h5py, kind, item, where)
                if h5_objects is not None and kind in ("group", "dataset"):
                    h5_objects[object_path] = (
                        math.prod(item.shape or ()) if kind == "dataset" else None
                    )
                if len(findings) > 100:  # enough evidence; stop walking a hostile file
                    break
            where = f"{name}:/ (attribute model_config)"
            config = root.attrs.get("model_config")
            if config is not None:
                text = (
                    config.decode("utf-8", "replace") if isinstance(config, bytes) else str(config)
                )
                findings += _json_findings(io.BytesIO(text.encode()), len(text), where)
    except _TooManyObjects as exc:
        findings.append(
            Finding(
                location=name,
                problem="too many HDF5 objects",
                expected=f"at most {MAX_H5_OBJECTS}",
                actual=f"more than {exc.count}",
                fix="this is not a file Keras wrote; do not load it",
            )
        )
    except Exception as exc:  # h5py raises OSError, KeyError, ValueError, RuntimeError...
        findings.append(
            Finding(
                location=where,
                problem="unreadable HDF5 structure: "
                f"{type(exc).__name__}: {first_sentence(str(exc))}",
                why="HDF5 metadata (object headers, B-trees, heaps) is damaged",
                fix="the file is corrupt; restore it from a backup or save the model again",
            )
        )
    return findings


class _TooManyObjects(Exception):
    def __init__(self, count: int) -> None:
        self.count = count


def _h5_walk(h5py: Any, root: Any) -> Iterator[tuple[str, str, Any]]:
    """(path, kind, object) for every link; links are reported, never followed."""
    seen = {root.id}
    stack: list[tuple[str, Any]] = [("", root)]
    count = 0
    yield "/", "group", root
    while stack:
        prefix, group = stack.pop()
        for child in group:
            count += 1
            if count > MAX_H5_OBJECTS:
                raise _TooManyObjects(MAX_H5_OBJECTS)
            object_path = f"{prefix}/{child}"
            link = group.get(child, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                yield object_path, "external-link", link
                continue
            if isinstance(link, h5py.SoftLink):
                yield object_path, "soft-link", link
                continue
            item = group[child]
            if item.id in seen:  # a hard link back to an object already walked (maybe a cycle)
                continue
            seen.add(item.id)
            if isinstance(item, h5py.Group):
                yield object_path, "group", item
                stack.append((object_path, item))
            else:
                yield object_path, "dataset" if isinstance(item, h5py.Dataset) else "other", item


def _h5_item_findings(h5py: Any, kind: str, item: Any, where: str) -> FileFindings:
    refuse = "this is not a file Keras wrote; do not load it"
    if kind == "external-link":
        return [
            Finding(
                location=where,
                problem="external link to another file",
                actual=f"{item.filename}:{item.path}",
                why="loading would read data from a file outside the model",
                fix=refuse,
            )
        ]
    if kind == "soft-link":
        return [
            Finding(
                location=where,
                problem="soft link",
                actual=str(item.path),
                why="Keras never writes links; they can alias or loop",
                fix=refuse,
            )
        ]
    if kind != "dataset":
        return []
    if item.is_virtual:
        sources = ", ".join(sorted({source.file_name for source in item.virtual_sources()}))
        return [
            Finding(
                location=where,
                problem="virtual dataset",
                actual=f"maps {sources}",
                why="loading would read data from files outside the model",
                fix=refuse,
            )
        ]
    if item.external:
        files = ", ".join(str(entry[0]) for entry in item.external)
        return [
            Finding(
                location=where,
                problem="dataset stored in an external raw file",
                actual=files,
                why="loading would read data from a file outside the model",
                fix=refuse,
            )
        ]
    declared = math.prod(item.shape or ()) * item.dtype.itemsize
    stored = item.id.get_storage_size()
    if declared > H5_BOMB_FLOOR_BYTES and declared > MAX_H5_EXPANSION * stored:
        return [_bomb(where, declared, stored, MAX_H5_EXPANSION)]
    return []


# --------------------------------------------------------------------------------------------
# SavedModel


def _check_saved_model(path: Path, name: str) -> FileFindings:
    proto = saved_model_file(path)
    if proto is None:
        return [
            Finding(
                location=f"{name}/saved_model.pb",
                problem="missing",
                fix="this directory is not a complete SavedModel; export it again",
            )
        ]
    findings: FileFindings = []
    if proto.name == "saved_model.pb":
        where = f"{name}/saved_model.pb"
        try:
            info = read_saved_model(path)
        except WireError as exc:
            size = proto.stat().st_size
            truncated = "declares" in exc.problem or "truncated" in exc.problem
            findings.append(
                Finding(
                    location=where,
                    problem=f"not a valid SavedModel protobuf: {exc}",
                    actual=f"{size} bytes" if truncated else None,
                    why="the file was cut short" if truncated else "the file's bytes are damaged",
                    fix="restore the SavedModel from a backup or export it again",
                )
            )
            info = None
        except (OSError, ValueError) as exc:
            findings.append(
                Finding(
                    location=where,
                    problem=f"unreadable: {exc}",
                    fix="restore the SavedModel from a backup or export it again",
                )
            )
            info = None
        if info is not None and proto.stat().st_size and not info.tags and not info.signatures:
            findings.append(
                Finding(
                    location=where,
                    problem="holds no MetaGraph",
                    fix="this is not a SavedModel TensorFlow wrote; export it again",
                )
            )
        uses_variables = info is not None and "RestoreV2" in info.ops
    else:
        uses_variables = False
    return findings + _variables_findings(path / "variables", name, uses_variables)


def _variables_findings(directory: Path, name: str, uses_variables: bool) -> FileFindings:
    where = f"{name}/variables"
    fix = "the SavedModel is incomplete; copy the whole directory again or export it again"
    if not directory.is_dir():
        if uses_variables:
            return [
                Finding(
                    location=where, problem="missing, but the graph restores variables", fix=fix
                )
            ]
        return []
    names = sorted(entry.name for entry in directory.iterdir())
    shards = [match for entry in names if (match := _SHARD_RE.match(entry))]
    findings: FileFindings = []
    if "variables.index" not in names and (shards or uses_variables):
        findings.append(Finding(location=f"{where}/variables.index", problem="missing", fix=fix))
    totals = {int(match.group(2)) for match in shards}
    if len(totals) > 1:
        findings.append(
            Finding(
                location=where,
                problem="data shards disagree on their count",
                actual=", ".join(match.string for match in shards),
                fix=fix,
            )
        )
    for total in totals:
        present = {int(match.group(1)) for match in shards if int(match.group(2)) == total}
        for index in sorted(set(range(total)) - present)[:20]:
            findings.append(
                Finding(
                    location=f"{where}/variables.data-{index:05d}-of-{total:05d}",
                    problem="missing data shard",
                    fix=fix,
                )
            )
    if "variables.index" in names and not shards:
        findings.append(
            Finding(
                location=f"{where}/variables.data-00000-of-00001",
                problem="missing: the index has no data shard",
                fix=fix,
            )
        )
    return findings
