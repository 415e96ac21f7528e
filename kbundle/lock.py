"""Pinned requirements of a bundle (``env/requirements.txt``) and their hash lock.

``env/requirements.txt`` pins the installed closure of what the model needs: the TensorFlow
distribution actually installed (``tensorflow-cpu`` stays ``tensorflow-cpu``), the Keras in
use, h5py, the backend's libraries, cloudpickle when pickles travel, and the distributions
custom objects import, plus everything those require, recursively, as installed (local
version labels such as ``+cu121`` are kept). It is read from installed metadata only:
nothing is imported, nothing is downloaded.

``env/requirements.lock`` adds SHA-256 hashes through pip-tools (``pip-compile
--generate-hashes``) when asked (``pack --lock``), because it asks the package index about
every pinned file: 30 to 90 seconds for a TensorFlow closure on the machine this was written
on, against well under a second for the rest of pack. The lock holds exactly the pinned
closure (anything pip-compile adds beyond it, such as plain ``tensorflow`` pulled in by
tf-keras's metadata, is dropped and named in the note). When the index is unreachable or
pip-tools is missing, pack still succeeds and the manifest says the lock is unhashed and
why. Stable: the member names and the ``Requirements`` fields are format 1.0.
"""

from __future__ import annotations

import contextlib
import importlib.util
import re
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from packaging.markers import UndefinedEnvironmentName
from packaging.requirements import InvalidRequirement, Requirement

from kbundle.archive import PayloadFile
from kbundle.distributions import canonical_name, find, versions
from kbundle.environment import TENSORFLOW_DISTRIBUTIONS
from kbundle.manifest import CustomObject, Environment, Requirements

__all__ = [
    "LOCK_MEMBER",
    "REQUIREMENTS_MEMBER",
    "closure",
    "hash_lock",
    "last_line",
    "model_roots",
    "parse_pins",
    "requirements_payload",
    "run_tool",
]

REQUIREMENTS_MEMBER = "env/requirements.txt"
LOCK_MEMBER = "env/requirements.lock"
# pip-compile asks the index about every pinned file; a TensorFlow closure took 30-90 s
# here. Ten minutes allows a slow mirror; beyond that pack gives up on hashes, not the pack.
LOCK_TIMEOUT_SECONDS = 600
# pip's own default is 15 s per connection and 5 retries; an unreachable index should cost
# seconds, not minutes, so pip-compile gets a short leash per request.
_PIP_ARGS = "--timeout 20 --retries 1"
_PIN_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


def model_roots(environment: Environment, custom_objects: Sequence[CustomObject] = ()) -> list[str]:
    """The distributions the model needs directly, by normalised name."""
    roots: list[str] = []
    if environment.tensorflow:
        roots.append(environment.tensorflow.distribution)
    keras = environment.keras
    if keras:
        roots.append(keras.distribution)
        roots += {"jax": ["jax", "jaxlib"], "torch": ["torch"]}.get(keras.backend or "", [])
    roots.append("h5py")
    if any(o.transport == "pickle" for o in custom_objects):
        roots.append("cloudpickle")
    for obj in custom_objects:
        if obj.transport == "builtin":
            continue
        roots += list(obj.distributions)
        if obj.requirement:
            with contextlib.suppress(InvalidRequirement):
                roots.append(Requirement(obj.requirement).name)
    unique: dict[str, None] = {}
    for name in roots:
        unique.setdefault(canonical_name(name))
    return list(unique)


