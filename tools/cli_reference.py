"""Render docs/cli.md from the CLI itself, so the reference says what --help says.

python tools/cli_reference.py          # rewrite docs/cli.md
python tools/cli_reference.py --check  # exit 1 if docs/cli.md is stale (the tests do this)
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kbundle.cli import EXIT_CODES, EXIT_INTERNAL, EXIT_INTERRUPTED, main  # noqa: E402

TARGET = REPO / "docs" / "cli.md"


def _help(command: click.Command, name: str, parent: click.Context | None) -> str:
    context = click.Context(
        command, info_name=name, parent=parent, max_content_width=100, terminal_width=100
    )
    return command.get_help(context)


def _walk(group: click.Group, prefix: str, parent: click.Context) -> list[tuple[str, str]]:
    sections = []
    for name in sorted(group.commands):
        command = group.commands[name]
        full = f"{prefix} {name}"
        context = click.Context(
            command, info_name=name, parent=parent, max_content_width=100, terminal_width=100
        )
        sections.append((full, command.get_help(context)))
        if isinstance(command, click.Group):
            sections.extend(_walk(command, full, context))
    return sections


def render() -> str:
    root = click.Context(main, info_name="kbundle", max_content_width=100, terminal_width=100)
    lines = [
        "# kbundle command-line reference",
        "",
        "Generated from `--help` by `tools/cli_reference.py`; a test fails when it is stale.",
        "Every command also accepts `-h`.",
        "",
        "## Exit codes",
        "",
        "| code | meaning |",
        "|---|---|",
        "| 0 | ok |",
    ]
    meanings = {code: meaning for _, code, meaning in EXIT_CODES}
    for code in sorted(meanings):
        raised = ", ".join(f"`{kind.__name__}`" for kind, same, _ in EXIT_CODES if same == code)
        lines.append(f"| {code} | {meanings[code]} ({raised}) |")
    lines += [
        f"| {EXIT_INTERNAL} | internal error: "
        "a bug in kbundle (`KBUNDLE_DEBUG=1` shows the traceback) |",
        f"| {EXIT_INTERRUPTED} | interrupted; no partial output is left behind |",
        "",
        "An error is one line on standard error. `KBUNDLE_DEBUG=1` adds the traceback of an",
        "internal error and lets other libraries' log records through (the storage libraries",
        "log their retries and give-ups), which the command otherwise drops.",
        "",
    ]
    lines += ["## kbundle", "", "```text", main.get_help(root), "```", ""]
    for name, text in _walk(main, "kbundle", root):
        lines += [f"## {name}", "", "```text", text, "```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    text = render()
    if "--check" in sys.argv:
        current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else ""
        sys.exit(
            0 if current == text else "docs/cli.md is stale: run python tools/cli_reference.py"
        )
    TARGET.write_text(text, encoding="utf-8")
