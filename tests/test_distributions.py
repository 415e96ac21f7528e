"""kbundle.env.distributions against importlib.metadata, on this environment and on small
distributions written into a directory put on sys.path."""

from __future__ import annotations

import importlib.metadata as metadata
import os
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import run_python

from kbundle.env import distributions
from kbundle.env.distributions import canonical_name


def _importlib_view() -> dict[str, tuple[str, list[str]]]:
    """What importlib.metadata says, keyed the same way: first on sys.path wins."""
    view: dict[str, tuple[str, list[str]]] = {}
    for dist in metadata.distributions():
        name, version = dist.metadata["Name"], dist.metadata["Version"]
        if name and version:
            view.setdefault(canonical_name(name), (version, list(dist.requires or [])))
    return view


def test_agrees_with_importlib_metadata_on_this_environment() -> None:
    expected = _importlib_view()
    found = distributions.versions()
    assert found == {name: v for name, (v, _) in expected.items()}
    assert len(found) > 20  # a real environment: TensorFlow, Keras, h5py, numpy, ...
    for name in found:
        dist = distributions.find(name)
        assert dist is not None
        assert (dist.version, dist.requires()) == expected[name], name


def test_lookup_by_any_spelling() -> None:
    assert distributions.version("Typing_Extensions") == metadata.version("typing-extensions")
    assert distributions.version("no-such-distribution-kb") is None
    assert distributions.find("no-such-distribution-kb") is None
    h5py = distributions.find("h5py")
    assert h5py is not None
    assert h5py.locate("h5py/__init__.py").is_file()
    assert "h5py/__init__.py" in h5py.files()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Path]:
    """An empty directory first on sys.path."""
    directory = tmp_path / "site"
    directory.mkdir()
    sys.path.insert(0, str(directory))
    try:
        yield directory
    finally:
        sys.path.remove(str(directory))


def _dist_info(site: Path, name: str, version: str, extra_headers: str = "") -> Path:
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    text = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n{extra_headers}\nBody: x\n"
    (info / "METADATA").write_text(text, encoding="utf-8")
    return info


def test_headers_continuations_and_body(site: Path) -> None:
    _dist_info(
        site,
        "Kb-Demo.Pkg",
        "1.2.3",
        "Summary: a long\n  summary on two lines\nrequires-dist: numpy>=1.0\n"
        "Requires-Dist: rich ; extra == 'cli'\n",
    )
    dist = distributions.find("kb_demo_pkg")
    assert dist is not None
    assert (dist.name, dist.version) == ("Kb-Demo.Pkg", "1.2.3")
    assert dist.requires() == ["numpy>=1.0", "rich ; extra == 'cli'"]
    assert dist.requires() == metadata.requires("kb-demo-pkg")
    assert distributions.versions()["kb-demo-pkg"] == "1.2.3"


def test_first_on_path_wins_and_shadows_site_packages(site: Path, tmp_path: Path) -> None:
    installed = metadata.version("packaging")
    _dist_info(site, "packaging", "0.0.1")
    later = tmp_path / "later"
    later.mkdir()
    _dist_info(later, "packaging", "0.0.2")
    sys.path.append(str(later))
    try:
        assert distributions.version("packaging") == "0.0.1" == metadata.version("packaging")
    finally:
        sys.path.remove(str(later))
    assert installed != "0.0.1"


def test_a_new_distribution_is_seen_without_restarting(site: Path) -> None:
    assert distributions.find("kb-late") is None
    _dist_info(site, "kb-late", "2.0")  # changes the directory's mtime: a fresh scan
    assert distributions.version("kb-late") == "2.0"


def test_egg_info_directory_and_file(site: Path) -> None:
    egg = site / "kb_egg-0.3-py3.11.egg-info"
    egg.mkdir()
    (egg / "PKG-INFO").write_text("Metadata-Version: 1.1\nName: kb-egg\nVersion: 0.3\n")
    (egg / "requires.txt").write_text("click\n\n[cli]\nrich\n")
    (site / "kb_flat-0.4.egg-info").write_text(
        "Metadata-Version: 1.1\nName: kb-flat\nVersion: 0.4\n"
    )
    dist = distributions.find("kb-egg")
    assert dist is not None
    assert dist.requires() == metadata.requires("kb-egg") == ["click", 'rich; extra == "cli"']
    assert distributions.version("kb-flat") == "0.4"


def test_unusable_metadata_is_skipped(site: Path) -> None:
    (site / "kb_noversion-1.dist-info").mkdir()
    (site / "kb_noversion-1.dist-info" / "METADATA").write_text("Name: kb-noversion\n\n")
    (site / "kb_nofile-1.dist-info").mkdir()
    (site / "kb_notadir-1.dist-info").write_text("Name: kb-notadir\nVersion: 1\n")
    assert distributions.find("kb-noversion") is None
    assert distributions.find("kb-nofile") is None
    assert distributions.find("kb-notadir") is None


def test_zip_entries_are_read_by_importlib(tmp_path: Path) -> None:
    archive = tmp_path / "dists.zip"
    with zipfile.ZipFile(archive, "w") as out:
        out.writestr("kb_zipped-5.0.dist-info/METADATA", "Name: kb-zipped\nVersion: 5.0\n")
    sys.path.insert(0, str(archive))
    try:
        assert distributions.version("kb-zipped") == "5.0" == metadata.version("kb-zipped")
    finally:
        sys.path.remove(str(archive))


def test_environment_capture_does_not_import_importlib_metadata() -> None:
    result = run_python(
        "-c",
        "import sys\n"
        "from kbundle.env.capture import capture_environment\n"
        "env = capture_environment()\n"
        "assert env.keras and env.tensorflow and env.distributions['h5py']\n"
        "print(sorted(m for m in sys.modules if m.startswith(('importlib.metadata', 'email'))))",
    )
    assert (result.returncode, result.stdout.strip()) == (0, "[]"), result.stderr


def test_the_empty_path_entry_is_the_current_directory_of_each_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    for directory, version in ((first, "1.0"), (second, "2.0")):
        directory.mkdir()
        _dist_info(directory, "kb-cwd", version)
        os.utime(directory, ns=(1_000_000_000, 1_000_000_000))  # same mtime: only the path differs
    monkeypatch.setattr(sys, "path", ["", *sys.path])
    monkeypatch.chdir(first)
    assert distributions.version("kb-cwd") == "1.0"
    monkeypatch.chdir(second)
    assert distributions.version("kb-cwd") == "2.0" == metadata.version("kb-cwd")
