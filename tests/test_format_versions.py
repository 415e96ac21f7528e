"""Format 1.0 and 1.1 in both directions.

* This (1.1) reader reads 1.0 bundles: ``tests/fixtures/format-1.0/tiny.kbundle`` was written
  by the 1.0 writer (its README says how) and is verified, inspected, loaded, opened, unpacked
  and diffed here.
* A 1.0 reader on 1.1 bundles: the kbundle package as it was at the last 1.0 commit, taken
  from git into a temporary directory and run as ``python -m kbundle``. It is the real 1.0
  code, not this code with a constant patched, so what it does is what deployed 1.0 readers
  do: a 1.1 bundle without assets reads (with a "newer format" warning, the metadata ignored);
  one with assets is refused, nothing extracted.
* This reader on a newer minor (a forged 1.2 that adds a payload area referenced by a field
  1.1 does not know): refused as a newer format, exit 2, not as a damaged bundle.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
import warnings
from pathlib import Path
from typing import Any

import pytest
from bundle_factory import Entry, digest, forge, payload_entries, real_manifest
from conftest import REPO, assert_clean_failure, child_env, run_cli
from schema_support import SCHEMA_1_0_PATH, assert_valid_manifest, schema_errors

import kbundle
from kbundle.container.manifest import FORMAT_VERSION, NewerFormatWarning, parse_manifest
from kbundle.errors import UnsupportedFormatVersionError

FIXTURE = REPO / "tests" / "fixtures" / "format-1.0" / "tiny.kbundle"
FIXTURE_DIGEST = "sha256:6631bdc5ebf311db8991b8e6fc723b68b1a0c680809c2c52963f69b15a9ec16d"
# The last commit whose writer and reader are format 1.0.
FORMAT_1_0_COMMIT = "9a1f30d"
NEWER_WARNING = "kbundle: warning: bundle format 1.1 is newer than 1.0; unknown fields are ignored"


def test_this_is_the_1_1_reader() -> None:
    assert FORMAT_VERSION == "1.1"


# --------------------------------------------------------------------------------------------
# A 1.0 bundle, read by this reader


def test_a_1_0_bundle_verifies_and_reads_with_the_defaults_of_1_1() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", NewerFormatWarning)  # 1.0 is not newer: no warning
        report = kbundle.verify(FIXTURE, expect=FIXTURE_DIGEST)
        head = kbundle.inspect(FIXTURE)
    assert report.files_checked == 4
    raw = json.loads(head.manifest_bytes)
    assert raw["format_version"] == "1.0"
    assert "assets" not in raw and "metadata" not in raw
    assert_valid_manifest(raw, SCHEMA_1_0_PATH)
    assert schema_errors(raw) != []  # the 1.1 schema describes what a 1.1 writer emits
    assert head.manifest.assets == []
    assert head.manifest.metadata is None
    assert head.manifest.model.name == "format_1_0_fixture"


def test_a_1_0_bundle_loads_and_its_probe_still_matches() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", kbundle.EnvironmentWarning)  # packed elsewhere, maybe
        with kbundle.open(FIXTURE, expect=FIXTURE_DIGEST, ignore_env=True) as opened:
            assert opened.assets == {}
            assert opened.metadata.labels == {}
            assert opened.metadata.provenance is None
            model = opened.model
    # The load re-ran the stored probe (it raises on a mismatch); the model is the 1.0 one.
    assert model.name == "format_1_0_fixture"
    assert [layer.name for layer in model.layers] == ["logits"]


def test_a_1_0_bundle_unpacks_and_inspects_on_the_command_line(tmp_path: Path) -> None:
    unpacked = run_cli("unpack", FIXTURE, "-d", tmp_path / "out", "--no-load", "--json")
    assert unpacked.returncode == 0, unpacked.stderr
    assert json.loads(unpacked.stdout)["assets"] == {}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "env",
        "kbundle.json",
        "model",
        "probe",
    ]
    inspected = run_cli("inspect", FIXTURE)
    assert inspected.returncode == 0, inspected.stderr
    assert "format      kbundle 1.0, written by kbundle 0.1.0 at 2026-01-01T00:00:00Z" in (
        inspected.stdout.splitlines()
    )
    assert "labels" not in inspected.stdout and "provenance" not in inspected.stdout


def test_a_1_0_bundle_diffs_against_a_1_1_pack_of_its_model(tmp_path: Path) -> None:
    with kbundle.open(FIXTURE, load_model=False) as opened:
        model_file = tmp_path / "model.keras"
        shutil.copyfile(opened.directory / "model" / "model.keras", model_file)
    repacked = kbundle.pack(model_file, tmp_path / "new.kbundle", probe=False).path
    result = kbundle.diff(FIXTURE, repacked)
    notes = {c.location: (c.before, c.after) for c in result.section("notes")}
    assert notes["format_version"] == ("1.0", "1.1")
    assert [c.location for c in result.section("members")] == [
        "probe/inputs.npz",
        "probe/outputs.npz",
    ]  # the same model file; the new pack has no probe
    assert result.section("architecture") == [] and result.section("weights") == []


# --------------------------------------------------------------------------------------------
# 1.1 bundles, read by the 1.0 reader


@pytest.fixture(scope="module")
def reader_1_0(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The kbundle package of the last 1.0 commit, extracted from git."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed: the 1.0 reader is taken from the repository")
    found = subprocess.run(
        ["git", "-C", str(REPO), "cat-file", "-e", f"{FORMAT_1_0_COMMIT}^{{commit}}"],
        capture_output=True,
    )
    if found.returncode != 0:
        pytest.skip(f"commit {FORMAT_1_0_COMMIT} is not in this checkout (a shallow clone?)")
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", FORMAT_1_0_COMMIT, "kbundle"],
        capture_output=True,
        check=True,
    )
    root = tmp_path_factory.mktemp("kbundle-1.0")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(root, filter="data")
    manifest_module = (root / "kbundle" / "container" / "manifest.py").read_text()
    assert 'FORMAT_VERSION = "1.0"' in manifest_module
    return root


def run_1_0(root: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """``python -m kbundle ARGS`` with the 1.0 package (run from its own directory, which
    ``-m`` puts first on sys.path)."""
    env = child_env()
    env["PYTHONPATH"] = str(root)
    return subprocess.run(
        [sys.executable, "-m", "kbundle", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=root,
        env=env,
        timeout=300,
    )


def test_the_1_0_reader_reads_a_1_1_bundle_without_assets(
    reader_1_0: Path, tmp_path: Path, saved_keras_file: Path
) -> None:
    bundle = kbundle.pack(
        saved_keras_file, tmp_path / "plain.kbundle", probe=False, labels={"team": "nlp"}
    ).path
    verified = run_1_0(reader_1_0, "verify", bundle)
    assert verified.returncode == 0, verified.stderr
    assert NEWER_WARNING in verified.stderr.splitlines()
    assert verified.stdout.split()[0] == kbundle.inspect(bundle).digest
    inspected = run_1_0(reader_1_0, "inspect", bundle, "--json")
    assert inspected.returncode == 0, inspected.stderr
    manifest = json.loads(inspected.stdout)["manifest"]
    assert manifest["format_version"] == "1.1"
    assert "metadata" not in manifest  # ignored, as section 11 says


def test_the_1_0_reader_refuses_a_1_1_bundle_with_assets_and_extracts_nothing(
    reader_1_0: Path, tmp_path: Path, saved_keras_file: Path
) -> None:
    labels = tmp_path / "labels.json"
    labels.write_text('{"0": "no", "1": "yes"}\n')
    bundle = kbundle.pack(
        saved_keras_file, tmp_path / "assets.kbundle", probe=False, assets=[labels]
    ).path
    for args in (("verify", bundle), ("unpack", bundle, "-d", tmp_path / "out", "--no-load")):
        refused = run_1_0(reader_1_0, *args)
        assert_clean_failure(refused, 1)
        lines = refused.stderr.splitlines()
        assert lines[0] == NEWER_WARNING
        assert lines[1].startswith(
            "kbundle: error: the manifest breaks 1 format rule(s): members[2].path: not under "
            "a payload area (model/, code/, objects/, env/, probe/): 'assets/labels.json'"
        ), lines
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------
# A newer minor, read by this reader


def _format_1_2(manifest: dict[str, Any], notes: bytes) -> dict[str, Any]:
    """``manifest`` as a future 1.2 writer might write it: a payload area ``extras/`` whose
    member only the 1.2 field ``extras`` references."""
    return {
        **manifest,
        "format_version": "1.2",
        "members": [
            *manifest["members"],
            {
                "path": "extras/notes.txt",
                "type": "file",
                "size": len(notes),
                "digest": digest(notes),
            },
        ],
        "extras": [{"path": "extras/notes.txt"}],
    }


def test_a_newer_minor_that_adds_a_payload_area_is_refused_as_a_newer_format(
    tmp_path: Path, saved_keras_file: Path
) -> None:
    honest = kbundle.pack(saved_keras_file, tmp_path / "honest.kbundle", probe=False).path
    notes = b"written by kbundle 1.2\n"
    manifest = _format_1_2(real_manifest(honest), notes)
    with pytest.warns(NewerFormatWarning), pytest.raises(UnsupportedFormatVersionError) as caught:
        parse_manifest(json.dumps(manifest).encode())
    assert caught.value.message == (
        "bundle format 1.2 is newer than this kbundle reads (1.1) and uses what it cannot "
        "check: the manifest breaks 1 format rule(s): members[2].path: not under a payload "
        "area (model/, code/, objects/, env/, probe/, assets/): 'extras/notes.txt'"
    )
    assert caught.value.hint == "install a kbundle release that reads format 1.2"

    forged = forge(
        tmp_path / "newer.kbundle",
        manifest,
        [*payload_entries(honest), Entry("extras/notes.txt", notes)],
    )
    result = run_cli("verify", forged)
    assert_clean_failure(result, 2)
    assert "kbundle: warning: bundle format 1.2 is newer than 1.1; unknown fields are ignored" in (
        result.stderr
    )
    assert "kbundle: error: bundle format 1.2 is newer than this kbundle reads (1.1)" in (
        result.stderr
    )


def test_a_newer_minor_that_only_adds_fields_reads_with_a_warning(
    tmp_path: Path, saved_keras_file: Path
) -> None:
    honest = kbundle.pack(saved_keras_file, tmp_path / "honest.kbundle", probe=False).path
    manifest = {**real_manifest(honest), "format_version": "1.2", "reviewed_by": "someone"}
    forged = forge(tmp_path / "newer.kbundle", manifest, payload_entries(honest))
    with pytest.warns(NewerFormatWarning, match=r"^bundle format 1\.2 is newer than 1\.1"):
        report = kbundle.verify(forged)
    assert report.head.manifest.format_version == "1.2"


def test_a_damaged_bundle_of_this_version_is_still_reported_as_damaged() -> None:
    """The newer-format refusal is only for newer minors: the same break in a 1.1 manifest is
    a format error (exit 1)."""
    example = json.loads((REPO / "spec" / "example-manifest.json").read_text())
    example["members"].append(
        {"path": "extras/x", "type": "file", "size": 0, "digest": digest(b"")}
    )
    with pytest.raises(kbundle.BundleFormatError, match="not under a payload area"):
        parse_manifest(json.dumps(example).encode())
