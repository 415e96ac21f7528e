"""Signatures over a bundle's manifest: the ``kbundle.sig`` member and what a signature means.

What is signed: the bytes ``b"kbundle-manifest-v1\\x00"`` followed by the exact manifest bytes
(the ``kbundle.json`` member). The manifest lists every payload member's size and SHA-256 and
records the environment, so one signature covers the whole bundle; the prefix keeps a kbundle
signature from being valid for any other protocol that uses the same key.

The ``kbundle.sig`` member (normative text in spec/bundle-format.md, "Signatures") is UTF-8
JSON, at most 16 signatures::

    {"version": 1, "signatures": [{"algorithm": "ed25519", "key_id": "sha256:<hex>",
                                   "public_key": "<base64, 32 bytes>",
                                   "signature": "<base64, 64 bytes>"}]}

``key_id`` is the key's fingerprint (:func:`kbundle.signing.keys.fingerprint`) and must match
``public_key``. Carrying the public key lets any reader check that every signature is intact;
*trust* comes only from the reader's own keys. Written with two-space indentation, a member
holding one signature always has the same length (:func:`signature_member_size`), which lets
``pack --sign`` reserve it before the manifest exists.

Reading rules (docs/signing.md): a malformed member, an unknown algorithm, or a signature that
does not verify is an integrity failure. A bundle is *trusted* when at least one signature is
by a trusted key and every signature verifies. Stable: the member format is format 1.0.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kbundle.container.limits import MAX_SIGNATURE_BYTES
from kbundle.container.manifest import load_json_object
from kbundle.container.names import SIGNATURE_NAME
from kbundle.errors import IntegrityError, SignatureError, UsageError
from kbundle.findings import Finding
from kbundle.signing.keys import (
    KEY_ALGORITHM,
    PUBLIC_KEY_BYTES,
    SIGNATURE_BYTES,
    PublicKey,
    SigningKey,
    fingerprint,
    load_public_key,
    load_trusted_keys,
    signing_available,
    trusted_keys_directory,
)

if TYPE_CHECKING:
    from kbundle.container.archive import BundleHead

__all__ = [
    "MAX_SIGNATURES",
    "SIGNATURE_CONTEXT",
    "SIGNATURE_MEMBER_VERSION",
    "SignaturePolicy",
    "SignatureRecord",
    "SignatureState",
    "SignatureStatus",
    "TrustedKeys",
    "check_signatures",
    "manifest_signer",
    "parse_signatures",
    "serialize_signatures",
    "sign_manifest",
    "signature_member_size",
    "signed_message",
    "signer_ids",
]

# Domain separation: what is signed is never just "some bytes" that another protocol using
# the same key might also accept.
SIGNATURE_CONTEXT = b"kbundle-manifest-v1\x00"
SIGNATURE_MEMBER_VERSION = 1
# Co-signers (a build system and a release manager, say) are a handful; the cap bounds the
# verification work a hostile member can demand.
MAX_SIGNATURES = 16
_RECORD_KEYS = ("algorithm", "key_id", "public_key", "signature")
_KEY_ID_RE = re.compile(r"^sha256:[0-9a-f]{64}$")

TrustedKeys = Sequence[str | os.PathLike[str] | PublicKey]
"""Public keys a caller trusts: key files (``.pub``) or loaded :class:`PublicKey` objects."""


@dataclass(frozen=True, kw_only=True, slots=True)
class SignatureRecord:
    """One signature in the ``kbundle.sig`` member."""

    algorithm: str
    key_id: str
    public_key: bytes
    signature: bytes


def signed_message(manifest_bytes: bytes) -> bytes:
    """The exact bytes a signature covers: the context prefix and the manifest bytes."""
    return SIGNATURE_CONTEXT + manifest_bytes


def sign_manifest(key: SigningKey, manifest_bytes: bytes) -> SignatureRecord:
    """Sign ``manifest_bytes`` with ``key``."""
    return SignatureRecord(
        algorithm=KEY_ALGORITHM,
        key_id=key.key_id,
        public_key=key.public.raw,
        signature=key.sign(signed_message(manifest_bytes)),
    )


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


def manifest_signer(key: SigningKey) -> Callable[[bytes], bytes]:
    """A function from manifest bytes to a one-signature member, for ``write_bundle(sign=)``."""

    def sign(manifest_bytes: bytes) -> bytes:
        return serialize_signatures([sign_manifest(key, manifest_bytes)])

    return sign


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


# --------------------------------------------------------------------------------------------
# What a bundle's signatures mean to this reader


class SignatureState(str, enum.Enum):
    """The outcome of checking a bundle's signatures against the reader's trusted keys."""

    UNSIGNED = "unsigned"  # no kbundle.sig member
    TRUSTED = "trusted"  # every signature verifies, and one is by a trusted key
    UNTRUSTED = "untrusted"  # every signature verifies, but no signer is trusted
    UNCHECKED = "unchecked"  # signed, but cryptography is not installed to check it
    INVALID = "invalid"  # malformed, or a signature does not verify

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, kw_only=True, slots=True)
class SignatureStatus:
    """What the signatures of one verified bundle say: its state, who signed, whom we trust."""

    state: SignatureState
    signers: tuple[str, ...] = ()
    trusted_signers: tuple[str, ...] = ()

    @property
    def trusted(self) -> bool:
        """True only when every signature verified and one is by a trusted key."""
        return self.state is SignatureState.TRUSTED

    def describe(self) -> str:
        """A few words for a summary line: ``signed by sha256:... (trusted)``."""
        if self.state is SignatureState.UNSIGNED:
            return "integrity-checked, not signed"
        if self.state is SignatureState.UNCHECKED:
            return (
                f"signed by {', '.join(self.signers)}; signature not checked: the 'cryptography' "
                "package is not installed (pip install 'kbundle[signing]')"
            )
        if self.state is SignatureState.INVALID:
            return "signature invalid"
        parts = [
            f"{signer} (trusted)"
            if signer in self.trusted_signers
            else f"unknown key {signer} (not trusted)"
            for signer in self.signers
        ]
        return "signed by " + ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": str(self.state),
            "signers": list(self.signers),
            "trusted_signers": list(self.trusted_signers),
        }


@dataclass(frozen=True, kw_only=True, slots=True)
class SignaturePolicy:
    """Whose signatures a reader trusts, and whether it demands one.

    ``keys`` None means the trusted-keys directory (read only when a bundle is signed);
    a tuple means exactly those keys. Use :meth:`create` to build one from caller options.
    """

    keys: tuple[PublicKey, ...] | None = None
    require: bool = False

    @classmethod
    def create(
        cls, trusted_keys: TrustedKeys | None = None, require_signature: bool = False
    ) -> SignaturePolicy:
        """The policy for ``trusted_keys`` / ``require_signature`` as the public API takes them.

        Naming keys replaces the trusted-keys directory for the call and demands a signature
        by one of them: a gate that names its key is never widened by whatever the machine's
        directory holds, and never passes an unsigned bundle.
        """
        if trusted_keys is None:
            return cls(keys=None, require=require_signature)
        if isinstance(trusted_keys, str | os.PathLike | PublicKey):
            trusted_keys = [trusted_keys]
        keys = tuple(
            key if isinstance(key, PublicKey) else load_public_key(key) for key in trusted_keys
        )
        return cls(keys=keys, require=require_signature or bool(keys))

    def trusted_keys(self) -> tuple[PublicKey, ...]:
        return self.keys if self.keys is not None else load_trusted_keys()

    def where(self) -> str:
        """Where trusted keys come from, for messages."""
        if self.keys is not None:
            return "the keys passed with --key"
        return f"the trusted keys directory {trusted_keys_directory()}"


def _finding(
    problem: str, *, fix: str, expected: str | None = None, actual: str | None = None
) -> Finding:
    return Finding(
        location=SIGNATURE_NAME, problem=problem, expected=expected, actual=actual, fix=fix
    )


def check_signatures(
    head: BundleHead, policy: SignaturePolicy
) -> tuple[SignatureStatus, list[Finding]]:
    """Check ``head``'s signatures under ``policy``: the status, and every problem found.

    Problems (all at location ``kbundle.sig``): a malformed member; a signature that does not
    verify under its own public key; no signature, or none by a trusted key, when the policy
    requires one. Without ``cryptography`` a signed bundle is ``UNCHECKED`` unless the policy
    requires a signature, which then raises :class:`UsageError`.
    """
    if head.signature is None:
        status = SignatureStatus(state=SignatureState.UNSIGNED)
        if not policy.require:
            return status, []
        return status, [
            _finding(
                "bundle is not signed, and a signature by a trusted key is required",
                expected="a signature",
                actual=f"no {SIGNATURE_NAME} member",
                fix="sign it with 'kbundle sign BUNDLE --key KEY', "
                "or drop --require-signature/--key",
            )
        ]
    try:
        records = parse_signatures(head.signature)
    except SignatureError as exc:
        return SignatureStatus(state=SignatureState.INVALID), [
            _finding(exc.message.removeprefix(f"{SIGNATURE_NAME}: "), fix=exc.hint or "")
        ]
    signers = tuple(record.key_id for record in records)
    if not signing_available():
        if policy.require:
            raise UsageError(
                "checking the bundle's signature needs the 'cryptography' package, "
                "which is not installed",
                hint="install it with: pip install 'kbundle[signing]'",
            )
        return SignatureStatus(state=SignatureState.UNCHECKED, signers=signers), []
    message = signed_message(head.manifest_bytes)
    findings = [
        _finding(
            f"signature by {record.key_id} does not verify",
            fix="the manifest was changed after signing, or the signature is damaged; "
            "refuse the bundle",
        )
        for record in records
        if not PublicKey(raw=record.public_key).verifies(record.signature, message)
    ]
    if findings:
        return SignatureStatus(state=SignatureState.INVALID, signers=signers), findings
    trusted = {key.key_id for key in policy.trusted_keys()}
    trusted_signers = tuple(signer for signer in signers if signer in trusted)
    if trusted_signers:
        return SignatureStatus(
            state=SignatureState.TRUSTED, signers=signers, trusted_signers=trusted_signers
        ), []
    status = SignatureStatus(state=SignatureState.UNTRUSTED, signers=signers)
    if not policy.require:
        return status, []
    return status, [
        _finding(
            "not signed by a trusted key",
            expected=f"a signature by one of {policy.where()}",
            actual="signed by unknown key " + ", ".join(signers),
            fix="pass the signer's public key with --key, or add it to the trusted keys directory",
        )
    ]