def closure(
    roots: Iterable[str], installed: Mapping[str, str] | None = None
) -> tuple[dict[str, str], list[str]]:
    """Every installed distribution ``roots`` need, recursively: ``({name: version}, missing)``.

    Requirement markers are evaluated for this interpreter and the extras asked for. A
    requirement on any TensorFlow distribution is satisfied by the one installed, so tf-keras
    (which asks for plain ``tensorflow``) keeps ``tensorflow-cpu``. ``missing`` lists
    requirements that are not installed (``name (required by X)``).
    """
    installed = dict(installed if installed is not None else versions())
    tensorflows = [d for d in TENSORFLOW_DISTRIBUTIONS if d in installed]
    pins: dict[str, str] = {}
    missing: list[str] = []
    visited: set[tuple[str, frozenset[str]]] = set()
    pending: list[tuple[str, frozenset[str], str]] = [
        (canonical_name(r), frozenset(), "the model") for r in roots
    ]
    while pending:
        name, extras, parent = pending.pop()
        if name not in installed and name in TENSORFLOW_DISTRIBUTIONS and tensorflows:
            name = tensorflows[0]
        if name not in installed:
            missing.append(f"{name} (required by {parent})")
            continue
        if (name, extras) in visited:
            continue
        visited.add((name, extras))
        pins[name] = installed[name]
        for requirement in _requirements_of(name, extras):
            pending.append((canonical_name(requirement.name), frozenset(requirement.extras), name))
    return dict(sorted(pins.items())), sorted(set(missing))


def _requirements_of(name: str, extras: frozenset[str]) -> list[Requirement]:
    dist = find(name)
    declared = dist.requires() if dist else []
    found = []
    for line in declared:
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            continue
        if requirement.marker is not None and not any(
            _marker_holds(requirement, extra) for extra in (extras or {""})
        ):
            continue
        found.append(requirement)
    return found


def _marker_holds(requirement: Requirement, extra: str) -> bool:
    assert requirement.marker is not None
    try:
        return requirement.marker.evaluate({"extra": extra})
    except UndefinedEnvironmentName:
        return False


def requirements_text(
    pins: Mapping[str, str], environment: Environment, missing: Sequence[str]
) -> str:
    """The ``requirements.txt`` body: a header saying where it came from, then one pin a line."""
    python = environment.python
    lines = [
        "# Installed closure of the distributions this model needs, pinned as installed when "
        "packing.",
        f"# Python {python.version} ({python.implementation}) on {environment.platform.system} "
        f"{environment.platform.machine}.",
        "# Install into a fresh environment with: pip install --no-deps -r requirements.txt",
    ]
    lines += [f"# not installed when packing: {item}" for item in missing]
    lines += [f"{name}=={version}" for name, version in pins.items()]
    return "\n".join(lines) + "\n"


def parse_pins(text: str) -> dict[str, str]:
    """``name==version`` lines of a requirements or lock file, by normalised name."""
    pins: dict[str, str] = {}
    for line in text.splitlines():
        match = _PIN_RE.match(line.strip())
        if match:
            pins[canonical_name(match.group(1))] = match.group(2).rstrip("\\").strip()
    return pins


