"""The ``kbundle.sig`` member: what is signed, and the member's JSON records, written and read.

What is signed: the bytes ``b"kbundle-manifest-v1\\x00"`` followed by the exact manifest bytes
(the ``kbundle.json`` member). The manifest lists every payload member's size and SHA-256 and
records the environment, so one signature covers the whole bundle; the prefix keeps a kbundle
signature from being valid for any other protocol that uses the same key.

The member (normative text in spec/bundle-format.md, sections 14 and 15) is UTF-8 JSON, at
most 16 signatures::

    {"version": 1, "signatures": [{"algorithm": "ed25519", "key_id": "sha256:<hex>",
                                   "public_key": "<base64, 32 bytes>",
                                   "signature": "<base64, 64 bytes>"}]}

``key_id`` is the key's fingerprint (:func:`fingerprint`) and must match ``public_key``.
Written with two-space indentation, a member holding one signature always has the same length
(:func:`signature_member_size`), which lets ``pack --sign`` reserve it before the manifest
exists. Parsing checks structure only; checking signatures and trust is kbundle.signing's.
Stable: the member format is format 1.0.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kbundle.container.limits import MAX_SIGNATURE_BYTES
from kbundle.container.manifest import format_digest, load_json_object
from kbundle.container.names import SIGNATURE_NAME
from kbundle.errors import IntegrityError, SignatureError

__all__ = [
    "KEY_ALGORITHM",
    "MAX_SIGNATURES",
    "PUBLIC_KEY_BYTES",
    "SIGNATURE_BYTES",
    "SIGNATURE_CONTEXT",
    "SIGNATURE_MEMBER_VERSION",
    "SignatureRecord",
    "fingerprint",
    "parse_signatures",
    "serialize_signatures",
    "signature_member_size",
    "signed_message",
    "signer_ids",
]

# The one signature algorithm of format 1.0, and its sizes.
KEY_ALGORITHM = "ed25519"
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
# Domain separation: what is signed is never just "some bytes" that another protocol using
# the same key might also accept.
SIGNATURE_CONTEXT = b"kbundle-manifest-v1\x00"
SIGNATURE_MEMBER_VERSION = 1
# Co-signers (a build system and a release manager, say) are a handful; the cap bounds the
# verification work a hostile member can demand.
MAX_SIGNATURES = 16
_RECORD_KEYS = ("algorithm", "key_id", "public_key", "signature")
_KEY_ID_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


def fingerprint(raw_public_key: bytes) -> str:
    """A key's name: ``sha256:`` and the hex SHA-256 of its 32 raw public-key bytes."""
    return format_digest(hashlib.sha256(raw_public_key).hexdigest())


def signed_message(manifest_bytes: bytes) -> bytes:
    """The exact bytes a signature covers: the context prefix and the manifest bytes."""
    return SIGNATURE_CONTEXT + manifest_bytes


@dataclass(frozen=True, kw_only=True, slots=True)
class SignatureRecord:
    """One signature in the ``kbundle.sig`` member."""

    algorithm: str
    key_id: str
    public_key: bytes
    signature: bytes


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def serialize_signatures(records: Sequence[SignatureRecord]) -> bytes:
    """The ``kbundle.sig`` member bytes for ``records`` (in the order given)."""
    document = {
        "version": SIGNATURE_MEMBER_VERSION,
        "signatures": [
            {
                "algorithm": record.algorithm,
                "key_id": record.key_id,
                "public_key": _b64(record.public_key),
                "signature": _b64(record.signature),
            }
            for record in records
        ],
    }
    return (json.dumps(document, indent=2) + "\n").encode("utf-8")


def signature_member_size(count: int = 1) -> int:
    """The length of a ``kbundle.sig`` member holding ``count`` Ed25519 signatures."""
    placeholder = SignatureRecord(
        algorithm=KEY_ALGORITHM,
        key_id=fingerprint(b""),
        public_key=b"\0" * PUBLIC_KEY_BYTES,
        signature=b"\0" * SIGNATURE_BYTES,
    )
    return len(serialize_signatures([placeholder] * count))


def _malformed(location: str, problem: str) -> SignatureError:
    return SignatureError(
        f"{location}: {problem}",
        hint="the signature member is damaged or was not written by kbundle; refuse the bundle",
    )


