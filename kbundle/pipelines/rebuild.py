"""Rebuilding the environment a bundle was packed in: ``kbundle env export`` and ``env create``.

Both read the bundle's ``env/`` files only after verifying the whole bundle, and only through
:func:`kbundle.env.requirement_lines.check_requirements`: every line a ``name==version`` pin
(with hashes in a lock), so nothing is ever installed from inside the bundle or from a local
path, and an index or URL the bundle names passes only with ``trust_code``.

``create_environment`` checks the requirements before it starts any process, makes a virtual
environment with the recorded Python minor (the running interpreter when it matches, else
``pythonX.Y`` on ``PATH``), installs the pinned closure with ``--no-deps`` (the closure is
complete, and ``--no-deps`` stops tf-keras from pulling plain ``tensorflow`` over
``tensorflow-cpu``) and with ``--require-hashes`` when the bundle has a hashed lock, installs
kbundle itself, and ends by running ``kbundle check`` inside the new environment, which must
come out clean. pip reads the checked lines alone, never a file of the extracted bundle, and
every child (the version probe, venv, pip, the check) runs isolated through
:func:`kbundle.env.tools.run_tool`: ``python -I`` in an empty directory.

kbundle is installed into the new environment from the source tree the running kbundle was
imported from when that is a checkout (it has kbundle's ``pyproject.toml``), else as
``kbundle==<this version>`` from the package index; ``kbundle_spec`` overrides either.
Stable: the CLI behaviour is public; the Python functions are internal.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kbundle._version import __version__
from kbundle.container.manifest import Manifest
from kbundle.container.reader import BundleHead
from kbundle.container.writer import header_region
from kbundle.env.requirement_lines import CheckedRequirements, check_requirements
from kbundle.env.tools import absolute_if_path, last_line, run_tool
from kbundle.errors import EnvironmentMismatchError, UsageError
from kbundle.findings import Finding, Severity
from kbundle.pipelines.verify import StorageOptions
from kbundle.storage.locations import Location, parse_location

__all__ = [
    "CreatedEnvironment",
    "create_environment",
    "export_requirements",
    "kbundle_install_spec",
]

# Installing TensorFlow from a mirror took 20-40 s here; a slow index may take many minutes.
# An hour is the point where something is stuck rather than slow.
INSTALL_TIMEOUT_SECONDS = 3600
# The final check imports nothing heavy and takes about a second.
CHECK_TIMEOUT_SECONDS = 300
# Asking an interpreter its version takes milliseconds; a minute means it hangs.
INTERPRETER_TIMEOUT_SECONDS = 60


def _verified_env_files(bundle: Location, scratch: Path) -> tuple[BundleHead, Path]:
    """Verify ``bundle`` into ``scratch`` and return its head and the extracted root."""
    from kbundle.pipelines.load import unpack

    source = bundle.path if bundle.path is not None else bundle.url or "-"
    result = unpack(source, scratch / "bundle", storage_options=bundle.options)
    head = result.report.head
    if head.manifest.requirements is None:
        raise UsageError(
            f"{bundle} records no requirements (it was packed by a kbundle without "
            "env/requirements.txt)",
            hint="'kbundle inspect' shows the recorded versions; install them by hand",
        )
    return head, result.path


def _checked_requirements(
    manifest: Manifest, root: Path, *, hashed: bool, trust_code: bool
) -> CheckedRequirements:
    """The lock (``hashed``) or the pins of an extracted bundle, checked line by line."""
    requirements = manifest.requirements
    assert requirements is not None
    member = requirements.lock if hashed and requirements.lock else requirements.requirements
    return check_requirements(
        (root / member).read_bytes(), member=member, hashed=hashed, trust_code=trust_code
    )


def export_requirements(
    bundle: str | os.PathLike[str],
    *,
    hashed: bool | None = None,
    trust_code: bool = False,
    storage_options: StorageOptions | None = None,
) -> tuple[str, bool]:
    """The bundle's requirements text and whether it carries hashes.

    ``hashed=None`` gives the hashed lock when the bundle has one, else the pins;
    ``True`` insists on the lock (a usage error when there is none); ``False`` gives the pins.
    The text is returned only if every line passes
    :func:`~kbundle.env.requirement_lines.check_requirements` (``trust_code`` lets https
    sources through). ``bundle`` may be a URL (``storage_options`` go to its filesystem) or
    ``"-"`` for standard input.
    """
    with tempfile.TemporaryDirectory(prefix="kbundle-env-") as scratch:
        head, root = _verified_env_files(parse_location(bundle, storage_options), Path(scratch))
        manifest = head.manifest
        requirements = manifest.requirements
        assert requirements is not None
        has_lock = bool(requirements.lock and requirements.lock_hashed)
        if hashed and not has_lock:
            raise UsageError(
                f"{bundle} has no hash-locked requirements: "
                f"{requirements.note or 'no lock recorded'}",
                hint="export the pins without --hashed, or re-pack with --lock",
            )
        use_lock = has_lock if hashed is None else hashed
        checked = _checked_requirements(manifest, root, hashed=use_lock, trust_code=trust_code)
        return checked.text, use_lock


@dataclass(frozen=True, slots=True)
class CreatedEnvironment:
    """The environment made: where, with which Python, whether hashes were required, the check."""

    directory: Path
    python: str
    hashed: bool
    backend: str | None
    findings: tuple[Finding, ...]

    @property
    def python_executable(self) -> Path:
        return _venv_python(self.directory)

    def to_dict(self) -> dict[str, Any]:
        """The ``kbundle env create --json`` shape."""
        return {
            "ok": True,
            "directory": str(self.directory),
            "python": self.python,
            "hashed": self.hashed,
            "backend": self.backend,
            "findings": [f.to_dict() for f in self.findings],
        }


def _venv_python(directory: Path) -> Path:
    return (
        directory
        / ("Scripts" if os.name == "nt" else "bin")
        / ("python.exe" if os.name == "nt" else "python")
    )


def kbundle_install_spec() -> str:
    """What ``pip install`` needs to install this kbundle: its checkout, or the release."""
    root = Path(__file__).resolve().parents[2]
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and 'name = "kbundle"' in pyproject.read_text(encoding="utf-8"):
        return str(root)
    return f"kbundle=={__version__}"


def _interpreter_version(executable: str) -> str | None:
    code = "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')"
    done = run_tool(executable, ["-c", code], timeout=INTERPRETER_TIMEOUT_SECONDS)
    return done.stdout.strip() if done is not None and done.returncode == 0 else None


def find_interpreter(minor: str, python: str | None = None) -> str:
    """An interpreter of Python ``minor`` (``3.11``): ``python`` if given, else this one or "
    "PATH's."""
    if python is not None:
        found = _interpreter_version(python)
        if found != minor:
            raise UsageError(
                f"python (--python) {python} is Python {found or '(not runnable)'}, the bundle was "
                f"packed with Python {minor}",
                hint=f"pass an interpreter of Python {minor}",
            )
        return python
    candidates: list[str | None] = []
    # The running interpreter first: of the ones that fit, it is the closest patch release.
    if f"{sys.version_info[0]}.{sys.version_info[1]}" == minor:
        candidates.append(getattr(sys, "_base_executable", None) or sys.executable)
    candidates.append(shutil.which(f"python{minor}"))
    for candidate in candidates:
        if candidate and _interpreter_version(candidate) == minor:
            return candidate
    raise UsageError(
        f"Python {minor}, which the bundle was packed with, is not installed here: no "
        f"python{minor} on PATH",
        hint=f"install Python {minor} (python.org, pyenv, 'uv python install {minor}') or pass "
        "--python PATH (python=PATH)",
    )


