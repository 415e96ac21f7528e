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

A bundle's requirements are read back only through :func:`check_requirements`, which
``env export`` and ``env create`` share: every logical line must be a ``name==version`` pin
(with ``--hash=sha256:`` options in a hashed lock), read exactly as pip reads the file, so
that nothing in it can make pip install from the bundle, a local path or a chosen index.
Every tool this module or :mod:`kbundle.pipelines.rebuild` starts runs through :func:`run_tool`: an
interpreter with ``-I`` in a fresh empty directory, so neither the current directory (an
unpacked bundle, a ``pip/`` that shadows pip) nor ``PYTHON*`` variables shape its
``sys.path``.
"""

from __future__ import annotations

import codecs
import contextlib
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.markers import UndefinedEnvironmentName
from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import InvalidVersion, Version

from kbundle.container.archive import PayloadFile
from kbundle.container.manifest import CustomObject, Environment, Requirements
from kbundle.env.capture import TENSORFLOW_DISTRIBUTIONS
from kbundle.env.distributions import canonical_name, find, versions
from kbundle.errors import BundleFormatError, KbundleError, UntrustedCodeError
from kbundle.findings import Finding

__all__ = [
    "LOCK_MEMBER",
    "REQUIREMENTS_MEMBER",
    "CheckedRequirements",
    "absolute_if_path",
    "check_requirements",
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

# What check_requirements accepts as a pin: a PEP 508 name (what PEP 503 normalises), '==',
# and a version packaging also parses (which rules out markers, wildcards and ${VARIABLES},
# which pip would expand from the environment).
_NAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")
_STRICT_PIN_RE = re.compile(rf"({_NAME_RE.pattern})==(\S+)")
# pip-compile --generate-hashes writes one such option per file of a pin; nothing else is a
# hash kbundle passes on.
_HASH_OPTION_RE = re.compile(r"--hash=sha256:[0-9a-fA-F]{64}")
# pip's own comment rule (pip/_internal/req/req_file.py): lines are joined and comments cut
# exactly as pip does it, so the lines checked are the lines pip reads.
_COMMENT_RE = re.compile(r"(^|\s+)#.*$")
# pip decodes a requirements file by a PEP 263 cookie in its first two lines; under a foreign
# encoding (cp037, utf-7, utf-16) pip would read other lines than the ones checked here.
_CODING_RE = re.compile(rb"coding[:=]\s*([-\w.]+)")
_SAME_TEXT_CODECS = frozenset({"utf-8", "ascii"})
# Older pips read requirement files in the locale's encoding, where a byte of a UTF-8
# character can be a line break (0x85 is NEL in Latin-1); kbundle writes ASCII only.
_PRINTABLE_ASCII_RE = re.compile(r"[\t\x20-\x7e]*")
# The options that choose where packages come from; with trust_code an https URL may follow.
_SOURCE_OPTIONS = frozenset({"-i", "--index-url", "--extra-index-url", "-f", "--find-links"})
# Characters of a URL passed on: no quotes or backslashes (pip shlex-splits option lines) and
# no '$' (pip expands ${VARIABLE}, which would send the user's secrets to the URL's host).
_URL_CHARS_RE = re.compile(r"[A-Za-z0-9._~:/?#\[\]@!&()*+,;=%-]+")
# Signs that pip would take a line for a path, a URL or an archive to install (pip's
# _looks_like_path and ARCHIVE_EXTENSIONS): refused whatever the trust.
_LOCAL_MARKS = ("/", "\\", ":", "@")
_ARCHIVE_SUFFIXES = (
    ".whl", ".zip", ".tar", ".tgz", ".tbz", ".txz", ".tlz",
    ".tar.gz", ".tar.bz2", ".tar.xz", ".tar.lz", ".tar.lzma",
)  # fmt: skip

_PINS_ONLY = (
    "a bundle's requirements hold only name==version pins (with --hash=sha256 options in a "
    "hashed lock); re-pack the model with kbundle"
)
_NEEDS_TRUST = (
    "pass --trust-code (trust_code=True) to let an https index, find-links location or "
    "'name @ https://...' requirement through"
)
_NEVER_LOCAL = (
    "kbundle never lets pip install from the bundle, a local path, a file: URL or through "
    "another pip option, even with --trust-code; install such a package yourself"
)


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
    """``name==version`` lines of a requirements or lock file (or ``pip freeze`` output), by
    normalised name; other lines are skipped. It trusts its input: a bundle's files go through
    :func:`check_requirements` first."""
    pins: dict[str, str] = {}
    for _, line in _logical_lines(text):
        match = _PIN_RE.match(line)
        if match:
            pins[canonical_name(match.group(1))] = match.group(2)
    return pins


@dataclass(frozen=True, slots=True)
class CheckedRequirements:
    """A bundle's requirements file that passed :func:`check_requirements`.

    ``text`` is the file as it is, comments included (what ``env export`` prints); ``lines``
    are its logical lines as pip reads them, each a pin with its hashes or, with
    ``trust_code``, an https source (what ``env create`` hands pip, and nothing else).
    """

    text: str
    lines: tuple[str, ...]

    def for_pip(self) -> str:
        """The checked lines alone, one a line: a requirements file without comments."""
        return "".join(f"{line}\n" for line in self.lines)


# A refused line: the error class it calls for, then the finding.
_Problem = tuple[type[KbundleError], Finding]


def check_requirements(
    data: bytes, *, member: str, hashed: bool, trust_code: bool = False
) -> CheckedRequirements:
    """``data``, the bundle's ``member``, if pip may read every line of it; else raise.

    Accepted: blank lines, comments, and ``name==version`` pins (``\\`` continuations joined
    as pip joins them), each with ``--hash=sha256:<64 hex>`` options when ``hashed`` (the
    lock) and none otherwise. With ``trust_code`` also an https ``--index-url``,
    ``--extra-index-url`` or ``--find-links`` (``-i``, ``-f``) line and
    ``name @ https://...`` requirements; never a local path, a ``file:`` URL, ``-e``, ``-r``,
    ``-c`` or another option, because nothing is ever installed from inside a bundle.

    Every bad line is collected and reported at once: :class:`UntrustedCodeError` when one of
    them could install or run something, else :class:`BundleFormatError` (not UTF-8, not
    printable ASCII, a foreign coding cookie, not a pin).
    """
    text = _decode_requirements(data, member)
    problems: list[tuple[int, _Problem]] = []

    def refuse(number: int, line: str, kind: type[KbundleError], problem: str, fix: str) -> None:
        where = f"{member} line {number}"
        found = Finding(location=where, problem=problem, actual=repr(line), fix=fix)
        problems.append((number, (kind, found)))

    for number, raw in enumerate(data.split(b"\n")[:2], start=1):
        cookie = _CODING_RE.search(raw) if raw.startswith(b"#") else None
        if cookie is not None and _codec_name(cookie.group(1)) not in _SAME_TEXT_CODECS:
            encoding = cookie.group(1).decode("ascii")
            refuse(
                number,
                raw.decode("utf-8"),
                BundleFormatError,
                f"declares the encoding {encoding!r}, in which pip would read other lines",
                _PINS_ONLY,
            )
    for number, raw_line in enumerate(text.splitlines(), start=1):
        if not _PRINTABLE_ASCII_RE.fullmatch(raw_line):
            refuse(number, raw_line, BundleFormatError, "is not printable ASCII", _PINS_ONLY)
    lines = []
    for number, line in _logical_lines(text):
        refused = _line_problem(line, hashed=hashed, trust_code=trust_code)
        if refused is None:
            lines.append(" ".join(line.split()))
        else:
            refuse(number, line, *refused)
    if problems:
        problems.sort(key=lambda item: item[0])
        kind: type[KbundleError] = (
            UntrustedCodeError
            if any(k is UntrustedCodeError for _, (k, _) in problems)
            else BundleFormatError
        )
        ordered = [f for _, (k, f) in problems if k is kind]
        ordered += [f for _, (k, f) in problems if k is not kind]
        lead = ordered[0]
        raise kind.from_findings(ordered, f"{lead.location} {lead.problem}: {lead.actual}")
    return CheckedRequirements(text=text, lines=tuple(lines))


def _decode_requirements(data: bytes, member: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        # The bad byte ends a stand-in line so that the count includes the line it is on.
        number = len((data[: exc.start] + b"?").splitlines())
        line = data.splitlines()[number - 1]
        raise BundleFormatError(
            f"{member} is not UTF-8 text: line {number} is {line!r}", hint=_PINS_ONLY
        ) from None


def _codec_name(name: bytes) -> str | None:
    try:
        return codecs.lookup(name.decode("ascii")).name
    except LookupError:
        return None


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """``(first line number, line)`` as pip reads a requirements file: lines ending in ``\\``
    joined to the next (not after a comment line), comments cut, blank lines dropped."""
    joined: list[tuple[int, str]] = []
    pending: list[str] = []
    start = 0
    for number, line in enumerate(text.splitlines(), start=1):
        comment = _COMMENT_RE.match(line) is not None
        if line.endswith("\\") and not comment:
            start = start if pending else number
            pending.append(line.strip("\\"))
            continue
        # pip puts a space before a comment line so that a joined comment is still cut.
        joined.append((start if pending else number, "".join([*pending, " " * comment + line])))
        pending = []
    if pending:
        joined.append((start, "".join(pending)))
    uncommented = ((number, _COMMENT_RE.sub("", line).strip()) for number, line in joined)
    return [(number, line) for number, line in uncommented if line]


def _line_problem(
    line: str, *, hashed: bool, trust_code: bool
) -> tuple[type[KbundleError], str, str] | None:
    """Why pip must not read ``line`` (error class, problem, fix), or None."""
    tokens = line.split()
    if tokens[0].startswith("-"):
        return _option_problem(tokens, trust_code)
    if len(tokens) >= 3 and tokens[1] == "@":
        source = _source_problem(tokens[2], trust_code)
        if source is not None:
            return source
        named, rest = _NAME_RE.fullmatch(tokens[0]) is not None, tokens[3:]
    else:
        pin = _STRICT_PIN_RE.fullmatch(tokens[0])
        named, rest = pin is not None and _is_version(pin.group(2)), tokens[1:]
    options = [token for token in rest if token.startswith("-")]
    for option in options:
        if not option.startswith("--hash"):
            problem = f"passes pip the option {option.partition('=')[0]!r}"
            return UntrustedCodeError, problem, _NEVER_LOCAL
    if not named or len(options) < len(rest):
        local = tokens[0].startswith((".", "~")) or any(mark in line for mark in _LOCAL_MARKS)
        if local or tokens[0].lower().endswith(_ARCHIVE_SUFFIXES):
            return UntrustedCodeError, "installs from a path, a URL or a file", _NEVER_LOCAL
        return BundleFormatError, "is not a name==version pin", _PINS_ONLY
    for option in options:
        if not _HASH_OPTION_RE.fullmatch(option):
            problem = f"has {option!r}, not --hash=sha256:<64 hex digits>"
            return BundleFormatError, problem, _PINS_ONLY
    if hashed and not options:
        problem = "has no --hash=sha256 option, which every line of a hashed lock needs"
        return BundleFormatError, problem, _PINS_ONLY
    if options and not hashed:
        return BundleFormatError, "has --hash options outside the hashed lock", _PINS_ONLY
    return None


def _option_problem(
    tokens: list[str], trust_code: bool
) -> tuple[type[KbundleError], str, str] | None:
    # optparse splits '--name=value' for long options only; '-i=URL' would be the value '=URL'.
    option, equals, value = (
        tokens[0].partition("=") if tokens[0].startswith("--") else (tokens[0], "", "")
    )
    values = [value, *tokens[1:]] if equals else tokens[1:]
    if option not in _SOURCE_OPTIONS or len(values) != 1:
        return UntrustedCodeError, "is a pip option kbundle never passes on", _NEVER_LOCAL
    return _source_problem(values[0], trust_code)


def _source_problem(url: str, trust_code: bool) -> tuple[type[KbundleError], str, str] | None:
    """Why pip must not fetch from ``url`` (an index, find-links location or requirement)."""
    try:
        parts = urllib.parse.urlsplit(url)
        https = parts.scheme == "https" and bool(parts.hostname)
    except ValueError:
        https = False
    if not https or not _URL_CHARS_RE.fullmatch(url):
        problem = "names a location other than a plain https URL"
        return UntrustedCodeError, problem, _NEVER_LOCAL
    if not trust_code:
        return UntrustedCodeError, "chooses where pip downloads packages from", _NEEDS_TRUST
    return None


def _is_version(text: str) -> bool:
    try:
        Version(text)
    except InvalidVersion:
        return False
    return True


def hash_lock(
    requirements: Path, output: Path, *, timeout: float = LOCK_TIMEOUT_SECONDS
) -> str | None:
    """Write ``output`` with hashes for every pin in ``requirements``; return None or why not.

    The lock is filtered to exactly the pinned closure, so installing it with
    ``--no-deps --require-hashes`` gives back the recorded distributions and nothing else.
    """
    if importlib.util.find_spec("piptools") is None:
        return "pip-tools is not installed (pip install 'kbundle[lock]')"
    raw = output.with_suffix(".raw").absolute()  # the tool starts in an empty directory
    arguments = [
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
        str(requirements.absolute()),
    ]
    done = run_tool(sys.executable, arguments, timeout=timeout)
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