def _decode_b64(value: Any, location: str, size: int) -> bytes:
    if not isinstance(value, str):
        raise _malformed(location, f"must be a base64 string: {value!r}")
    try:
        data = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise _malformed(location, f"is not valid base64: {value[:60]!r}") from None
    if len(data) != size or _b64(data) != value:
        raise _malformed(location, f"must be the canonical base64 of {size} bytes: {value[:60]!r}")
    return data


def _parse_record(item: Any, location: str) -> SignatureRecord:
    if not isinstance(item, dict):
        raise _malformed(location, f"must be an object: {item!r}"[:200])
    if sorted(item) != sorted(_RECORD_KEYS):
        raise _malformed(
            location,
            f"must have exactly the fields {', '.join(_RECORD_KEYS)}: "
            f"found {', '.join(sorted(item))}",
        )
    algorithm = item["algorithm"]
    if algorithm != KEY_ALGORITHM:
        raise SignatureError(
            f"{location}.algorithm: unsupported signature algorithm {algorithm!r}"[:200],
            hint=f"this kbundle verifies only {KEY_ALGORITHM} signatures; refuse the bundle or "
            "upgrade kbundle",
        )
    key_id = item["key_id"]
    if not isinstance(key_id, str) or not _KEY_ID_RE.match(key_id):
        raise _malformed(
            f"{location}.key_id", f"must be 'sha256:' and 64 lowercase hex digits: {key_id!r}"[:200]
        )
    public_key = _decode_b64(item["public_key"], f"{location}.public_key", PUBLIC_KEY_BYTES)
    if fingerprint(public_key) != key_id:
        raise _malformed(
            f"{location}.key_id",
            f"does not match public_key (whose fingerprint is {fingerprint(public_key)}): {key_id}",
        )
    signature = _decode_b64(item["signature"], f"{location}.signature", SIGNATURE_BYTES)
    return SignatureRecord(
        algorithm=algorithm, key_id=key_id, public_key=public_key, signature=signature
    )


def parse_signatures(data: bytes) -> list[SignatureRecord]:
    """Parse a ``kbundle.sig`` member strictly; raise :class:`SignatureError` on any flaw.

    Checks structure only (no cryptography needed): the version, 1..MAX_SIGNATURES records
    with exactly the known fields, a supported algorithm, canonical base64 of the right
    lengths, ``key_id`` matching ``public_key``, and no key twice.
    """
    try:
        document = load_json_object(data, what=SIGNATURE_NAME, limit=MAX_SIGNATURE_BYTES)
    except IntegrityError as exc:
        raise SignatureError(exc.message, hint=exc.hint) from None
    if sorted(document) != ["signatures", "version"]:
        raise _malformed(
            SIGNATURE_NAME,
            "must have exactly the fields signatures, version: "
            f"found {', '.join(sorted(document))}",
        )
    version = document["version"]
    if version != SIGNATURE_MEMBER_VERSION or isinstance(version, bool):
        raise SignatureError(
            f"{SIGNATURE_NAME}: unsupported signature member version {version!r}"[:200],
            hint=f"this kbundle reads version {SIGNATURE_MEMBER_VERSION}; upgrade kbundle",
        )
    items = document["signatures"]
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_SIGNATURES:
        count = len(items) if isinstance(items, list) else "not a list"
        raise _malformed(
            f"{SIGNATURE_NAME}: signatures",
            f"must be a list of 1 to {MAX_SIGNATURES} signatures: {count}",
        )
    records = [
        _parse_record(item, f"{SIGNATURE_NAME}: signatures[{i}]") for i, item in enumerate(items)
    ]
    seen: set[str] = set()
    for index, record in enumerate(records):
        if record.key_id in seen:
            raise _malformed(
                f"{SIGNATURE_NAME}: signatures[{index}].key_id",
                f"the same key signs twice: {record.key_id}",
            )
        seen.add(record.key_id)
    return records


def signer_ids(signature: bytes | None) -> tuple[str, ...] | str:
    """The key ids a signature member names, or why it cannot be read (for display only:
    naming a key proves nothing until :func:`check_signatures` has verified it)."""
    if signature is None:
        return ()
    try:
        return tuple(record.key_id for record in parse_signatures(signature))
    except SignatureError as exc:
        return exc.message
