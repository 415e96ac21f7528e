"""Putting outputs in place atomically: a complete file or directory, or nothing.

Files are written to an anonymous temporary file (Linux ``O_TMPFILE``) in the destination's
directory and linked under their final name only when complete, so a killed process leaves
nothing at all; where ``O_TMPFILE`` is unavailable a hidden named temporary file is used and
removed on any failure. An existing output is never replaced unless ``force`` is given, and
the no-overwrite check is the link itself, so two writers cannot both win. Directories are
built under a hidden temporary name beside the destination and renamed into place.

``force`` replaces one earlier output, never anything else (``check_destination``): never an
input of the command (the bundle being unpacked, the model being packed) nor a path that holds
one or lies inside one; a bundle only over a file that starts like a bundle (the zstd magic),
and any other output (a key, a requirements file) never over a bundle; a directory (``kbundle
unpack``'s destination) only when it is a previous unpack's output and nothing was added to it
since: a real directory (not a symbolic link, not the current directory nor one of its
ancestors) whose ``kbundle.json`` lists everything in it. That ``kbundle.json`` is the
bundle's manifest, written by every unpack (its SHA-256 is the bundle digest), so it marks the
directory as an unpack's output and says what that unpack wrote.
Stable: internal.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from kbundle.container.limits import MAX_MANIFEST_BYTES
from kbundle.container.names import MANIFEST_NAME
from kbundle.container.zstdframes import ZSTD_MAGIC
from kbundle.errors import KbundleError, OutputExistsError, PackError, UsageError

__all__ = ["atomic_directory", "atomic_file", "check_destination"]

# The kinds of output (check_destination's ``what``) that --force replaces only over an
# earlier output of the same kind; the other kinds (keys, a requirements file) replace the one
# file the user named, unless it is a bundle.
_BUNDLE = "bundle"
_DESTINATION = "destination"


def check_destination(
    path: Path, *, force: bool, what: str = "output", inputs: Sequence[Path] = ()
) -> None:
    """Refuse early (before any work) when ``path`` exists and ``force`` is not set, and when
    ``force`` would replace more than an earlier output (the rules in the module docstring).
    ``inputs`` are the paths the command reads, which it must never replace."""
    _check_free(path, force=force, what=what)
    if force and (path.exists() or path.is_symlink()):
        refusal = _replace_refusal(path, what, inputs)
        if refusal is not None:
            raise refusal


def _check_free(path: Path, *, force: bool, what: str) -> None:
    """``path`` may be written: it does not exist, or ``force`` is set."""
    if path.exists() and not force:
        raise OutputExistsError(
            f"{what} {path} already exists", hint="pass --force (force=True) to replace it"
        )
    if path.is_dir() and not path.is_symlink() and what == _BUNDLE:
        raise UsageError(
            f"{path} is a directory", hint="name a file for the bundle, e.g. model.kbundle"
        )
    if not path.parent.is_dir():
        raise UsageError(f"the directory {path.parent} does not exist", hint="create it first")


def _overlap(path: Path, source: Path) -> str | None:
    """How replacing ``path`` would touch the input ``source``, if it would: the same file
    (through a symbolic or hard link too), a directory holding it, or a path inside it."""
    mine, theirs = path.resolve(), source.resolve()
    if mine == theirs:
        return "it is"
    if mine in theirs.parents:
        return "it holds"
    if theirs in mine.parents:
        return "it lies inside"
    with contextlib.suppress(OSError):
        if os.path.samefile(path, source):
            return "it is a hard link to"
    return None


def _replace_refusal(path: Path, what: str, inputs: Sequence[Path]) -> UsageError | None:
    """Why ``force`` must not replace ``path`` (None when it may)."""
    for source in inputs:
        overlap = _overlap(path, source)
        if overlap is not None:
            return UsageError(
                f"will not replace {what} {path}: {overlap} the input {source}",
                hint=f"{_elsewhere(what)}; an input is never replaced",
            )
    if what == _DESTINATION:
        problem = _not_an_unpack_output(path, inputs)
        replaces = "a directory a previous 'kbundle unpack' made, unchanged"
    elif what == _BUNDLE:
        problem = _not_a_bundle_file(path)
        replaces = "a bundle"
    else:
        problem = _a_bundle_file(path)
        replaces = f"a {what}, never a bundle"
    if problem is None:
        return None
    return UsageError(
        f"will not replace {what} {path}: {problem}",
        hint=f"--force replaces only {replaces}; {_elsewhere(what)}, or move it away yourself",
    )


def _elsewhere(what: str) -> str:
    """The flag that names another place for the output, for hints."""
    return "choose another --dest" if what == _DESTINATION else "choose another -o"


def _first_bytes(path: Path) -> bytes | None:
    """The first bytes of a regular file, as many as the zstd magic has (None: no file)."""
    if not path.is_file():
        return None
    with path.open("rb") as handle:
        return handle.read(len(ZSTD_MAGIC))


def _not_a_bundle_file(path: Path) -> str | None:
    """Why ``path`` is not a file that a bundle may replace: pack and sign write bundles, so
    they replace only a regular file starting with the zstd magic (damaged bundles included,
    never a model, a key or a user's other file)."""
    start = _first_bytes(path)
    if start is None:
        return "it is not a regular file"
    if start != ZSTD_MAGIC:
        return f"it is not a kbundle bundle (it starts with {start.hex() or 'nothing'})"
    return None


def _a_bundle_file(path: Path) -> str | None:
    """Why no other kind of output (a requirements file, a key) may replace ``path``: it is a
    bundle, the user's artefact and most likely the input (``env export B -o B``)."""
    if _first_bytes(path) == ZSTD_MAGIC:
        return "it is a bundle (it starts with the zstd magic)"
    return None


def _not_an_unpack_output(directory: Path, inputs: Sequence[Path]) -> str | None:
    """Why ``directory`` is not a previous unpack's unchanged output (None when it is)."""
    if directory.is_symlink():  # replacing it would replace the link, leaving the target
        return f"it is a symbolic link to {os.readlink(directory)!r}"
    if not directory.is_dir():
        return "it is not a directory"
    with contextlib.suppress(OSError):  # no current directory (deleted): nothing to protect
        here = Path.cwd().resolve()
        resolved = directory.resolve()
        if resolved == here:
            return "it is the current directory"
        if resolved in here.parents:
            return f"it holds the current directory {here}"
    listed = _listed_in_manifest(directory)
    if isinstance(listed, str):
        return listed
    protected = set()
    for source in inputs:
        with contextlib.suppress(OSError):
            found = source.stat()
            protected.add((found.st_dev, found.st_ino))
    return _unlisted_entry(directory, "", listed, protected)


def _listed_in_manifest(directory: Path) -> dict[str, str] | str:
    """Every path an unpack wrote into ``directory`` (relative, POSIX) and its kind, "file" or
    "dir", as its ``kbundle.json`` lists them; or why there is no such list."""
    from kbundle.container.manifest import load_json_object

    manifest = directory / MANIFEST_NAME
    try:
        descriptor = os.open(manifest, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return f"it has no {MANIFEST_NAME}, so no unpack made it"
    with os.fdopen(descriptor, "rb") as handle:
        found = os.fstat(handle.fileno())
        if not stat.S_ISREG(found.st_mode) or found.st_size > MAX_MANIFEST_BYTES:
            return f"its {MANIFEST_NAME} is not a manifest an unpack wrote"
        data = handle.read(MAX_MANIFEST_BYTES + 1)
    try:
        members = load_json_object(data, what=MANIFEST_NAME, limit=MAX_MANIFEST_BYTES).get(
            "members"
        )
    except KbundleError as exc:
        return f"its {MANIFEST_NAME} is not a manifest ({exc.message})"
    if not isinstance(members, list):
        return f"its {MANIFEST_NAME} lists no members"
    listed = {MANIFEST_NAME: "file"}
    for member in members:
        name = member.get("path") if isinstance(member, dict) else None
        if not isinstance(name, str):
            return f"its {MANIFEST_NAME} lists a member without a path"
        listed[name] = "dir" if member.get("type") == "dir" else "file"
        for parent in PurePosixPath(name).parents:
            if parent.name:
                listed[parent.as_posix()] = "dir"
    return listed


def _unlisted_entry(
    directory: Path, prefix: str, listed: dict[str, str], protected: set[tuple[int, int]]
) -> str | None:
    """The first entry under ``directory`` that its unpack did not write, as the reason to
    refuse. Only listed directories are entered, so the walk is bounded by the listing."""
    with os.scandir(directory) as entries:
        for entry in entries:
            name = prefix + entry.name
            kind = listed.get(name)
            if kind is None:
                return f"it holds {name!r}, which its {MANIFEST_NAME} does not list"
            if entry.is_symlink():
                return f"it holds the symbolic link {name!r}, which no unpack writes"
            if kind == "dir" and entry.is_dir(follow_symlinks=False):
                problem = _unlisted_entry(Path(entry.path), name + "/", listed, protected)
                if problem is not None:
                    return problem
            elif kind == "file" and entry.is_file(follow_symlinks=False):
                found = entry.stat(follow_symlinks=False)
                if (found.st_dev, found.st_ino) in protected:
                    return f"its {name!r} is the input being read (a hard link)"
            else:
                return f"it holds {name!r}, which its {MANIFEST_NAME} lists as a {kind}"
    return None


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
    # Only the existence rule again: what --force may replace was settled by the caller's
    # check_destination before any work (``what`` here defaults to "bundle" for any file).
    _check_free(path, force=force, what=what)
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
            f"{what} {path} already exists", hint="pass --force (force=True) to replace it"
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
            f"{what} {path} already exists", hint="pass --force (force=True) to replace it"
        ) from None
    temp.unlink()


def _staging_prefix(path: Path) -> str:
    # Host and pid in the name let a later run recognise staging directories whose process is
    # gone (killed mid-unpack) and remove them, without touching a live one, even another
    # machine's on a shared file system.
    host = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in _host_name())[:64]
    return f".{path.name}.{host}."


def _host_name() -> str:
    """The machine's name; os.uname spares every command importing socket."""
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
def atomic_directory(path: Path, *, force: bool, inputs: Sequence[Path] = ()) -> Iterator[Path]:
    """Yield a fresh private directory; on success it is renamed to ``path``.

    With ``force`` an existing ``path`` is replaced only when it is a previous unpack's
    unchanged output that holds none of ``inputs`` (checked before and again just before the
    swap). Staging directories left by a killed earlier run for the same ``path`` are removed
    first.
    """
    check_destination(path, force=force, what=_DESTINATION, inputs=inputs)
    _remove_stale_staging(path)
    prefix = f"{_staging_prefix(path)}{os.getpid()}."
    temp = Path(tempfile.mkdtemp(dir=path.parent, prefix=prefix, suffix=".partial"))
    try:
        yield temp
        temp.chmod(0o755 & ~_umask())
        if path.exists() or path.is_symlink():
            if not force:
                raise OutputExistsError(
                    f"destination {path} already exists",
                    hint="pass --force (force=True) to replace it",
                )
            # Again: files may have been added while the bundle was extracted and loaded.
            refusal = _replace_refusal(path, _DESTINATION, inputs)
            if refusal is not None:
                raise refusal
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
