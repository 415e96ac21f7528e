"""A requirements file as pip reads it, and the only lines kbundle lets pip read from a bundle.

A bundle's requirements are read back only through :func:`check_requirements`, which
``env export`` and ``env create`` share: every logical line must be a ``name==version`` pin
(with ``--hash=sha256:`` options in a hashed lock), read exactly as pip reads the file (lines
joined and comments cut as pip does it), so that nothing in it can make pip install from the
bundle, a local path or a chosen index (THREATS.md row 20). Stable: internal.
"""

from __future__ import annotations

import codecs
import re
import urllib.parse
from dataclasses import dataclass

from packaging.version import InvalidVersion, Version

from kbundle.env.distributions import canonical_name
from kbundle.errors import BundleFormatError, KbundleError, UntrustedCodeError
from kbundle.findings import Finding

__all__ = ["PIN_RE", "CheckedRequirements", "check_requirements", "parse_pins"]

PIN_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")

# What check_requirements accepts as a pin: a PEP 508 name (what PEP 503 normalises), '==',
# and a version packaging also parses (which rules out markers, wildcards and ${VARIABLES},
# which pip would expand from the environment).
_NAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")
_STRICTPIN_RE = re.compile(rf"({_NAME_RE.pattern})==(\S+)")
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


def parse_pins(text: str) -> dict[str, str]:
    """``name==version`` lines of a requirements or lock file (or ``pip freeze`` output), by
    normalised name; other lines are skipped. It trusts its input: a bundle's files go through
    :func:`check_requirements` first."""
    pins: dict[str, str] = {}
    for _, line in _logical_lines(text):
        match = PIN_RE.match(line)
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
        pin = _STRICTPIN_RE.fullmatch(tokens[0])
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
