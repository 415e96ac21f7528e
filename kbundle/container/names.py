"""Member names: the one place that decides whether a path inside a bundle is safe.

A member name is relative, uses ``/`` as separator, has no empty, ``.`` or ``..`` component,
no backslash, colon, NUL or other control character, no component ending in a space or dot
or named like a Windows device (``con``, ``aux.txt``, ...), is valid Unicode in NFC, and
lives under one of the top-level areas the format defines. Names are compared for duplicates
after NFC normalisation and case folding, because the file system that receives them may
fold case. Invalid names are refused, never repaired. Stable: the rules are part of format
1.0 (spec/bundle-format.md, "Member naming rules"); format 1.1 added the ``assets`` area.
"""

from __future__ import annotations

import unicodedata

from kbundle.container.limits import MAX_MEMBER_NAME_BYTES, MAX_NAME_COMPONENT_BYTES

__all__ = [
    "MANIFEST_NAME",
    "PAYLOAD_AREAS",
    "SIGNATURE_NAME",
    "collision_key",
    "name_problem",
]

MANIFEST_NAME = "kbundle.json"
SIGNATURE_NAME = "kbundle.sig"
# Top-level directories a payload member may live under (spec: "Payload areas"). ``assets``
# is format 1.1: a 1.0 reader refuses its members as outside every area.
PAYLOAD_AREAS = ("model", "code", "objects", "env", "probe", "assets")

_WINDOWS_RESERVED = {"con", "prn", "aux", "nul"} | {
    f"{p}{i}" for p in ("com", "lpt") for i in range(10)
}


def name_problem(name: str) -> str | None:
    """Return why ``name`` is not a safe payload member name, or ``None`` when it is."""
    if not name:
        return "empty name"
    if not _is_utf8_encodable(name):
        return "name is not valid Unicode (lone surrogate)"
    if len(name.encode("utf-8")) > MAX_MEMBER_NAME_BYTES:
        return f"name longer than {MAX_MEMBER_NAME_BYTES} bytes"
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in name):
        return "control character (NUL, newline, ...) in name"
    if "\\" in name:
        return "backslash in name"
    if ":" in name:
        return "colon in name (drive letter or alternate stream)"
    if name.startswith("/"):
        return "absolute name"
    if unicodedata.normalize("NFC", name) != name:
        return "name is not NFC-normalised"
    parts = name.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            return f"component {part!r} is not allowed (names must be normalised and relative)"
        if len(part.encode("utf-8")) > MAX_NAME_COMPONENT_BYTES:
            return f"component longer than {MAX_NAME_COMPONENT_BYTES} bytes"
        if part.endswith((" ", ".")) or part.split(".")[0].lower() in _WINDOWS_RESERVED:
            return f"component {part!r} cannot be created on every file system"
    if parts[0] not in PAYLOAD_AREAS or len(parts) < 2:
        areas = ", ".join(f"{a}/" for a in PAYLOAD_AREAS)
        return f"not under a payload area ({areas})"
    return None


def _is_utf8_encodable(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def collision_key(name: str) -> str:
    """The key under which two names would land on the same file on a case-folding system."""
    return unicodedata.normalize("NFC", name).casefold()
