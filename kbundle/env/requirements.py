"""Pinned requirements of a bundle (``env/requirements.txt``): the installed closure of what
the model needs.

The closure holds the TensorFlow distribution actually installed (``tensorflow-cpu`` stays
``tensorflow-cpu``), the Keras in use, h5py, the backend's libraries, cloudpickle when pickles
travel, and the distributions custom objects import, plus everything those require,
recursively, as installed (local version labels such as ``+cu121`` are kept). It is read from
installed metadata only: nothing is imported, nothing is downloaded. With ``lock`` the pins are
hash-locked too (kbundle.env.lock). Stable: the member names and the ``Requirements`` fields
are format 1.0.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from packaging.markers import UndefinedEnvironmentName
from packaging.requirements import InvalidRequirement, Requirement

from kbundle.container.manifest import CustomObject, Environment, Requirements
from kbundle.container.writer import PayloadFile
from kbundle.env.capture import TENSORFLOW_DISTRIBUTIONS, installed_tensorflows
from kbundle.env.distributions import canonical_name, find, versions
from kbundle.env.lock import hash_lock
from kbundle.env.requirement_lines import parse_pins

__all__ = [
    "LOCK_MEMBER",
    "REQUIREMENTS_MEMBER",
    "closure",
    "model_roots",
    "parse_pins",
    "requirements_payload",
    "requirements_text",
]

REQUIREMENTS_MEMBER = "env/requirements.txt"
LOCK_MEMBER = "env/requirements.lock"


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
    for obj in custom_objects:  # a built-in of Keras's ecosystem names its keras-hub too
        roots += list(obj.distributions)
        if obj.requirement:
            with contextlib.suppress(InvalidRequirement):
                roots.append(Requirement(obj.requirement).name)
    unique: dict[str, None] = {}
    for name in roots:
        unique.setdefault(canonical_name(name))
    return list(unique)


def closure(
    roots: Iterable[str],
    installed: Mapping[str, str] | None = None,
    *,
    tensorflow: str | None = None,
) -> tuple[dict[str, str], list[str]]:
    """Every installed distribution ``roots`` need, recursively: ``({name: version}, missing)``.

    Requirement markers are evaluated for this interpreter and the extras asked for. A
    requirement on any TensorFlow distribution is satisfied by ``tensorflow``, the one whose
    files are imported (default: the most specific installed), so tf-keras or
    tensorflow-text (which ask for plain ``tensorflow``) keep ``tensorflow-cpu``, and two
    installed TensorFlows are never both pinned. ``missing`` lists requirements that are not
    installed (``name (required by X)``).
    """
    installed = dict(installed if installed is not None else versions())
    chosen = tensorflow or next(iter(installed_tensorflows(installed)), None)
    pins: dict[str, str] = {}
    missing: list[str] = []
    visited: set[tuple[str, frozenset[str]]] = set()
    pending: list[tuple[str, frozenset[str], str]] = [
        (canonical_name(r), frozenset(), "the model") for r in roots
    ]
    while pending:
        name, extras, parent = pending.pop()
        if name in TENSORFLOW_DISTRIBUTIONS and chosen in installed:
            name = str(chosen)
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


def requirements_payload(
    directory: Path,
    environment: Environment,
    custom_objects: Sequence[CustomObject] = (),
    *,
    lock: bool = False,
) -> tuple[Requirements, list[PayloadFile]]:
    """Write ``env/requirements.txt`` (and with ``lock`` the hashed lock) under ``directory``."""
    tensorflow = environment.tensorflow.distribution if environment.tensorflow else None
    pins, missing = closure(model_roots(environment, custom_objects), tensorflow=tensorflow)
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
