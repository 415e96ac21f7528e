"""The sign pipeline: add a signature to an existing bundle without changing its identity.

The bundle is verified first (every member, and any signatures it already carries), so a key
never vouches for a damaged bundle. The new ``kbundle.sig`` member keeps the signatures of
other keys and replaces one by the same key. The manifest bytes are not touched, so the
bundle digest stays the same; the payload frames are copied byte for byte (or re-compressed
when another tool re-compressed the bundle). The output is written to a temporary file and
renamed into place, so signing in place leaves the original intact on any failure.
Stable: the ``sign_bundle()`` signature is public API.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kbundle.container.reader import ByteSource
from kbundle.container.rewrite import rewrite_header
from kbundle.container.signature_member import (
    MAX_SIGNATURES,
    parse_signatures,
    serialize_signatures,
)
from kbundle.container.writer import DEFAULT_LEVEL
from kbundle.errors import UsageError
from kbundle.pipelines.verify import StorageOptions, reading, verified_scan
from kbundle.signing.keys import SigningKey
from kbundle.signing.signatures import SignaturePolicy, sign_manifest
from kbundle.storage.locations import parse_location
from kbundle.storage.outputs import check_output, open_output
from kbundle.storage.sources import open_bundle

__all__ = ["SignResult", "sign_bundle"]


@dataclass(frozen=True, kw_only=True, slots=True)
class SignResult:
    """What signing wrote: where, the (unchanged) bundle digest, every signer now on it."""

    path: Path | str  # a local file, or the URL (without credentials) or "-" written
    digest: str
    key_id: str
    signers: tuple[str, ...]
    copied: bool  # payload frames copied byte for byte (False: re-compressed)

    def to_dict(self) -> dict[str, Any]:
        """The ``kbundle sign --json`` shape."""
        return {
            "ok": True,
            "bundle": str(self.path),
            "digest": self.digest,
            "key_id": self.key_id,
            "signers": list(self.signers),
        }


def sign_bundle(
    bundle: str | os.PathLike[str],
    key: SigningKey,
    *,
    output: str | os.PathLike[str] | None = None,
    force: bool = False,
    storage_options: StorageOptions | None = None,
) -> SignResult:
    """Sign ``bundle`` with ``key``, in place or into ``output``.

    An existing ``output`` is replaced only with ``force``; signing in place needs no flag,
    because the content stays the same bundle. Raises :class:`IntegrityError` when the bundle
    (or a signature already on it) does not verify; nothing is written then. ``bundle`` and
    ``output`` may be URLs (``storage_options`` go to their filesystems); ``output`` may be
    ``"-"`` for standard output. The bundle is read twice (verified, then copied), so it
    cannot come from standard input; a copy that changed in between cannot be vouched for:
    the signature covers the manifest, which covers every payload byte.
    """
    source = parse_location(bundle, storage_options)
    if source.is_stdio:
        raise UsageError(
            "sign reads the bundle twice (to verify it, then to copy it): not from standard input",
            hint="save the bundle to a file or a URL first",
        )
    target = parse_location(output, storage_options) if output is not None else source
    in_place = target.same_as(source)
    if not in_place:
        check_output(target, force=force, inputs=(source,))
    # Existing signatures must verify, but nobody needs to trust them to add another.
    with reading(source, None) as opened:
        head = verified_scan(opened, expect=None, policy=SignaturePolicy.create((), False)).head
    records = (
        [r for r in parse_signatures(head.signature) if r.key_id != key.key_id]
        if head.signature
        else []
    )
    records.append(sign_manifest(key, head.manifest_bytes))
    if len(records) > MAX_SIGNATURES:
        raise UsageError(
            f"{source} already carries {len(records) - 1} signatures, the most a bundle may hold",
            hint="sign a copy made without signatures (repack it)",
        )

    @contextmanager
    def open_source() -> Iterator[ByteSource]:
        with open_bundle(source) as opened_source:
            yield opened_source.stream

    with open_output(target, force=in_place or force) as out:
        copied = rewrite_header(
            open_source,
            source.display,
            out,
            head,
            serialize_signatures(records),
            level=DEFAULT_LEVEL,
        )
    return SignResult(
        path=target.reported,
        digest=head.digest,
        key_id=key.key_id,
        signers=tuple(r.key_id for r in records),
        copied=copied,
    )
