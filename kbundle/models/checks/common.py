"""What every format's checks share: the finding list type, the fixes they name, the HDF5
object map, and how a check reads a member of a zip or a directory. Stable: internal."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from kbundle.errors import KbundleError
from kbundle.findings import Finding, Severity
from kbundle.models.formats import (
    CONTENT_SNIFF_BYTES,
    MAX_CONFIG_BYTES,
    ZIP_SIGNATURE,
    other_content,
)

__all__ = [
    "CUT_SHORT",
    "DAMAGED_START",
    "INCOMPLETE",
    "FileFindings",
    "H5Objects",
    "Opener",
    "Sink",
    "bomb",
    "declared_format_findings",
    "json_findings",
    "not_a_model",
    "raise_problems",
]

FileFindings = list[Finding]
Sink = Callable[[bytes | memoryview], object]  # receives a member's data as it is read
# A member of an archive or directory by name: an open handle and its size, or None.
Opener = Callable[[str], "tuple[IO[bytes], int] | None"]
# Every HDF5 object a check walked, by path ("/", "/layers/dense/vars/0"): a dataset's number
# of elements, or None for a group.
H5Objects = dict[str, "int | None"]

DAMAGED_START = "the file is damaged at its start; restore it from a backup or save the model again"
CUT_SHORT = "an interrupted save or copy cuts a file short"
INCOMPLETE = "the file is incomplete; copy it again or save the model again"


def raise_problems(findings: FileFindings, name: str, error: type[KbundleError], hint: str) -> None:
    problems = [f for f in findings if f.severity >= Severity.ERROR]
    if not problems:
        return
    raise error.from_findings(
        problems,
        f"{name} is corrupt or unsafe to load: {problems[0].describe()}",
        hint=problems[0].fix or hint,
    )


def not_a_model(handle: IO[bytes], size: int, name: str, fmt: str) -> Finding | None:
    """The finding for a file named as a model of format ``fmt`` that is something else
    altogether (empty, a Git LFS pointer, text, a bundle): what it is and what to do, instead
    of "damaged at its start"; None when it is not recognisably something else."""
    handle.seek(0)
    other = other_content(handle.read(CONTENT_SNIFF_BYTES), size)
    handle.seek(0)
    if other is None:
        return None
    return Finding(
        location=name,
        problem=f"named as a .{fmt} model, but it {other[0]}",
        fix=other[1],
    )


_KIND_OF_FORMAT = {"keras": "file", "h5": "file", "keras-dir": "dir", "savedmodel": "dir"}


def declared_format_findings(path: Path, fmt: str, name: str) -> FileFindings:
    """The file must be what its declared format says, by its kind and its first bytes: a
    loader that goes by the name and one that goes by the content must read the same thing.
    An HDF5 file with a zip appended passes the HDF5 checks, and a loader that sees a zip
    reads the zip instead."""
    kind = _KIND_OF_FORMAT.get(fmt)
    if kind is None:
        return [
            Finding(
                location=name,
                problem=f"unknown model format {fmt!r}",
                fix="pass a .keras or .h5 file, or a SavedModel directory",
            )
        ]
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
            other = not_a_model(handle, path.stat().st_size, name, fmt)
        if other is not None:
            return [other]
        if magic != ZIP_SIGNATURE:
            return [
                Finding(
                    location=name,
                    problem="declared format keras, but its first bytes are not a zip signature",
                    expected=ZIP_SIGNATURE.hex(),
                    actual=magic.hex() or "an empty file",
                    fix=DAMAGED_START,
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


def bomb(where: str, declared: int, stored: int, ratio: int) -> Finding:
    return Finding(
        location=where,
        problem="declares far more data than it stores (decompression or shape bomb)",
        expected=f"at most {ratio}x the {stored} bytes stored",
        actual=f"{declared} bytes declared",
        why="reading it would allocate memory or disk for data that is not there",
        fix="this is not a file Keras wrote; do not load it",
    )


def json_findings(handle: IO[bytes], size: int, where: str) -> FileFindings:
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
