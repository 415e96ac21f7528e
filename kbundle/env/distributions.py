"""Installed distributions: names, versions, requirements, files, read from their metadata.

This answers what ``importlib.metadata`` answers for kbundle, at a fraction of its cost on
the paths that run on every command: importing it (with the email parser it reads headers
with) is a large part of a small unpack's environment check, and each lookup by name scans
``sys.path`` again. Here one scan of ``sys.path`` indexes every ``*.dist-info``
and ``*.egg-info`` by normalised name, the first on the path winning as it does for the
import system, and only the header block of each metadata file is parsed.

What this reader does not do itself it hands to ``importlib.metadata``: a ``sys.path`` entry
that is not a directory (a zip), an ``.egg-info``'s ``requires.txt``, and the map from import
package to distribution. Stable: internal.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "Distribution",
    "canonical_name",
    "find",
    "packages_distributions",
    "version",
    "versions",
]

_NAME_SEPARATORS = re.compile(r"[-_.]+")
_METADATA_SUFFIXES = (".dist-info", ".egg-info")
_HEADER_READ = 64 * 1024  # the headers come first; descriptions can be long


def canonical_name(name: str) -> str:
    """A distribution name normalised as PEP 503 says (``Tf_Keras`` -> ``tf-keras``), the one
    rule every module keys distributions by."""
    return _NAME_SEPARATORS.sub("-", name).lower()


@dataclass(frozen=True, slots=True)
class Distribution:
    """One installed distribution, as its metadata directory (or egg-info file) describes it."""

    name: str
    version: str
    path: Path  # the .dist-info / .egg-info directory, or an egg-info file
    requirements: tuple[str, ...] | None  # Requires-Dist; None: ask importlib.metadata

    def requires(self) -> list[str]:
        """The ``Requires-Dist`` lines, markers included, as ``importlib.metadata.requires``."""
        if self.requirements is not None:
            return list(self.requirements)
        from importlib import metadata

        return list(metadata.Distribution.at(self.path).requires or [])

    def locate(self, relative: str) -> Path:
        """A file of the distribution, relative to the directory its metadata sits in."""
        return self.path.parent / relative

    def recorded_hash(self, file: Path) -> str | None:
        """The hash its RECORD lists for ``file`` (``sha256=...``), or None when the RECORD
        does not list that file. Only lines naming the file's base name are parsed: a
        TensorFlow RECORD has some 20,000 lines."""
        import csv

        try:
            text = (self.path / "RECORD").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None
        target = file.resolve()
        for line in text.splitlines():
            if file.name not in line:
                continue
            for row in csv.reader([line]):
                if len(row) >= 2 and (self.locate(row[0])).resolve() == target:
                    return row[1] or None
        return None

    def files(self) -> frozenset[str]:
        """The files its RECORD lists, relative to :meth:`locate`'s base, with ``/``."""
        from importlib import metadata

        listed = metadata.Distribution.at(self.path).files or []
        return frozenset(str(item).replace("\\", "/") for item in listed)


def versions() -> dict[str, str]:
    """Every installed distribution's version, by normalised name."""
    return {name: dist.version for name, dist in _index(_path_key()).items()}


def find(name: str) -> Distribution | None:
    """The installed distribution ``name`` (any spelling), or None."""
    return _index(_path_key()).get(canonical_name(name))


def version(name: str) -> str | None:
    """The installed version of ``name``, or None when it is not installed."""
    found = find(name)
    return found.version if found else None


def packages_distributions() -> dict[str, list[str]]:
    """Import package -> the distributions that provide it (reads every RECORD; not cheap)."""
    from importlib import metadata

    return dict(metadata.packages_distributions())


def _path_key() -> tuple[tuple[str, int], ...]:
    """``sys.path`` with each entry's modification time: installing or removing a
    distribution changes its directory's, so a changed key means a fresh scan. The empty
    entry is the current directory at the time of the call, as for the import system."""
    key = []
    for entry in sys.path:
        try:
            directory = entry or os.getcwd()
            mtime = os.stat(directory).st_mtime_ns
        except OSError:
            directory, mtime = entry, -1
        key.append((directory, mtime))
    return tuple(key)


@functools.lru_cache(maxsize=4)
def _index(path_key: tuple[tuple[str, int], ...]) -> dict[str, Distribution]:
    found: dict[str, Distribution] = {}
    for entry, mtime in path_key:
        if mtime < 0:
            continue
        for dist in _scan(Path(entry)):
            found.setdefault(canonical_name(dist.name), dist)
    return dict(sorted(found.items()))


def _scan(entry: Path) -> list[Distribution]:
    if not entry.is_dir():
        return _scan_with_importlib(entry)
    try:
        names = sorted(os.listdir(entry))
    except OSError:
        return []
    found = []
    for name in names:
        if name.lower().endswith(_METADATA_SUFFIXES):
            dist = _read(entry / name)
            if dist is not None:
                found.append(dist)
    return found


def _read(path: Path) -> Distribution | None:
    """The distribution whose metadata is at ``path``, or None if it has no name or version."""
    egg = path.name.lower().endswith(".egg-info")
    if path.is_dir():
        file = path / ("PKG-INFO" if egg else "METADATA")
    elif egg:
        file = path  # an egg-info file is the PKG-INFO itself
    else:
        return None
    headers = _headers(file)
    if headers is None:
        return None
    name = _first(headers, "name")
    found_version = _first(headers, "version")
    if not name or not found_version:
        return None
    requirements = None if egg else tuple(v for k, v in headers if k == "requires-dist")
    return Distribution(name, found_version, path, requirements)


def _headers(file: Path) -> list[tuple[str, str]] | None:
    """The header block of a metadata file (RFC 822 style): ``(lower-case key, value)`` pairs
    in order, continuation lines joined; None when the file cannot be read."""
    try:
        with open(file, "rb") as handle:
            data = handle.read(_HEADER_READ)
            while b"\n\n" not in data and b"\r\n\r\n" not in data:
                more = handle.read(_HEADER_READ)
                if not more:
                    break
                data += more
    except OSError:
        return None
    headers: list[tuple[str, str]] = []
    for line in data.decode("utf-8", errors="replace").splitlines():
        if not line:
            break
        if line[0] in " \t":
            if headers:
                key, value = headers[-1]
                headers[-1] = (key, f"{value} {line.strip()}".strip())
            continue
        key, colon, value = line.partition(":")
        if colon:
            headers.append((key.strip().lower(), value.strip()))
    return headers


def _first(headers: list[tuple[str, str]], key: str) -> str | None:
    return next((value for k, value in headers if k == key), None)


def _scan_with_importlib(entry: Path) -> list[Distribution]:
    """A ``sys.path`` entry that is not a directory (a zip archive): importlib.metadata reads it."""
    if not entry.is_file():
        return []
    from importlib import metadata

    found = []
    for dist in metadata.distributions(path=[str(entry)]):
        meta: Any = dist.metadata
        name, found_version = meta["Name"], meta["Version"]
        if name and found_version:
            found.append(Distribution(name, found_version, entry, tuple(dist.requires or [])))
    return found
