"""The documentation says what the code does: the CLI reference is generated from --help and
must be current; relative links in README, docs/ and spec/ resolve."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, child_env, run_cli, run_python


def test_cli_reference_matches_help() -> None:
    result = run_python(REPO / "tools" / "cli_reference.py", "--check", timeout=120)
    assert result.returncode == 0, result.stderr


def test_relative_links_resolve() -> None:
    broken = []
    for document in [
        REPO / "README.md",
        *sorted((REPO / "docs").glob("*.md")),
        *sorted((REPO / "spec").glob("*.md")),
        *sorted((REPO / "examples").glob("*.md")),
    ]:
        text = document.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (document.parent / target).exists():
                broken.append(f"{document.relative_to(REPO)} -> {target}")
    assert broken == []


def test_every_exit_code_in_the_table_is_documented_in_the_readme() -> None:
    from kbundle.cli import EXIT_CODES

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for _, code, _ in EXIT_CODES:
        assert f"| {code} |" in readme, code


def test_python_api_reference_matches_the_code() -> None:
    result = run_python(REPO / "tools" / "api_reference.py", "--check", timeout=120)
    assert result.returncode == 0, result.stderr


def test_demo_example_runs_end_to_end(tmp_path: Path) -> None:
    """examples/demo.py is what `make demo` runs: it must succeed and report identical outputs."""
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / "demo.py"), str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "predictions bit-identical" in result.stdout


def test_archive_example_reports_a_clean_environment(
    tmp_path: Path, saved_keras_file: Path
) -> None:
    bundle = tmp_path / "m.kbundle"
    packed = run_cli("pack", saved_keras_file, "-o", bundle, "--no-probe", "-q")
    assert packed.returncode == 0, packed.stderr
    inspected = run_cli("inspect", bundle, "--json")
    assert inspected.returncode == 0, inspected.stderr
    import json

    pinned = json.loads(inspected.stdout)["digest"]
    result = subprocess.run(
        ["bash", str(REPO / "examples" / "archive.sh"), str(bundle), pinned],
        capture_output=True,
        text=True,
        env=child_env(PATH=f"{Path(sys.executable).parent}:{__import__('os').environ['PATH']}"),
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    corrupt = tmp_path / "corrupt.kbundle"
    corrupt.write_bytes(bundle.read_bytes()[:-100])
    damaged = subprocess.run(
        ["bash", str(REPO / "examples" / "archive.sh"), str(corrupt)],
        capture_output=True,
        text=True,
        env=child_env(PATH=f"{Path(sys.executable).parent}:{__import__('os').environ['PATH']}"),
        timeout=300,
    )
    assert damaged.returncode == 1, damaged.stdout + damaged.stderr


@pytest.mark.parametrize(
    ("script", "marker"),
    [
        ("assets_and_metadata.py", "assets OK: the bundled label map named the predictions"),
        ("keras_checkpoint.py", "checkpoints OK: the best bundle loads"),
        ("diff_checkpoints.py", "diff OK: exit 10"),
        ("mlflow_tracking.py", "mlflow OK: logged, registered and loaded back verified"),
    ],
)
def test_integration_examples_run(tmp_path: Path, script: str, marker: str) -> None:
    """The examples of docs/assets-and-metadata.md, keras-callback.md, diff.md and mlflow.md."""
    if script.startswith("mlflow"):
        pytest.importorskip("mlflow")
    result = run_python(REPO / "examples" / script, tmp_path / "work", cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == marker
