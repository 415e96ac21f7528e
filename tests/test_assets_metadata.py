"""Assets and metadata (format 1.1): files that travel with a model, verified like every
member; labels and provenance in the manifest.

Packing takes files and directories (walked like a SavedModel, empty directories kept),
refuses names the format forbids, links and collisions (never renames); unpack extracts
them; ``kbundle.open`` gives their verified paths for as long as the result is open. The
reader refuses an asset member no ``assets`` entry accounts for. Provenance is read from a
real git repository made in the test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bundle_factory import digest
from conftest import REPO, assert_clean_failure, child_env, run_cli
from schema_support import assert_valid_manifest, schema_errors

import kbundle
from kbundle.container.manifest import parse_manifest
from kbundle.errors import BundleFormatError, UsageError

LABEL_MAP = {"0": "cat", "1": "dog", "2": "bird"}


def example() -> dict[str, Any]:
    return json.loads((REPO / "spec" / "example-manifest.json").read_text())  # type: ignore[no-any-return]


@pytest.fixture
def asset_files(tmp_path: Path) -> tuple[Path, Path]:
    """A label map (a file) and a vocabulary (a directory with a subdirectory and an empty
    one)."""
    label_map = tmp_path / "src" / "labels.json"
    label_map.parent.mkdir()
    label_map.write_text(json.dumps(LABEL_MAP))
    vocab = tmp_path / "src" / "vocab"
    (vocab / "extra").mkdir(parents=True)
    (vocab / "empty").mkdir()
    (vocab / "words.txt").write_text("the\nquick\nbrown\nfox\n")
    (vocab / "extra" / "stop.txt").write_text("a\nan\n")
    return label_map, vocab


@pytest.fixture
def trained_classifier(keras: Any) -> tuple[Any, Any]:
    """A 3-class classifier trained for a few epochs on data made here, and its inputs."""
    keras.utils.set_random_seed(3)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((240, 6)).astype("float32")
    y = (x[:, 0] > 0.5).astype("int64") + (x[:, 1] > 0.5).astype("int64")
    model = keras.Sequential(
        [
            keras.Input((6,), name="features"),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(3, activation="softmax"),
        ],
        name="classifier",
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=4, batch_size=32, verbose=0)
    return model, x[:8]


# --------------------------------------------------------------------------------------------
# Packing, loading, unpacking


def test_assets_travel_verified_and_open_gives_their_paths_after_training(
    tmp_path: Path, asset_files: tuple[Path, Path], trained_classifier: tuple[Any, Any]
) -> None:
    model, batch = trained_classifier
    label_map, vocab = asset_files
    result = kbundle.pack(
        model, tmp_path / "m.kbundle", assets=[label_map, vocab], labels={"dataset": "toy-v1"}
    )
    manifest = json.loads(kbundle.inspect(result.path).manifest_bytes)
    assert_valid_manifest(manifest)
    assert manifest["assets"] == [{"path": "assets/labels.json"}, {"path": "assets/vocab"}]
    assert [m["path"] for m in manifest["members"] if m["path"].startswith("assets/")] == [
        "assets/labels.json",
        "assets/vocab",
        "assets/vocab/empty",
        "assets/vocab/extra",
        "assets/vocab/words.txt",
        "assets/vocab/extra/stop.txt",
    ]
    assert kbundle.verify(result.path).files_checked == len(
        [m for m in manifest["members"] if m["type"] == "file"]
    )

    with kbundle.open(result.path, expect=result.digest) as opened:
        assert set(opened.assets) == {"labels.json", "vocab"}
        names = json.loads(opened.assets["labels.json"].read_text())
        assert (opened.assets["vocab"] / "words.txt").read_text() == "the\nquick\nbrown\nfox\n"
        assert (opened.assets["vocab"] / "empty").is_dir()
        predicted = opened.model.predict(batch, verbose=0).argmax(axis=1)
        expected = model.predict(batch, verbose=0).argmax(axis=1)
        assert [names[str(i)] for i in predicted] == [LABEL_MAP[str(i)] for i in expected]
        assert opened.metadata.labels == {"dataset": "toy-v1"}
        directory = opened.directory
        assert opened.to_dict()["assets"]["vocab"] == str(directory / "assets" / "vocab")
    assert opened.closed and not directory.exists()


def test_unpack_extracts_the_assets(
    tmp_path: Path, asset_files: tuple[Path, Path], saved_keras_file: Path
) -> None:
    label_map, vocab = asset_files
    bundle = kbundle.pack(
        saved_keras_file, tmp_path / "m.kbundle", assets=[label_map, vocab], probe=False
    ).path
    result = run_cli("unpack", bundle, "-d", tmp_path / "out", "--no-load", "--json")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)["assets"]
    assert shown == {
        "labels.json": str(tmp_path / "out" / "assets" / "labels.json"),
        "vocab": str(tmp_path / "out" / "assets" / "vocab"),
    }
    assert json.loads(Path(shown["labels.json"]).read_text()) == LABEL_MAP
    assert (tmp_path / "out" / "assets" / "vocab" / "extra" / "stop.txt").read_text() == "a\nan\n"


def test_open_without_loading_runs_nothing_and_still_gives_assets(
    tmp_path: Path, asset_files: tuple[Path, Path], saved_keras_file: Path
) -> None:
    bundle = kbundle.pack(
        saved_keras_file, tmp_path / "m.kbundle", assets=[asset_files[0]], probe=False
    ).path
    opened = kbundle.open(bundle, load_model=False)
    try:
        assert opened.model is None
        assert json.loads(opened.assets["labels.json"].read_text()) == LABEL_MAP
    finally:
        opened.close()
    opened.close()  # closing twice is harmless


def test_the_cli_packs_assets_and_labels_and_inspect_shows_them(
    tmp_path: Path, asset_files: tuple[Path, Path], saved_keras_file: Path
) -> None:
    label_map, vocab = asset_files
    bundle = tmp_path / "m.kbundle"
    packed = run_cli(
        "pack", saved_keras_file, "-o", bundle, "--asset", label_map, "--asset", vocab,
        "--label", "team=nlp", "--label", "note=a=b", "--no-probe", "-q",
    )  # fmt: skip
    assert packed.returncode == 0, packed.stderr
    lines = run_cli("inspect", bundle).stdout.splitlines()
    assert "assets      labels.json, vocab/" in lines
    assert "labels      note=a=b, team=nlp" in lines
    (provenance,) = [line for line in lines if line.startswith("provenance  ")]
    assert f"kbundle{os.sep}__main__.py pack {saved_keras_file} -o {bundle} --asset" in provenance


def test_a_label_without_a_value_is_a_usage_error(tmp_path: Path, saved_keras_file: Path) -> None:
    result = run_cli("pack", saved_keras_file, "-o", tmp_path / "m.kbundle", "--label", "team")
    assert_clean_failure(result, 2)
    assert "kbundle: error: --label must be KEY=VALUE: 'team'; write --label team=nlp" in (
        result.stderr
    )
    assert not (tmp_path / "m.kbundle").exists()


def test_a_label_shown_by_inspect_cannot_move_the_cursor(
    tmp_path: Path, saved_keras_file: Path
) -> None:
    bundle = kbundle.pack(
        saved_keras_file,
        tmp_path / "m.kbundle",
        probe=False,
        labels={"note": "ok\x1b[2K\nsigned by"},
    ).path
    shown = run_cli("inspect", bundle).stdout
    assert "\x1b" not in shown
    assert "labels      note=ok\\x1b[2K\\nsigned by" in shown.splitlines()


# --------------------------------------------------------------------------------------------
# What pack refuses (never renames), leaving nothing behind


def _refused(tmp_path: Path, model: Path, assets: list[Path], message: str) -> None:
    output = tmp_path / "out" / "m.kbundle"
    output.parent.mkdir(exist_ok=True)
    with pytest.raises(UsageError) as caught:
        kbundle.pack(model, output, assets=assets, probe=False)
    assert caught.value.message == message
    assert list(output.parent.iterdir()) == []


def test_an_asset_name_the_format_forbids_is_refused(
    tmp_path: Path, saved_keras_file: Path
) -> None:
    device = tmp_path / "aux.txt"
    device.write_text("x")
    _refused(
        tmp_path,
        saved_keras_file,
        [device],
        f"asset {str(device)!r} cannot travel as 'assets/aux.txt': component 'aux.txt' cannot "
        "be created on every file system",
    )
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "name.").write_text("x")
    _refused(
        tmp_path,
        saved_keras_file,
        [folder],
        f"asset {str(folder / 'name.')!r} cannot travel as 'assets/data/name.': component "
        "'name.' cannot be created on every file system",
    )


def test_links_and_missing_assets_are_refused(tmp_path: Path, saved_keras_file: Path) -> None:
    target = tmp_path / "real.json"
    target.write_text("{}")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    _refused(
        tmp_path,
        saved_keras_file,
        [link],
        f"asset {str(link)!r} is not a regular file or directory (a link, device or FIFO)",
    )
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "inner.json").symlink_to(target)
    _refused(
        tmp_path,
        saved_keras_file,
        [folder],
        f"{folder / 'inner.json'} is not a regular file (link, device or FIFO)",
    )
    missing = tmp_path / "missing.json"
    _refused(
        tmp_path,
        saved_keras_file,
        [missing],
        f"asset {str(missing)!r} cannot be read: No such file or directory",
    )


def test_two_assets_with_one_name_are_refused(tmp_path: Path, saved_keras_file: Path) -> None:
    first, second = tmp_path / "a" / "Vocab.txt", tmp_path / "b" / "vocab.txt"
    for path in (first, second):
        path.parent.mkdir()
        path.write_text("x")
    _refused(
        tmp_path,
        saved_keras_file,
        [first, second],
        f"assets {str(first)!r} and {str(second)!r} would both be 'assets/vocab.txt'",
    )


def test_labels_must_be_strings_with_sensible_keys(tmp_path: Path, saved_keras_file: Path) -> None:
    for labels, message in (
        ({"": "x"}, "label key must be non-empty printable text without '=': ''"),
        ({"a=b": "x"}, "label key must be non-empty printable text without '=': 'a=b'"),
        ({"epoch": 3}, "labels map strings to strings: 'epoch': 3"),
    ):
        with pytest.raises(UsageError) as caught:
            kbundle.pack(saved_keras_file, tmp_path / "m.kbundle", labels=labels, probe=False)  # type: ignore[arg-type]
        assert caught.value.message == message
    assert not (tmp_path / "m.kbundle").exists()


# --------------------------------------------------------------------------------------------
# What the reader refuses


def _with_assets(
    assets: list[dict[str, str]], extra: list[tuple[str, bytes | None]]
) -> dict[str, Any]:
    manifest = example()
    manifest["assets"] = assets
    for path, data in extra:
        member = (
            {"path": path, "type": "dir", "size": None, "digest": None}
            if data is None
            else {"path": path, "type": "file", "size": len(data), "digest": digest(data)}
        )
        manifest["members"].append(member)
    return manifest


@pytest.mark.parametrize(
    ("assets", "extra", "problem"),
    [
        (
            [{"path": "assets/labels.json"}],
            [("assets/stray.py", b"import os\n")],
            "members[2].path: 'assets/stray.py' is neither an asset nor inside a directory "
            "asset (assets[].path)",
        ),
        (
            [{"path": "assets/labels.json"}, {"path": "assets/missing.txt"}],
            [],
            "assets[1].path: not a listed member: 'assets/missing.txt'",
        ),
        (
            [{"path": "assets/labels.json"}, {"path": "assets/d"}, {"path": "assets/d/x.txt"}],
            [("assets/d", None), ("assets/d/x.txt", b"x")],
            "assets[2].path: an asset is one entry directly under assets/: 'assets/d/x.txt'",
        ),
        (
            [{"path": "assets/labels.json"}, {"path": "assets/labels.json"}],
            [],
            "assets[1].path: named twice: 'assets/labels.json'",
        ),
        (
            [{"path": "assets/labels.json"}, {"path": "model/model.keras"}],
            [],
            "assets[1].path: must be under assets/: 'model/model.keras'",
        ),
    ],
)
def test_the_reader_refuses_assets_the_manifest_does_not_account_for(
    assets: list[dict[str, str]], extra: list[tuple[str, bytes | None]], problem: str
) -> None:
    manifest = _with_assets(assets, extra)
    with pytest.raises(BundleFormatError) as caught:
        parse_manifest(json.dumps(manifest).encode())
    assert caught.value.message == f"the manifest breaks 1 format rule(s): {problem}"


def test_a_directory_asset_accounts_for_everything_under_it() -> None:
    manifest = _with_assets(
        [{"path": "assets/labels.json"}, {"path": "assets/d"}],
        [("assets/d", None), ("assets/d/sub", None), ("assets/d/sub/x.txt", b"x")],
    )
    parsed = parse_manifest(json.dumps(manifest).encode())
    assert [a.name for a in parsed.assets] == ["labels.json", "d"]
    assert_valid_manifest(manifest)
    nested = _with_assets([{"path": "assets/d/sub"}], [])
    assert any("assets[0].path" in error for error in schema_errors(nested))


# --------------------------------------------------------------------------------------------
# Provenance


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


@pytest.fixture
def git_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A real git repository with one commit, as the current directory."""
    repo = tmp_path / "project"
    repo.mkdir()
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "test@example.invalid")
    _git(repo, "config", "user.name", "test")
    (repo / "train.py").write_text("print('training')\n")
    _git(repo, "add", "train.py")
    _git(repo, "commit", "-q", "-m", "first")
    monkeypatch.chdir(repo)
    return repo


