"""Checks of a Keras 3 model, zip (``.keras``) or directory, before Keras reads it.

The zip: the archive structure (a truncated archive is walked header by header to say where
it ends), member names (traversal, duplicates), member count, declared expansion per member
and in total, encryption, the CRC-32 of *every* member (Python's ``zipfile`` checks a CRC only
when a member is read to its end, so each is read to its end here, or left to a
:class:`ZipCrcWatch` fed by a pass that reads the file anyway), and the members split out of a
bundle stream (kbundle.models.zipsplit) against the central directory. Both forms: the JSON
members, the HDF5 weights (kbundle.models.checks.h5) and the ``.npz`` weights Keras falls back
to (kbundle.models.checks.npz). Stable: the checks may grow.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, cast

from kbundle._io.writers import QueuedWriter
from kbundle.container.limits import CHUNK_SIZE
from kbundle.errors import KbundleError, ModelFileError
from kbundle.findings import Finding, Severity
from kbundle.models.checks.common import (
    CUT_SHORT,
    DAMAGED_START,
    INCOMPLETE,
    FileFindings,
    H5Objects,
    Opener,
    Sink,
    bomb,
    declared_format_findings,
    json_findings,
    raise_problems,
)
from kbundle.models.checks.h5 import check_h5
from kbundle.models.checks.npz import npz_findings
from kbundle.models.formats import (
    KERAS_CONFIG_NAME,
    KERAS_METADATA_NAME,
    KERAS_WEIGHTS_NAME,
    ZIP_SIGNATURE,
)
from kbundle.models.zipmember import data_offset, open_zip_member, zip_name_problem
from kbundle.models.zipsplit import SplitMember

__all__ = [
    "KERAS_NPZ_WEIGHTS_NAME",
    "MAX_ZIP_EXPANSION",
    "MAX_ZIP_MEMBERS",
    "STREAMED_CRC_MIN_BYTES",
    "ZIP_BOMB_FLOOR_BYTES",
    "StoredRange",
    "ZipCrcWatch",
    "check_keras_dir",
    "check_keras_zip",
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
# Keras 3's other weights store, read when a .keras archive has no model.weights.h5.
KERAS_NPZ_WEIGHTS_NAME = "model.weights.npz"


@dataclass(frozen=True, slots=True)
class StoredRange:
    """A stored zip member's data: where it is in the archive and the CRC-32 it declares."""

    where: str
    start: int
    size: int
    crc: int


