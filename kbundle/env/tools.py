"""Running the tools kbundle needs (pip, pip-compile, venv, an interpreter) as isolated
children.

Every tool runs through :func:`run_tool`: an interpreter with ``-I`` in a fresh empty
directory, so neither the current directory (an unpacked bundle, a ``pip/`` that shadows
pip) nor ``PYTHON*`` variables shape its ``sys.path`` (THREATS.md row 22). Stable: internal.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Mapping, Sequence

__all__ = ["absolute_if_path", "last_line", "run_tool"]


def run_tool(
    interpreter: str | os.PathLike[str],
    arguments: Sequence[str],
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str] | None:
    """Run ``interpreter -I ARGUMENTS`` (pip, pip-compile, venv, a version probe), its output
    captured; None on timeout.

    Isolated: ``-I`` keeps the current directory and ``PYTHON*`` variables off the child's
    ``sys.path`` (a ``pip/`` directory where kbundle runs would otherwise shadow pip), and the
    child starts in a fresh empty directory, so paths in ``arguments`` must be absolute.
    ``env`` still reaches it (pip's ``PIP_*`` settings, ``KERAS_BACKEND``). A tool that cannot
    be started at all counts as a failure with the reason in ``stderr``.
    """
    executable = absolute_if_path(os.fspath(interpreter))
    command = [executable, "-I", *arguments]
    with tempfile.TemporaryDirectory(prefix="kbundle-tool-") as empty:
        try:
            return subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=timeout,
                env=dict(env) if env is not None else None,
                cwd=empty,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return None
        except OSError as exc:
            return subprocess.CompletedProcess(command, 127, "", f"cannot run {executable}: {exc}")


def absolute_if_path(text: str) -> str:
    """``text`` made absolute when it is a relative path (it starts with '.' or holds a
    separator, pip's own test), for a child that starts in another directory; a bare name
    (``python3.11``, ``kbundle==1.0``) or a URL stays as it is."""
    looks_like_path = (
        text.startswith(".") or os.sep in text or bool(os.altsep and os.altsep in text)
    )
    return os.path.abspath(text) if looks_like_path and "://" not in text else text


def last_line(text: str) -> str:
    """The last meaningful line of a tool's output (pip's ignored-location noise skipped)."""
    lines = [
        line.strip() for line in text.splitlines() if line.strip() and "is ignored" not in line
    ]
    return lines[-1][:300] if lines else "no output"