def _provenance(bundle: Path) -> dict[str, Any]:
    return json.loads(kbundle.inspect(bundle).manifest_bytes)["metadata"]["provenance"]  # type: ignore[no-any-return]


def test_provenance_records_the_commit_whether_tracked_files_changed_and_the_command(
    git_repo: Path, saved_keras_file: Path
) -> None:
    commit = _git(git_repo, "rev-parse", "HEAD")
    (git_repo / "checkpoint.log").write_text("untracked files do not count\n")
    clean = kbundle.pack(saved_keras_file, git_repo / "clean.kbundle", probe=False).path
    assert _provenance(clean) == {
        "git_commit": commit,
        "git_dirty": False,
        "command": sys.argv,
        "hostname": None,
    }
    (git_repo / "train.py").write_text("print('changed')\n")
    dirty = kbundle.pack(
        saved_keras_file, git_repo / "dirty.kbundle", probe=False, record_hostname=True
    ).path
    recorded = _provenance(dirty)
    assert (recorded["git_commit"], recorded["git_dirty"]) == (commit, True)
    assert recorded["hostname"] == os.uname().nodename


def test_the_cli_records_its_own_command_line_and_can_record_nothing(
    git_repo: Path, saved_keras_file: Path
) -> None:
    bundle = git_repo / "m.kbundle"
    packed = run_cli("pack", saved_keras_file, "-o", bundle, "--no-probe", "-q", cwd=git_repo)
    assert packed.returncode == 0, packed.stderr
    recorded = _provenance(bundle)
    assert recorded["git_commit"] == _git(git_repo, "rev-parse", "HEAD")
    assert recorded["command"][1:] == [
        "pack",
        str(saved_keras_file),
        "-o",
        str(bundle),
        "--no-probe",
        "-q",
    ]
    quiet = git_repo / "quiet.kbundle"
    packed = run_cli(
        "pack", saved_keras_file, "-o", quiet, "--no-probe", "--no-provenance", "-q", cwd=git_repo
    )
    assert packed.returncode == 0, packed.stderr
    assert json.loads(kbundle.inspect(quiet).manifest_bytes)["metadata"] == {
        "labels": {},
        "provenance": None,
    }


def test_outside_a_repository_and_when_reproducible_less_is_recorded(
    tmp_path: Path, saved_keras_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outside = tmp_path / "not-a-repo"
    outside.mkdir()
    monkeypatch.chdir(outside)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    bundle = kbundle.pack(saved_keras_file, outside / "m.kbundle", probe=False).path
    assert (_provenance(bundle)["git_commit"], _provenance(bundle)["git_dirty"]) == (None, None)
    env = child_env(SOURCE_DATE_EPOCH="1767225600", GIT_CEILING_DIRECTORIES=str(tmp_path))
    for name in ("a", "b"):
        packed = run_cli(
            "pack", saved_keras_file, "-o", outside / f"{name}.kbundle", "--no-probe", "-q",
            cwd=outside, env=env,
        )  # fmt: skip
        assert packed.returncode == 0, packed.stderr
    assert _provenance(outside / "a.kbundle")["command"] is None
    assert (
        kbundle.inspect(outside / "a.kbundle").digest
        == kbundle.inspect(outside / "b.kbundle").digest
    )