def _run(interpreter: str, arguments: list[str], what: str, timeout: float) -> None:
    done = run_tool(interpreter, arguments, timeout=timeout)
    if done is None:
        raise EnvironmentMismatchError(
            f"{what} did not finish within {timeout:.0f} s",
            hint="check the package index and retry",
        )
    if done.returncode != 0:
        raise EnvironmentMismatchError(
            f"{what} failed (exit {done.returncode}): {last_line(done.stderr or done.stdout)}",
            hint="the recorded versions may have no wheel for this platform or Python; "
            "'kbundle check' shows what differs",
        )


def create_environment(
    bundle: str | os.PathLike[str],
    directory: str | os.PathLike[str],
    *,
    python: str | None = None,
    kbundle_spec: str | None = None,
    trust_code: bool = False,
    step: Callable[[str], None] | None = None,
    storage_options: StorageOptions | None = None,
) -> CreatedEnvironment:
    """Build a virtual environment at ``directory`` that reproduces ``bundle``'s environment.

    The requirements are checked
    (:func:`~kbundle.env.requirement_lines.check_requirements`; ``trust_code`` lets https
    sources through) before any process starts, so a refused bundle leaves no
    ``directory`` behind. ``step`` is called with a short description before each stage. If
    anything fails before the final check, ``directory`` is removed again; if the final check
    finds errors the environment is kept for inspection and
    :class:`EnvironmentMismatchError` is raised. ``bundle`` may be a URL (``storage_options``
    go to its filesystem) or ``"-"`` for standard input; the final check then reads a copy of
    its header region, all that ``kbundle check`` reads.
    """
    location, target = parse_location(bundle, storage_options), Path(directory)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UsageError(
            f"{target} already exists and is not empty",
            hint="choose a new directory for the environment",
        )
    announce = step or (lambda _text: None)
    with tempfile.TemporaryDirectory(prefix="kbundle-env-") as scratch:
        head, root = _verified_env_files(location, Path(scratch))
        manifest = head.manifest
        requirements = manifest.requirements
        assert requirements is not None
        hashed = bool(requirements.lock and requirements.lock_hashed)
        checked = _checked_requirements(manifest, root, hashed=hashed, trust_code=trust_code)
        # pip reads the checked lines alone, never a file of the extracted bundle.
        pip_requirements = Path(scratch) / "requirements-checked.txt"
        pip_requirements.write_text(checked.for_pip(), encoding="utf-8")
        minor = ".".join(manifest.environment.python.version.split(".")[:2])
        interpreter = find_interpreter(minor, python)
        existed = target.exists()  # and is empty: anything else was refused above
        # The children start in an empty directory: what they are given must be absolute.
        venv_directory = target.absolute()
        venv_python = str(_venv_python(venv_directory))
        try:
            announce(
                f"creating a virtual environment with {interpreter} (Python {minor}) in {target}"
            )
            _run(
                interpreter,
                ["-m", "venv", str(venv_directory)],
                "creating the virtual environment",
                INSTALL_TIMEOUT_SECONDS,
            )
            how = "hash-checked" if hashed else requirements.note or "not hash-locked"
            announce(f"installing the pinned requirements ({how})")
            pip_install = ["-m", "pip", "install", "--disable-pip-version-check"]
            checks = ["--no-deps", "--require-hashes"] if hashed else ["--no-deps"]
            _run(
                venv_python,
                [*pip_install, *checks, "-r", str(pip_requirements)],
                "pip install of the recorded requirements",
                INSTALL_TIMEOUT_SECONDS,
            )
            spec = kbundle_spec or kbundle_install_spec()
            announce(f"installing kbundle from {spec}")
            _run(
                venv_python,
                [*pip_install, absolute_if_path(spec)],
                "pip install of kbundle",
                INSTALL_TIMEOUT_SECONDS,
            )
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)  # nothing half-built is left behind
            if existed:
                target.mkdir()
            raise
    backend = manifest.environment.keras.backend if manifest.environment.keras else None
    announce("checking the new environment against the bundle")
    with tempfile.TemporaryDirectory(prefix="kbundle-env-") as scratch:
        checked_bundle = _local_head(location, head, Path(scratch))
        findings = _check_inside(venv_python, checked_bundle, backend)
    result = CreatedEnvironment(target, minor, hashed, backend, findings)
    problems = [f for f in findings if f.severity >= Severity.WARN]
    if problems:
        raise EnvironmentMismatchError.from_findings(
            problems,
            f"the new environment in {target} does not match the bundle: {problems[0].describe()}",
            hint=f"inspect it with '{venv_python} -m kbundle check {location}'",
        )
    return result