class ZipCrcWatch:
    """Checks the CRC-32 of stored zip members from the archive's bytes as they stream past."""

    def __init__(
        self, path: Path, ranges: list[StoredRange], error: type[KbundleError], hint: str
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
        raise_problems(findings, str(self._path), self._error, self._hint)


def check_keras_zip(
    path: Path,
    name: str,
    extract_to: Path | None = None,
    deferred: list[StoredRange] | None = None,
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
            if deferred is not None and defer(archive, info, name, deferred):
                continue
            findings += _zip_member_findings(archive, info, name, extract_to)
        if not any(f.severity >= Severity.ERROR for f in findings):
            opener: Opener = (
                (lambda member: _zip_open(archive, member))
                if extract_to is None
                else (lambda member: _dir_open(extract_to, member))
            )
            findings += _keras_layout_findings(
                opener, name, f"{name}/", h5_objects, archive.namelist()
            )
    return findings


# Stored members at least this large may have their CRC-32 checked by a ZipCrcWatch.
STREAMED_CRC_MIN_BYTES = 1024 * 1024


def defer(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, deferred: list[StoredRange]
) -> bool:
    """Leave a large stored member's CRC-32 to a ZipCrcWatch (True), or not."""
    if not _plain_stored(info) or info.file_size < STREAMED_CRC_MIN_BYTES or archive.fp is None:
        return False
    start = data_offset(archive.fp, info)
    if start is None:
        return False
    stored = StoredRange(f"{name}/{info.filename}", start, info.file_size, info.CRC)
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
    ranges: list[StoredRange] = []
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
        ranges.append(StoredRange(where, member.start, member.size, member.crc))
    for info in archive.infolist():
        if info.filename in split or info.is_dir() or archive.fp is None:
            continue
        start = data_offset(archive.fp, info)
        other = StoredRange(info.filename, start or info.header_offset, info.compress_size, 0)
        if not all(_apart(other, taken) for taken in ranges):
            findings.append(
                Finding(
                    location=f"{name}/{info.filename}",
                    problem="member data overlaps another member's",
                    fix="this is not a file Keras wrote; do not load it",
                )
            )
    return findings


def _apart(one: StoredRange, other: StoredRange) -> bool:
    """No shared bytes (a hostile archive may point two members at the same data)."""
    return one.start + one.size <= other.start or other.start + other.size <= one.start


def unzip_sound_keras(
    path: Path,
    directory: Path,
    *,
    label: str,
    hint: str,
    split: Mapping[str, SplitMember] | None = None,
    name: str | None = None,
) -> None:
    """Check the ``.keras`` zip ``path`` as :func:`require_sound_model` does and, in the same
    read, write its members into ``directory`` (created here unless ``split`` is given): the
    unzipped form, which Keras loads from the files themselves (loaded from the zip, Keras
    first copies the weights member into memory).

    ``split`` lists members already written into ``directory`` while the zip was extracted
    (:mod:`kbundle.models.zipsplit`; their data is a hole in ``path``): each must be a stored member
    the central directory lists at exactly that byte range with exactly that CRC-32, and no
    other member may reach into its range. Raises :class:`ModelFileError` naming the first
    problem (with all of them), called ``name`` (default: ``label``) in its message."""
    findings = declared_format_findings(path, "keras", label)
    if not findings:
        if split is None:
            directory.mkdir()
        findings = check_keras_zip(path, label, directory, split=split or {})
    raise_problems(findings, name or label, ModelFileError, hint)


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
            fix=DAMAGED_START,
        )
    where = _zip_cut(path, size)
    return Finding(
        location=where[0] if where else name,
        problem="zip archive is truncated: the central directory at its end is missing"
        if where
        else f"zip archive structure is unreadable ({exc})",
        expected=where[1] if where else None,
        actual=f"{size} bytes" if where else None,
        why=CUT_SHORT,
        fix=INCOMPLETE,
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
            findings.append(bomb(where, info.file_size, info.compress_size, MAX_ZIP_EXPANSION))
    declared = sum(info.file_size for info in infos)
    if declared > ZIP_BOMB_FLOOR_BYTES and declared > MAX_ZIP_EXPANSION * size:
        findings.append(bomb(name, declared, size, MAX_ZIP_EXPANSION))
    return findings


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
                why=CUT_SHORT,
                fix=INCOMPLETE,
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

_ARCHIVE_INCOMPLETE = (
    "the archive is incomplete (a member was lost when it was copied, unzipped or edited); "
    "restore it from a backup or save the model again"
)


def _keras_layout_findings(
    open_member: Opener,
    name: str,
    prefix: str,
    h5_objects: H5Objects | None = None,
    members: Sequence[str] = (),
) -> FileFindings:
    """The members of the Keras 3 layout: config and metadata (JSON), and the weights (every
    archive Keras 3 writes has them, empty for a model without weights). ``members``, the
    archive's names, tell a zipped SavedModel from an incomplete ``.keras`` file."""
    saved_model = next((m for m in members if m.rpartition("/")[2] == "saved_model.pb"), None)
    if saved_model is not None and KERAS_CONFIG_NAME not in members:
        return [
            Finding(
                location=name,
                problem=f"is a SavedModel in a zip ({saved_model}), not a .keras archive",
                fix="unzip it and load the directory that holds saved_model.pb as a SavedModel "
                "(loading one runs its graph: only if you trust it, with --trust-code)",
            )
        ]
    findings: FileFindings = []
    for member, required in ((KERAS_CONFIG_NAME, True), (KERAS_METADATA_NAME, False)):
        opened = open_member(member)
        if opened is None:
            if required:
                findings.append(
                    Finding(
                        location=f"{prefix}{member}",
                        problem="missing: the model's config is not in the archive",
                        fix=_ARCHIVE_INCOMPLETE,
                    )
                )
            continue
        handle, size = opened
        with handle:
            findings += json_findings(handle, size, f"{prefix}{member}")
    weights = False
    opened = open_member(KERAS_WEIGHTS_NAME)
    if opened is not None:
        weights = True
        handle, size = opened
        with handle:
            findings += check_h5(handle, size, f"{prefix}{KERAS_WEIGHTS_NAME}", h5_objects)
    opened = open_member(KERAS_NPZ_WEIGHTS_NAME)  # Keras reads it when there is no .h5
    if opened is not None:
        weights = True
        handle, size = opened
        with handle:
            findings += npz_findings(handle, size, f"{prefix}{KERAS_NPZ_WEIGHTS_NAME}")
    if not weights:
        findings.append(
            Finding(
                location=f"{prefix}{KERAS_WEIGHTS_NAME}",
                problem=f"missing: the archive holds no weights ({KERAS_WEIGHTS_NAME} or "
                f"{KERAS_NPZ_WEIGHTS_NAME}), which Keras 3 writes for every model",
                fix=_ARCHIVE_INCOMPLETE,
            )
        )
    return findings


def check_keras_dir(path: Path, name: str, h5_objects: H5Objects | None = None) -> FileFindings:
    return _keras_layout_findings(
        lambda member: _dir_open(path, member), name, f"{name}/", h5_objects
    )


def _dir_open(directory: Path, member: str) -> tuple[IO[bytes], int] | None:
    file = directory / member
    if file.is_symlink() or not file.is_file():
        return None
    return file.open("rb"), file.stat().st_size
