"""Putting outputs in place atomically: a complete file or directory, or nothing.

Files are written to an anonymous temporary file (Linux ``O_TMPFILE``) in the destination's
directory and linked under their final name only when complete, so a killed process leaves
nothing at all; where ``O_TMPFILE`` is unavailable a hidden named temporary file is used and
removed on any failure. An existing output is never replaced unless ``force`` is given, and
the no-overwrite check is the link itself, so two writers cannot both win. Directories are
built under a hidden temporary name beside the destination and renamed into place.
Stable: internal.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from kbundle.errors import OutputExistsError, PackError, UsageError

__all__ = ["atomic_directory", "atomic_file", "check_destination"]


def check_destination(path: Path, *, force: bool, what: str = "output") -> None:
    """Refuse early (before any work) when ``path`` exists and ``force`` is not set."""
    if path.exists() and not force:
        raise OutputExistsError(f"{what} {path} already exists", hint="pass --force to replace it")
    if path.is_dir() and not path.is_symlink() and what == "bundle":
        raise UsageError(
            f"{path} is a directory", hint="name a file for the bundle, e.g. model.kbundle"
        )
    if not path.parent.is_dir():
        raise UsageError(f"the directory {path.parent} does not exist", hint="create it first")


# Write failures that mean "the output does not fit", whatever the limit that was hit.
_FULL = {
    errno.ENOSPC: "no space left on the device",
    errno.EFBIG: "file size limit reached",
    errno.EDQUOT: "disk quota exceeded",
}


def _no_space(path: Path, code: int) -> PackError:
    return PackError(
        f"{_FULL[code]} while writing {path}",
        hint="free space or write the output elsewhere; nothing was left behind",
    )


@contextlib.contextmanager
def atomic_file(
    path: Path, *, force: bool, mode: int = 0o644, what: str = "bundle"
) -> Iterator[BinaryIO]:
    """Yield a seekable file; on success it appears at ``path`` complete, else not at all.

    ``mode`` (less the umask) is set before the file gets a name, so a private key written
    with ``0o600`` is never readable by others, not even for a moment. ``what`` names the
    output in messages.
    """
    check_destination(path, force=force, what=what)
    directory = path.parent
    fd: int | None = None
    temp_name: Path | None = None
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(directory, os.O_TMPFILE | os.O_RDWR, mode & 0o600)
    if fd is None:
        fd, name = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".partial")
        temp_name = Path(name)
    handle = os.fdopen(fd, "w+b")
    try:
        try:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        except OSError as exc:
            if exc.errno in _FULL:
                raise _no_space(path, exc.errno) from None
            raise
        os.fchmod(handle.fileno(), mode & ~_umask())
        if temp_name is None:
            temp_name = _link_anonymous(handle.fileno(), path, force=force, what=what)
        _publish(temp_name, path, force=force, what=what)
        temp_name = None
    finally:
        # After a failed write the buffer cannot be flushed either; that second error would
        # only hide the first.
        with contextlib.suppress(OSError):
            handle.close()
        if temp_name is not None:
            with contextlib.suppress(FileNotFoundError):
                temp_name.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _link_anonymous(fd: int, path: Path, *, force: bool, what: str) -> Path | None:
    """Give the anonymous file a name: ``path`` itself, or a temporary one to rename over it."""
    target = path if not force else path.with_name(f".{path.name}.{os.getpid()}.partial")
    if force:
        with contextlib.suppress(FileNotFoundError):
            target.unlink()
    directory = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        # A dir fd makes CPython call linkat(AT_SYMLINK_FOLLOW), which links the anonymous
        # file itself; plain link() would try to link the /proc symlink and fail with EXDEV.
        os.link(f"/proc/self/fd/{fd}", target.name, dst_dir_fd=directory, follow_symlinks=True)
    except FileExistsError:
        raise OutputExistsError(
            f"{what} {path} already exists", hint="pass --force to replace it"
        ) from None
    finally:
        os.close(directory)
    return target if force else None


def _publish(temp: Path | None, path: Path, *, force: bool, what: str) -> None:
    if temp is None:
        return  # already linked in place
    if force:
        os.replace(temp, path)
        return
    try:
        os.link(temp, path)
    except FileExistsError:
        raise OutputExistsError(
            f"{what} {path} already exists", hint="pass --force to replace it"
        ) from None
    temp.unlink()


def _staging_prefix(path: Path) -> str:
    # Host and pid in the name let a later run recognise staging directories whose process is
    # gone (killed mid-unpack) and remove them, without touching a live one, even another
    # machine's on a shared file system.
    host = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in _host_name())[:64]
    return f".{path.name}.{host}."


def _host_name() -> str:
    """The machine's name; os.uname spares every command importing socket (~5 ms)."""
    if hasattr(os, "uname"):
        return os.uname().nodename
    import socket

    return socket.gethostname()


def _remove_stale_staging(path: Path) -> None:
    prefix = _staging_prefix(path)
    for candidate in path.parent.glob(f"{glob.escape(prefix)}*.partial"):
        pid_text = candidate.name[len(prefix) :].split(".", 1)[0]
        if not pid_text.isdigit() or candidate.is_symlink() or not candidate.is_dir():
            continue
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            shutil.rmtree(candidate, ignore_errors=True)
        except PermissionError:
            pass  # alive, someone else's


@contextlib.contextmanager
def atomic_directory(path: Path, *, force: bool) -> Iterator[Path]:
    """Yield a fresh private directory; on success it is renamed to ``path``.

    Staging directories left by a killed earlier run for the same ``path`` are removed first.
    """
    check_destination(path, force=force, what="destination")
    _remove_stale_staging(path)
    prefix = f"{_staging_prefix(path)}{os.getpid()}."
    temp = Path(tempfile.mkdtemp(dir=path.parent, prefix=prefix, suffix=".partial"))
    try:
        yield temp
        temp.chmod(0o755 & ~_umask())
        if path.exists() or path.is_symlink():
            if not force:
                raise OutputExistsError(
                    f"destination {path} already exists", hint="pass --force to replace it"
                )
            old = path.with_name(f".{path.name}.{os.getpid()}.old")
            os.replace(path, old)
            os.replace(temp, path)
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old)
            else:
                old.unlink()
        else:
            os.replace(temp, path)
    finally:
        if temp.exists():
            shutil.rmtree(temp, ignore_errors=True)