def _local_head(location: Location, head: BundleHead, scratch: Path) -> Path:
    """A local file ``kbundle check`` can read for ``location``: the bundle itself, or a
    copy of its header region (a URL needs credentials and packages the new environment
    may lack; standard input is read already). ``check`` reads nothing after the head."""
    if location.path is not None:
        return location.path.resolve()
    copy = scratch / "head.kbundle"
    copy.write_bytes(header_region(head.manifest_bytes, head.signature))
    return copy


def _check_inside(venv_python: str, bundle: Path, backend: str | None) -> tuple[Finding, ...]:
    # run_tool's -I keeps PYTHONPATH out: the check sees the new environment's kbundle alone.
    env = dict(os.environ)
    if backend:
        env["KERAS_BACKEND"] = backend
    done = run_tool(
        venv_python,
        ["-m", "kbundle", "check", str(bundle), "--json"],
        timeout=CHECK_TIMEOUT_SECONDS,
        env=env,
    )
    if done is None:
        raise EnvironmentMismatchError(
            "kbundle check in the new environment did not finish", hint="run it by hand"
        )
    try:
        return tuple(Finding.from_dict(f) for f in json.loads(done.stdout)["findings"])
    except (ValueError, KeyError, TypeError):
        raise EnvironmentMismatchError(
            f"kbundle check could not run in the new environment (exit {done.returncode}): "
            f"{last_line(done.stderr or done.stdout)}",
            hint=f"run '{venv_python} -m kbundle check {bundle}' by hand",
        ) from None
