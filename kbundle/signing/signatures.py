"""What a bundle's signatures mean: signing a manifest, and checking every signature against
the keys this reader trusts.

The member's format (what is signed, the JSON records) is kbundle.container.signature_member.
Carrying the public key lets any reader check that every signature is intact; *trust* comes
only from the reader's own keys. Reading rules (docs/signing.md): a malformed member, an
unknown algorithm, or a signature that does not verify is an integrity failure. A bundle is
*trusted* when at least one signature is by a trusted key and every signature verifies.
Stable: ``SignatureStatus`` and ``TrustedKeys`` are public; the rest is internal.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kbundle.container.names import SIGNATURE_NAME
from kbundle.container.signature_member import (
    KEY_ALGORITHM,
    SignatureRecord,
    parse_signatures,
    serialize_signatures,
    signed_message,
)
from kbundle.errors import SignatureError, UsageError
from kbundle.findings import Finding
from kbundle.signing.keys import (
    PublicKey,
    SigningKey,
    load_public_key,
    load_trusted_keys,
    signing_available,
    trusted_keys_directory,
)

if TYPE_CHECKING:
    from kbundle.container.reader import BundleHead

__all__ = [
    "SignaturePolicy",
    "SignatureState",
    "SignatureStatus",
    "TrustedKeys",
    "check_signatures",
    "manifest_signer",
    "sign_manifest",
]

TrustedKeys = Sequence[str | os.PathLike[str] | PublicKey]
"""Public keys a caller trusts: key files (``.pub``) or loaded :class:`PublicKey` objects."""


def sign_manifest(key: SigningKey, manifest_bytes: bytes) -> SignatureRecord:
    """Sign ``manifest_bytes`` with ``key``."""
    return SignatureRecord(
        algorithm=KEY_ALGORITHM,
        key_id=key.key_id,
        public_key=key.public.raw,
        signature=key.sign(signed_message(manifest_bytes)),
    )


def manifest_signer(key: SigningKey) -> Callable[[bytes], bytes]:
    """A function from manifest bytes to a one-signature member, for ``write_bundle(sign=)``."""

    def sign(manifest_bytes: bytes) -> bytes:
        return serialize_signatures([sign_manifest(key, manifest_bytes)])

    return sign


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
