"""Every row of the threat model is tied to tests that exist.

tests/security/README.md has one table row per THREATS.md row (1-27), each naming its tests
as ``file.py::test_name`` (a ``::name`` after a ``;`` or ``,`` continues the last file named).
This check fails when a row is missing or a named test does not exist (renamed or deleted),
so the table cannot drift from the suite.
"""

from __future__ import annotations

import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
ROWS = 27


def _table_rows() -> dict[int, str]:
    rows = {}
    for line in (HERE / "README.md").read_text(encoding="utf-8").splitlines():
        match = re.match(r"^\| (\d+) \|", line)
        if match:
            rows[int(match.group(1))] = line
    return rows


def _named_tests(row: str) -> list[tuple[str, str]]:
    """``(file, test)`` pairs a row names; ``::name`` alone refers to the last file named."""
    named: list[tuple[str, str]] = []
    current: str | None = None
    for file, test in re.findall(r"`(?:(test_\w+\.py))?::(test_\w+)", row):
        current = file or current
        assert current is not None, row
        named.append((current, test))
    return named


def test_every_threat_row_is_in_the_table() -> None:
    assert sorted(_table_rows()) == list(range(1, ROWS + 1))


def test_every_test_the_table_names_exists() -> None:
    missing = []
    for number, row in sorted(_table_rows().items()):
        named = _named_tests(row)
        assert named, f"row {number} names no test"
        for file, test in named:
            path = HERE / file if (HERE / file).exists() else TESTS / file
            source = path.read_text(encoding="utf-8") if path.exists() else ""
            if not re.search(rf"^def {test}\(", source, re.MULTILINE):
                missing.append(f"row {number}: {file}::{test}")
    assert missing == []