def hash_lock(
    requirements: Path, output: Path, *, timeout: float = LOCK_TIMEOUT_SECONDS
) -> str | None:
    """Write ``output`` with hashes for every pin in ``requirements``; return None or why not.

    The lock is filtered to exactly the pinned closure, so installing it with
    ``--no-deps --require-hashes`` gives back the recorded distributions and nothing else.
    """
    if importlib.util.find_spec("piptools") is None:
        return "pip-tools is not installed (pip install 'kbundle[lock]')"
    raw = output.with_suffix(".raw")
    command = [
        sys.executable,
        "-m",
        "piptools",
        "compile",
        "--no-config",
        "--generate-hashes",
        "--allow-unsafe",
        "--no-emit-index-url",
        "--no-emit-find-links",
        "--strip-extras",
        "--no-header",
        "--no-annotate",
        "--quiet",
        "--pip-args",
        _PIP_ARGS,
        "--output-file",
        str(raw),
        str(requirements),
    ]
    done = run_tool(command, timeout=timeout, cwd=requirements.parent)
    if done is None:
        return (
            f"pip-compile did not finish within {timeout:.0f} s (is the package index reachable?)"
        )
    if done.returncode != 0 or not raw.is_file():
        detail = last_line(done.stderr or done.stdout)
        return f"pip-compile failed (is the package index reachable?): {detail}"
    wanted = parse_pins(requirements.read_text(encoding="utf-8"))
    blocks = _lock_blocks(raw.read_text(encoding="utf-8"))
    raw.unlink()
    kept, dropped, wrong = [], [], []
    for name, version, block in blocks:
        if name not in wanted:
            dropped.append(f"{name}=={version}")
        elif wanted[name] != version:
            wrong.append(f"{name} {version} (pinned {wanted[name]})")
        else:
            kept.append(block)
    absent = sorted(set(wanted) - {name for name, _, _ in blocks})
    if wrong or absent:
        return "pip-compile did not reproduce the pins: " + ", ".join(
            wrong + [f"{n} missing" for n in absent]
        )
    header = [
        "# Hash-locked closure (pip-compile --generate-hashes). Install with:",
        "#   pip install --no-deps --require-hashes -r requirements.lock",
    ]
    header += [f"# dropped (not installed when packing): {item}" for item in dropped]
    output.write_text("\n".join(header + kept) + "\n", encoding="utf-8")
    return None


def _lock_blocks(text: str) -> list[tuple[str, str, str]]:
    """Entries of a pip-compile output: ``(name, version, 'name==version \\ --hash=...')``."""
    blocks: list[tuple[str, str, str]] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _PIN_RE.match(line)
        if match:
            blocks.append(
                (canonical_name(match.group(1)), match.group(2).rstrip("\\").strip(), line)
            )
        elif blocks and line.startswith((" ", "\t")):
            name, version, block = blocks[-1]
            blocks[-1] = (name, version, block + "\n" + line)
    return blocks


def run_tool(
    command: Sequence[str],
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str] | None:
    """Run a tool (pip, pip-compile, an interpreter) with its output captured; None on timeout.

    A tool that cannot be started at all counts as a failure with the reason in ``stderr``.
    """
    try:
        return subprocess.run(
            list(command),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None
    except OSError as exc:
        return subprocess.CompletedProcess(
            list(command), 127, "", f"cannot run {command[0]}: {exc}"
        )


def last_line(text: str) -> str:
    """The last meaningful line of a tool's output (pip's ignored-location noise skipped)."""
    lines = [
        line.strip() for line in text.splitlines() if line.strip() and "is ignored" not in line
    ]
    return lines[-1][:300] if lines else "no output"


def requirements_payload(
    directory: Path,
    environment: Environment,
    custom_objects: Sequence[CustomObject] = (),
    *,
    lock: bool = False,
) -> tuple[Requirements, list[PayloadFile]]:
    """Write ``env/requirements.txt`` (and with ``lock`` the hashed lock) under ``directory``."""
    pins, missing = closure(model_roots(environment, custom_objects))
    env_dir = directory / "env"
    env_dir.mkdir(exist_ok=True)
    requirements = directory / REQUIREMENTS_MEMBER
    requirements.write_text(requirements_text(pins, environment, missing), encoding="utf-8")
    payload = [PayloadFile(REQUIREMENTS_MEMBER, requirements, requirements.stat().st_size)]
    if not lock:
        return Requirements(
            requirements=REQUIREMENTS_MEMBER, note="not hash-locked: pack with --lock to add hashes"
        ), payload
    locked = directory / LOCK_MEMBER
    why_not = hash_lock(requirements, locked)
    if why_not is not None:
        return Requirements(
            requirements=REQUIREMENTS_MEMBER, note=f"not hash-locked: {why_not}"
        ), payload
    payload.append(PayloadFile(LOCK_MEMBER, locked, locked.stat().st_size))
    return Requirements(
        requirements=REQUIREMENTS_MEMBER, lock=LOCK_MEMBER, lock_hashed=True
    ), payload
