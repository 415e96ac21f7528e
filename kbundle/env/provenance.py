"""Where a bundle is being made: the current git commit and whether the tracked files have
changes, the process's command line, and (only when asked) the host name.

Recorded in the manifest's ``metadata.provenance`` (format 1.1) so that a bundle says which
run and which code it came from. Everything here is best effort and never fails a pack: a
directory outside git, a missing ``git`` program or a slow repository leaves a field ``None``.
Stable: internal; the record is format 1.1 (kbundle.container.manifest.Provenance).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from kbundle.container.manifest import Provenance

__all__ = ["capture_provenance"]

# git status walks the working tree; a huge or network-mounted repository must not hold a
# pack up for long. Past this the dirty flag is recorded as unknown.
_GIT_TIMEOUT_SECONDS = 10.0
# Repository configuration that makes git run a program of the repository's choosing during
# `git status` (a file-system monitor hook). The repository is the user's own working
# directory, but packing should run nothing beyond git itself.
_GIT_SAFE_OPTIONS = ("-c", "core.fsmonitor=false", "-c", "core.untrackedCache=false")


def capture_provenance(
    *, hostname: bool = False, command: bool = True, directory: Path | None = None
) -> Provenance:
    """The provenance of a pack run from ``directory`` (default: the current directory): the
    command line unless ``command`` is false, the host name only with ``hostname``."""
    commit, dirty = _git_state(directory or Path.cwd())
    argv = list(sys.argv) if command and sys.argv and sys.argv != [""] else None
    return Provenance(
        git_commit=commit,
        git_dirty=dirty,
        command=argv,
        hostname=_hostname() if hostname else None,
    )


def _git(directory: Path, *args: str) -> str | None:
    """The output of ``git ARGS`` run in ``directory``, or None when it fails or is slow."""
    program = shutil.which("git")
    if program is None:
        return None
    environment = {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"}
    try:
        done = subprocess.run(
            [program, *_GIT_SAFE_OPTIONS, *args],
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=_GIT_TIMEOUT_SECONDS,
            env=environment,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.SubprocessError, UnicodeDecodeError):
        return None
    return done.stdout if done.returncode == 0 else None


def _git_state(directory: Path) -> tuple[str | None, bool | None]:
    """(commit, dirty): HEAD's commit id, and whether tracked files differ from it (untracked
    files do not count: a training run writes checkpoints and logs into its own tree)."""
    head = _git(directory, "rev-parse", "--verify", "--quiet", "HEAD")
    commit = head.strip() if head else None
    if commit is None:
        return None, None
    status = _git(directory, "status", "--porcelain", "--untracked-files=no")
    return commit, None if status is None else bool(status.strip())


def _hostname() -> str | None:
    try:
        return os.uname().nodename or None
    except AttributeError:  # no os.uname (Windows)
        import socket

        return socket.gethostname() or None
