"""The documentation says what the code does: the CLI reference is generated from --help and
must be current; relative links in README, docs/ and spec/ resolve."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from conftest import REPO, child_env


def test_cli_reference_matches_help() -> None:
    result = subprocess.run([sys.executable, str(REPO / "tools" / "cli_reference.py"), "--check"], capture_output=True, text=True, env=child_env(), timeout=120)
    assert result.returncode == 0, result.stderr


def test_relative_links_resolve() -> None:
    broken = []
    for document in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "spec").glob("*.md")), *sorted((REPO / "examples").glob("*.md"))]:
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
    result = subprocess.run([sys.executable, str(REPO / "tools" / "api_reference.py"), "--check"], capture_output=True, text=True, env=child_env(), timeout=120)
    assert result.returncode == 0, result.stderr
