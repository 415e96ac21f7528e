"""Reading a bundle without using it: ``inspect`` (the manifest only) and ``verify`` (every
byte, and the signatures).

Neither imports Keras or TensorFlow. ``verified_scan`` is the verification every other
reading pipeline (unpack, load, show-code, env export) starts with: the whole bundle read once,
optionally extracted into a fresh private directory, the digest pinned by ``expect`` compared,
the signatures checked under a policy, and every finding raised at once.
Stable: ``inspect``, ``verify`` and ``VerifyReport`` are public API.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kbundle.container.manifest import format_digest
from kbundle.container.names import MANIFEST_NAME, SIGNATURE_NAME
from kbundle.container.reader import (
    ALTERED_FIX,
    BundleHead,
    MemberSink,
    read_head,
    scan_bundle,
)
from kbundle.errors import IntegrityError, SignatureError, UsageError
from kbundle.findings import Finding
from kbundle.signing.signatures import (
    SignaturePolicy,
    SignatureStatus,
    TrustedKeys,
    check_signatures,
)

__all__ = ["VerifyReport", "inspect", "verified_scan", "verify"]

_DIGEST_PREFIX = "sha256:"

ProgressCallback = Callable[[int, int], None]
"""Called with (bytes done, bytes total) of the payload."""


@dataclass(slots=True)
class VerifyReport:
    """A verified bundle: its header, how much was checked, and what its signatures say."""

    head: BundleHead
    findings: list[Finding] = field(default_factory=list)
    files_checked: int = 0
    bytes_checked: int = 0
    signature: SignatureStatus | None = None

    def to_dict(self) -> dict[str, Any]:
        """The ``kbundle verify --json`` shape."""
        return {
            "ok": not self.findings,
            "digest": self.head.digest,
            "files": self.files_checked,
            "bytes": self.bytes_checked,
            "signed": self.head.signature is not None,
            "signature": self.signature.to_dict() if self.signature else None,
            "findings": [f.to_dict() for f in self.findings],
        }


def inspect(bundle: str | os.PathLike[str]) -> BundleHead:
    """Read the manifest (and signature) only; nothing else of the bundle is read. Nothing is
    verified either: a corrupt payload is found by :func:`verify`."""
    return read_head(Path(bundle))


def check_expected(expect: str | None) -> None:
    """Refuse a malformed ``expect`` digest before any work."""
    if expect is None:
        return
    hexpart = expect.removeprefix(_DIGEST_PREFIX)
    if len(hexpart) != 64 or any(c not in "0123456789abcdef" for c in hexpart):
        raise UsageError(
            f"expect (--expect) must be 'sha256:' followed by 64 lowercase hex digits: {expect!r}",
            hint="copy the digest that 'kbundle pack' printed",
        )


def verify(
    bundle: str | os.PathLike[str],
    *,
    expect: str | None = None,
    trusted_keys: TrustedKeys | None = None,
    require_signature: bool = False,
    progress: ProgressCallback | None = None,
) -> VerifyReport:
    """Check every member's size and digest, names, kinds and structure; raise on any problem.

    ``expect`` pins the bundle digest (``sha256:...``). A signature, when present, must verify
    (docs/signing.md): ``trusted_keys`` (key files or :class:`~kbundle.PublicKey`) are the
    keys trusted for this call, and naming any also requires a signature by one of them;
    without it the trusted-keys directory is used. ``require_signature`` demands a trusted
    signature. Raises :class:`IntegrityError` (:class:`SignatureError` when only signatures
    are at fault) listing every finding; returns the report, whose ``signature`` says who
    signed, when the bundle is intact.
    """
    check_expected(expect)
    policy = SignaturePolicy.create(trusted_keys, require_signature)
    return verified_scan(Path(bundle), expect=expect, policy=policy, progress=progress)


def verified_scan(
    path: Path,
    *,
    expect: str | None,
    policy: SignaturePolicy,
    progress: ProgressCallback | None = None,
    extract_to: Path | None = None,
    sinks: Mapping[str, MemberSink] | None = None,
) -> VerifyReport:
    """Read ``path`` once (extracting it into ``extract_to`` when given, with ``sinks`` for
    members the caller writes itself), compare ``expect``, check signatures under ``policy``;
    raise every finding at once, or return the report. An extraction holds ``kbundle.json``
    too: the manifest lists everything written beside it."""
    scan = scan_bundle(
        path, extract_to=extract_to, progress=_progress_adapter(progress, path), sinks=sinks
    )
    report = VerifyReport(
        head=scan.head,
        findings=scan.findings,
        files_checked=scan.files_checked,
        bytes_checked=scan.bytes_checked,
    )
    _expect_finding(report, expect)
    status, findings = check_signatures(report.head, policy)
    report.signature = status
    report.findings.extend(findings)
    _raise_findings(report, path)
    if extract_to is not None:
        (extract_to / MANIFEST_NAME).write_bytes(report.head.manifest_bytes)
    return report


def _progress_adapter(
    progress: ProgressCallback | None, path: Path
) -> Callable[[int], None] | None:
    if progress is None:
        return None
    total = read_head(path).manifest.payload_size
    done = 0

    def advance(count: int) -> None:
        nonlocal done
        done += count
        progress(done, total)

    return advance


def _expect_finding(report: VerifyReport, expect: str | None) -> None:
    if expect is None:
        return
    pinned = format_digest(expect.removeprefix(_DIGEST_PREFIX))
    if report.head.digest != pinned:
        report.findings.insert(
            0,
            Finding(
                location=MANIFEST_NAME,
                problem="bundle digest differs from --expect",
                expected=pinned,
                actual=report.head.digest,
                fix="this is not the bundle you pinned; check which file you were given",
            ),
        )


def _raise_findings(report: VerifyReport, bundle: Path) -> None:
    if not report.findings:
        return
    only_signature = all(f.location == SIGNATURE_NAME for f in report.findings)
    raise (SignatureError if only_signature else IntegrityError).from_findings(
        report.findings,
        f"{bundle} failed verification: {report.findings[0].describe()}",
        hint=report.findings[0].fix or ALTERED_FIX,
    )
