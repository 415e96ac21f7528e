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
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kbundle.container.manifest import format_digest
from kbundle.container.names import MANIFEST_NAME, SIGNATURE_NAME
from kbundle.container.reader import ALTERED_FIX, BundleHead, BundleReader, MemberSink, read_head
from kbundle.errors import IntegrityError, SignatureError, UsageError
from kbundle.findings import Finding
from kbundle.signing.signatures import (
    SignaturePolicy,
    SignatureStatus,
    TrustedKeys,
    check_signatures,
)
from kbundle.storage.locations import Location, parse_location
from kbundle.storage.sources import open_bundle

__all__ = [
    "OpenBundle",
    "StorageOptions",
    "VerifyReport",
    "inspect",
    "read_bundle_head",
    "reading",
    "verified_scan",
    "verify",
]

StorageOptions = Mapping[str, Any]
"""Keyword arguments for a URL's fsspec filesystem (credentials, ``endpoint_url``, ...)."""

_DIGEST_PREFIX = "sha256:"

ProgressCallback = Callable[[int, int], None]
"""Called with (bytes done, bytes total): of the payload for a local file or standard input,
of the object transferred for a URL (total 0 when the store does not say)."""


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


def inspect(
    bundle: str | os.PathLike[str], *, storage_options: StorageOptions | None = None
) -> BundleHead:
    """Read the manifest (and signature) only; nothing else of the bundle is read (of a URL,
    only the first frame, by range requests). Nothing is verified either: a corrupt payload
    is found by :func:`verify`. ``bundle`` is a path, a URL of any fsspec filesystem
    (``storage_options`` go to it) or ``"-"`` for standard input (docs/storage.md)."""
    return read_bundle_head(parse_location(bundle, storage_options))


def read_bundle_head(location: Location) -> BundleHead:
    """The header region of the bundle at ``location``, read alone."""
    with open_bundle(location, head_only=True) as source:
        return read_head(source.stream, source.name)


@dataclass(frozen=True, slots=True)
class OpenBundle:
    """A bundle opened for one pass (:func:`reading`): its reader, its name in messages,
    where it is, and the payload progress callback (None: progress is reported as bytes
    transferred by the storage layer instead)."""

    reader: BundleReader
    name: str
    location: Location
    progress: ProgressCallback | None


@contextmanager
def reading(location: Location, progress: ProgressCallback | None) -> Iterator[OpenBundle]:
    """The bundle at ``location`` opened to be read once: its head first, then its payload.
    ``progress`` follows the payload of a file or standard input, the transfer of a URL."""
    transfer = progress if location.is_url else None
    with (
        open_bundle(location, progress=transfer) as source,
        BundleReader(source.stream, source.name) as reader,
    ):
        yield OpenBundle(reader, source.name, location, None if location.is_url else progress)


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
    storage_options: StorageOptions | None = None,
) -> VerifyReport:
    """Check every member's size and digest, names, kinds and structure; raise on any problem.

    ``bundle`` is a path, a URL of any fsspec filesystem (``storage_options`` go to it; the
    object is streamed once, never stored locally) or ``"-"`` for standard input.

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
    with reading(parse_location(bundle, storage_options), progress) as opened:
        return verified_scan(opened, expect=expect, policy=policy)


def verified_scan(
    opened: OpenBundle,
    *,
    expect: str | None,
    policy: SignaturePolicy,
    extract_to: Path | None = None,
    sinks: Mapping[str, MemberSink] | None = None,
) -> VerifyReport:
    """Read the rest of ``opened`` (extracting it into ``extract_to`` when given, with
    ``sinks`` for members the caller writes itself), compare ``expect``, check signatures
    under ``policy``; raise every finding at once, or return the report. What is verified is
    exactly what was read, and what is extracted. An extraction holds ``kbundle.json`` too:
    the manifest lists everything written beside it."""
    head = opened.reader.head()
    scan = opened.reader.scan(
        extract_to=extract_to, progress=_progress_adapter(opened.progress, head), sinks=sinks
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
    _raise_findings(report, opened.name)
    if extract_to is not None:
        (extract_to / MANIFEST_NAME).write_bytes(report.head.manifest_bytes)
    return report


def _progress_adapter(
    progress: ProgressCallback | None, head: BundleHead
) -> Callable[[int], None] | None:
    if progress is None:
        return None
    total = head.manifest.payload_size
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


def _raise_findings(report: VerifyReport, bundle: str) -> None:
    if not report.findings:
        return
    only_signature = all(f.location == SIGNATURE_NAME for f in report.findings)
    raise (SignatureError if only_signature else IntegrityError).from_findings(
        report.findings,
        f"{bundle} failed verification: {report.findings[0].describe()}",
        hint=report.findings[0].fix or ALTERED_FIX,
    )
