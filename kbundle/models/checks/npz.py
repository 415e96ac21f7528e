"""NumPy ``.npz`` archives from a bundle, checked before NumPy reads them.

An ``.npz`` is a zip of ``.npy`` members. ``np.load`` decompresses a member to read it and
allocates whatever shape the member's header declares, so a few kilobytes of deflate bomb
or a header declaring ``(2**40,)`` take gigabytes. Two readers meet them in a bundle: kbundle's
probe (``probe/inputs.npz``, ``probe/outputs.npz``) and Keras, when a ``.keras`` archive keeps
its weights in ``model.weights.npz`` instead of ``model.weights.h5`` (Keras falls back to it).

Each member must be a plain ``.npy`` (numeric, boolean or fixed-width dtype: an object array
is a pickle) whose header declares exactly the bytes the member holds, so reading it
allocates what the archive itself carries, and whose expansion over its stored size stays
within the same bounds as a Keras zip's. ``stored_only`` (the probe: kbundle writes it
uncompressed) refuses any compressed member, which makes the budget the file's own size,
as the manifest declares it. Nothing here runs code from the file. Stable: internal.
"""

from __future__ import annotations

import ast
import math
import struct
import zipfile
from pathlib import Path
from typing import IO, Any

from kbundle.errors import ModelFileError
from kbundle.findings import Finding

__all__ = [
    "MAX_NPZ_EXPANSION",
    "MAX_NPZ_MEMBERS",
    "NPZ_BOMB_FLOOR_BYTES",
    "npz_findings",
    "read_npz",
]

# A model keeps one array per variable (thousands for the largest); a probe one per input and
# output. A hundred thousand bounds the per-member work a hostile archive can demand.
MAX_NPZ_MEMBERS = 100_000
# As for a Keras zip (kbundle.models.checks): np.savez stores, np.savez_compressed deflates, and
# DEFLATE cannot exceed ~1032:1; more than 100x over 64 MiB in all is a bomb.
MAX_NPZ_EXPANSION = 100
NPZ_BOMB_FLOOR_BYTES = 64 * 1024 * 1024
# numpy's own default cap on an .npy header (numpy.lib.format, max_header_size).
_MAX_HEADER_BYTES = 10_000
_NPY_MAGIC = b"\x93NUMPY"
_FIX = "this is not a file kbundle or Keras wrote; do not load it"


def _finding(
    where: str, problem: str, *, expected: str | None = None, actual: str | None = None
) -> Finding:
    return Finding(location=where, problem=problem, expected=expected, actual=actual, fix=_FIX)


def npz_findings(
    handle: IO[bytes], size: int, where: str, *, stored_only: bool = False
) -> list[Finding]:
    """Every reason the ``.npz`` in ``handle`` (``size`` bytes) must not reach ``np.load``."""
    try:
        archive = zipfile.ZipFile(handle)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        return [_finding(where, f"not a readable .npz archive ({exc})")]
    with archive:
        members = archive.infolist()
        if len(members) > MAX_NPZ_MEMBERS:
            return [
                _finding(
                    where,
                    "too many arrays",
                    expected=f"at most {MAX_NPZ_MEMBERS}",
                    actual=str(len(members)),
                )
            ]
        declared = sum(info.file_size for info in members)
        if declared > max(NPZ_BOMB_FLOOR_BYTES, MAX_NPZ_EXPANSION * size):
            return [
                _finding(
                    where,
                    "declares far more data than it stores (a decompression bomb)",
                    expected=f"at most {MAX_NPZ_EXPANSION}x its {size} bytes",
                    actual=f"{declared} bytes",
                )
            ]
        findings: list[Finding] = []
        for info in members:
            findings += _member_findings(archive, info, f"{where}/{info.filename}", stored_only)
        return findings


def _member_findings(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, where: str, stored_only: bool
) -> list[Finding]:
    if not info.filename.endswith(".npy") or info.is_dir():
        return [_finding(where, "not an .npy member")]
    if stored_only and info.compress_type != zipfile.ZIP_STORED:
        return [_finding(where, "compressed, but kbundle stores probe arrays uncompressed")]
    try:
        with archive.open(info) as member:
            header_size, shape, dtype = _npy_header(member)
    except (
        zipfile.BadZipFile,
        OSError,
        ValueError,
        EOFError,
        NotImplementedError,
        SyntaxError,
        TypeError,
        KeyError,
        RecursionError,
        struct.error,
    ) as exc:
        return [_finding(where, f"unreadable .npy header ({exc})")]
    if dtype.hasobject:
        return [_finding(where, "holds Python objects (a pickle), not numbers")]
    data = math.prod(shape) * dtype.itemsize
    if data != info.file_size - header_size:
        return [
            _finding(
                where,
                "its header declares another amount of data than it holds",
                expected=f"{info.file_size - header_size} bytes",
                actual=f"{data} bytes for shape {shape} of {dtype}",
            )
        ]
    return []


def _npy_header(member: IO[bytes]) -> tuple[int, tuple[int, ...], Any]:
    """``(header bytes, shape, dtype)`` of an ``.npy`` stream, read without numpy's own
    parser (``ast.literal_eval`` of at most 10,000 bytes, as numpy does)."""
    import numpy as np

    start = member.read(8)
    if len(start) < 8 or start[:6] != _NPY_MAGIC:
        raise ValueError("no .npy magic")
    major = start[6]
    length_size = 2 if major == 1 else 4 if major in (2, 3) else 0
    if not length_size:
        raise ValueError(f"unknown .npy version {major}")
    (length,) = struct.unpack("<H" if length_size == 2 else "<I", member.read(length_size))
    if length > _MAX_HEADER_BYTES:
        raise ValueError(f"header of {length} bytes")
    text = member.read(length)
    header = ast.literal_eval(text.decode("utf-8" if major == 3 else "latin1"))
    if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
        raise ValueError("malformed header")
    shape = header["shape"]
    if not isinstance(shape, tuple) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ValueError(f"bad shape {shape!r}")
    dtype = np.dtype(np.lib.format.descr_to_dtype(header["descr"]))
    return 8 + length_size + length, shape, dtype


def read_npz(path: Path, where: str) -> list[Any]:
    """The arrays of a probe ``.npz`` in member order (``name_0.npy``, ``name_1.npy``, ...),
    checked first: stored members whose headers declare exactly their bytes, no objects."""
    import numpy as np

    with path.open("rb") as handle:
        findings = npz_findings(handle, path.stat().st_size, where, stored_only=True)
    if findings:
        first = findings[0]
        raise ModelFileError.from_findings(
            findings, f"unsafe to read with NumPy: {first.describe()}"
        )
    with np.load(path, allow_pickle=False) as data:
        names = sorted(data.files, key=lambda n: int(n.rsplit("_", 1)[1].split(".")[0]))
        return [data[name] for name in names]
