"""Reading a bundle back, verified: the header region alone, or every byte.

Reading runs the writer's pass in reverse (kbundle.container.writer describes the layout):
frame structure is tracked, decompression is bounded by a window limit and by the total the
manifest declares, every tar header is checked, every member is hashed while (optionally)
being written into a fresh private directory, and every problem is collected as a finding.
A caller may route one member's bytes to a writer of its own (``sinks``): the load pipeline
splits a Keras zip that way; the container knows nothing of what the bytes are.

The reader is handed a stream and reads it once, front to back, never seeking: where the
bytes come from (a file, a pipe, an object store) is kbundle.storage's business, and ``name``
is all the reader knows of it, for messages. Stable: internal; the layout is format 1.0.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol, cast

import zstandard

from kbundle._io.writers import QueuedWriter
from kbundle.container.hashing import PipelinedHasher, digest_bytes
from kbundle.container.limits import (
    CHUNK_SIZE,
    MAX_ARCHIVE_OVERHEAD_PER_MEMBER,
    MAX_MANIFEST_BYTES,
    MAX_SIGNATURE_BYTES,
    MAX_WINDOW_SIZE,
)
from kbundle.container.manifest import Manifest, bundle_digest, parse_manifest
from kbundle.container.names import MANIFEST_NAME, SIGNATURE_NAME, collision_key, name_problem
from kbundle.container.signature_member import signer_ids
from kbundle.container.tarstream import BLOCK, END_OF_ARCHIVE, TarEntry, TarReader
from kbundle.container.writer import ProgressCallback
from kbundle.container.zstdframes import TRAILER_TAG, ZSTD_MAGIC, FrameTracker, TrackedReader
from kbundle.errors import IntegrityError, LimitExceededError, NotABundleError
from kbundle.findings import Finding

__all__ = [
    "ALTERED_FIX",
    "BundleHead",
    "BundleReader",
    "ByteSource",
    "MemberSink",
    "MemberWriter",
    "ScanReport",
    "Truncated",
    "read_exactly",
    "read_head",
    "scan_bundle",
]

# Zero blocks a reader tolerates after the end-of-archive marker: tar tools pad the archive to
# a 10 KiB record (20 blocks); anything beyond that, or non-zero, is trailing garbage.
_MAX_TRAILER = 20 * BLOCK
# What to do about any member or framing that differs from what the manifest and trailer
# record: nothing in the bundle can be trusted to repair it.
ALTERED_FIX = "the bundle is corrupt or was altered; fetch an intact copy"


class ByteSource(Protocol):
    """Where a bundle's bytes come from: a file, a pipe, a download (kbundle.storage). A read
    may return fewer bytes than asked for; an empty result is the end."""

    def read(self, size: int = -1, /) -> bytes: ...


class MemberWriter(Protocol):
    """Where an extracted member's bytes go, chunk by chunk."""

    def write(self, data: bytes | memoryview, /) -> object: ...


# A writer of the caller's for one member: given the path the member would be extracted to.
MemberSink = Callable[[Path], AbstractContextManager[MemberWriter]]


@dataclass(frozen=True, slots=True)
class BundleHead:
    """The header region of a bundle: the exact manifest bytes, parsed, and the signature."""

    manifest_bytes: bytes
    manifest: Manifest
    signature: bytes | None

    @property
    def digest(self) -> str:
        """The bundle's identity, ``sha256:`` of the manifest bytes."""
        return bundle_digest(self.manifest_bytes)

    def to_dict(self) -> dict[str, Any]:
        """The ``kbundle inspect --json`` shape. ``signers`` are the key ids the signature
        member names (``None`` when it cannot be read); nothing here is verified."""
        signers = signer_ids(self.signature)
        return {
            "ok": True,
            "digest": self.digest,
            "signed": self.signature is not None,
            "signers": list(signers) if isinstance(signers, tuple) else None,
            "manifest": self.manifest.to_dict(),
        }


@dataclass(slots=True)
class ScanReport:
    """The outcome of reading a whole bundle: every finding, and how much was checked."""

    head: BundleHead
    findings: list[Finding] = field(default_factory=list)
    files_checked: int = 0
    bytes_checked: int = 0


class Truncated(Exception):
    """The decompressed stream ended early (rewrite.py reports it its own way)."""


class _BoundedStream:
    """Exact reads from the decompressed stream, never more in total than ``limit``."""

    def __init__(self, reader: BinaryIO, limit: int) -> None:
        self._reader = reader
        self.limit = limit
        self.total = 0

    def read_exact(self, size: int) -> bytes:
        if self.total + size > self.limit:
            raise LimitExceededError(
                f"the archive holds more data than its manifest declares (over {self.limit} bytes)",
                hint="the bundle is damaged or hostile; refuse it",
            )
        data = self._read(size)
        if len(data) < size:
            parts = [data]
            have = len(data)
            while have < size:
                more = self._read(size - have)
                if not more:
                    self.total += have
                    raise Truncated()
                parts.append(more)
                have += len(more)
            data = b"".join(parts)
        self.total += size
        return data

    def _read(self, size: int) -> bytes:
        try:
            return self._reader.read(size)
        except zstandard.ZstdError as exc:
            raise IntegrityError(
                f"compressed stream is corrupt: {exc}",
                hint="the bundle is damaged; fetch an intact copy",
            ) from None

    def chunks(self) -> Iterator[bytes]:
        """The rest of the stream in chunks, refusing to go past ``limit``."""
        while data := self._read(CHUNK_SIZE):
            self.total += len(data)
            if self.total > self.limit:
                raise LimitExceededError(
                    "the archive holds more data than its manifest declares "
                    f"(over {self.limit} bytes)",
                    hint="the bundle is damaged or hostile; refuse it",
                )
            yield data

    def drain(self) -> int:
        """Read to the end; return how many non-zero bytes were found (trailing garbage)."""
        nonzero = 0
        while data := self._read(CHUNK_SIZE):
            self.total += len(data)
            if self.total > self.limit:
                return max(nonzero, 1)
            nonzero += len(data) - data.count(0)
        return nonzero


def read_exactly(source: ByteSource, size: int) -> bytes:
    """``size`` bytes of ``source`` (fewer only at its end): a source may return short reads."""
    parts: list[bytes] = []
    have = 0
    while have < size:
        data = source.read(size - have)
        if not data:
            break
        parts.append(data)
        have += len(data)
    return b"".join(parts)


class _Prefixed:
    """``source`` with ``prefix`` (bytes already read from it) in front again: a stream that
    cannot seek back (a pipe, a download) still reaches the decompressor whole."""

    def __init__(self, prefix: bytes, source: ByteSource) -> None:
        self._prefix = prefix
        self._source = source

    def read(self, size: int = -1) -> bytes:
        if self._prefix:
            data, self._prefix = self._prefix, b""
            return data
        return self._source.read(size)


class BundleReader:
    """One pass over a bundle read from ``source`` (any object with ``read``; never seeked):
    first the header region (:meth:`head`), then, unless ``head_only``, every payload
    member (:meth:`scan`). ``name`` says what the bundle is in messages. Use as a context
    manager; nothing of ``source`` is read before :meth:`head`.

    Reading the head first lets a caller decide from the manifest what to do with the payload
    (where to extract it, which members to route to its own writers) before a byte of the
    payload is read, without reading the bundle twice (a pipe or a download cannot be).
    """

    def __init__(self, source: ByteSource, name: str, *, head_only: bool = False) -> None:
        self._source = source
        self.name = name
        self._head_only = head_only
        self._stack = ExitStack()
        self._head: BundleHead | None = None
        self._pending: TarEntry | None = None  # the entry read after the manifest, not the sig
        self._peeked = False  # whether _pending holds what followed (False after a signature)
        self._deferred: IntegrityError | Truncated | None = None  # met while looking for it
        self._deferred_at = MANIFEST_NAME
        self._frame_hasher: PipelinedHasher | None = None

    def __enter__(self) -> BundleReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _open(self) -> None:
        magic = read_exactly(self._source, len(ZSTD_MAGIC))
        if magic != ZSTD_MAGIC:
            raise NotABundleError(
                f"{self.name} is not a kbundle bundle: {_describe_kind(magic)}",
                hint=_kind_hint(magic),
            )
        on_payload = None
        if not self._head_only:
            self._frame_hasher = self._stack.enter_context(PipelinedHasher())
            on_payload = self._frame_hasher.update
        self.tracker = FrameTracker(on_payload)
        decompressor = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW_SIZE)
        reader = decompressor.stream_reader(
            cast(BinaryIO, TrackedReader(_Prefixed(magic, self._source), self.tracker)),
            read_size=CHUNK_SIZE,
            read_across_frames=True,
            closefd=False,
        )
        self._stack.callback(reader.close)
        self.bounded = _BoundedStream(reader, MAX_MANIFEST_BYTES + MAX_ARCHIVE_OVERHEAD_PER_MEMBER)
        self.tar = TarReader(self.bounded.read_exact)

    def head(self) -> BundleHead:
        """The header region: the manifest, parsed, and the signature member when there is
        one. Reads no payload data (the decompressor reads ahead at most one chunk)."""
        if self._head is not None:
            return self._head
        self._open()
        head = read_manifest_member(self.tar, self.name)
        self.bounded.limit = stream_limit(self.bounded.total, head.manifest)
        try:
            entry = self.tar.next_entry()
            if entry is not None and is_signature(entry):
                self._deferred_at = entry.name
                head = _with_signature(head, self.tar, entry.size)
            else:
                self._pending, self._peeked = entry, True
        except (Truncated, IntegrityError) as exc:
            # The head is complete; what broke after it is the payload's problem, reported
            # by scan() (and by raise_deferred() to a reader of the head alone).
            self._deferred = exc
        self._head = head
        return head

    def payload_offset(self) -> int:
        """Where the first payload entry (or the end-of-archive marker) starts in the
        decompressed tar stream."""
        self.head()
        if self._deferred is not None:
            raise self._deferred
        entry = self._pending if self._peeked else self.tar.next_entry()
        return entry.offset if entry is not None else self.tar.offset - len(END_OF_ARCHIVE)

    def decompressed(self) -> _BoundedStream:
        """The decompressed tar stream from its start, for a caller that copies it (the
        header is not read): bounded only by the most a bundle may hold."""
        self._open()
        return self.bounded

    def raise_deferred(self) -> None:
        """Raise an integrity problem met just after the manifest (a truncation there is not
        one for a reader of the head alone: the head is complete)."""
        if isinstance(self._deferred, IntegrityError):
            raise self._deferred

    def scan(
        self,
        *,
        extract_to: Path | None = None,
        progress: ProgressCallback | None = None,
        sinks: Mapping[str, MemberSink] | None = None,
    ) -> ScanReport:
        """Read the rest of the bundle, hashing every member (and writing it under
        ``extract_to``; a member named in ``sinks`` is written through the caller's writer
        instead of a file).

        Structural problems that make further reading impossible (corrupt compression,
        truncation) end the scan with one finding; everything else is collected. The caller
        decides what the findings mean; files under ``extract_to`` are only trustworthy when
        there are none.
        """
        head = self.head()
        assert self._frame_hasher is not None, "a head_only reader cannot scan"
        report = ScanReport(head=head)
        scanner = _MemberScanner(head.manifest, report, extract_to, progress, sinks or {})
        tar, tracker = self.tar, self.tracker
        current = self._deferred_at
        try:
            if self._deferred is not None:
                raise self._deferred
            with PipelinedHasher() as hasher:
                entry = self._pending if self._peeked else tar.next_entry()
                while entry is not None:
                    current = entry.name
                    scanner.member(tar, entry, hasher)
                    entry = tar.next_entry()
            current = "(end of archive)"
            if self.bounded.drain():
                report.findings.append(
                    Finding(
                        location=current,
                        problem="data after the end-of-archive marker",
                        fix=ALTERED_FIX,
                    )
                )
            if not tracker.at_end:
                raise Truncated()
            scanner.finish()
            _check_trailer(tracker, self._frame_hasher.digest(), report)
        except Truncated:
            report.findings.append(
                # Not blamed on ``current``: a compressed block breaks where the file ends,
                # which may be several members past the last one read whole.
                Finding(
                    location="(bundle file)",
                    problem="truncated: the stream ends before its trailer",
                    actual=f"{tracker.consumed} bytes read",
                    fix="the file was cut short; fetch an intact copy",
                )
            )
            scanner.report_unreached()
        except IntegrityError as exc:
            report.findings.append(Finding(location=current, problem=exc.message, fix=exc.hint))
            scanner.report_unreached()
        return report


def _describe_kind(magic: bytes) -> str:
    if magic.startswith(b"PK"):
        return "it is a zip file (a .keras model?)"
    if magic.startswith(b"\x89HDF"):
        return "it is an HDF5 file (an .h5 model?)"
    if not magic:
        return "it is empty"
    return f"it starts with bytes {magic.hex()}, not a zstd frame"


def _kind_hint(magic: bytes) -> str:
    if magic.startswith((b"PK", b"\x89HDF")):
        return "make a bundle with 'kbundle pack', or diagnose the model with 'kbundle doctor'"
    return "pass a file written by 'kbundle pack'"


def read_manifest_member(tar: TarReader, name: str) -> BundleHead:
    """Read and parse the first member, which must be the manifest."""
    try:
        entry = tar.next_entry()
        if entry is None or entry.name != MANIFEST_NAME or entry.kind != "file":
            found = "an empty archive" if entry is None else repr(entry.name)
            raise NotABundleError(
                f"{name} is not a kbundle bundle: its first member is {found}, "
                f"not {MANIFEST_NAME!r}",
                hint="pass a file written by 'kbundle pack'",
            )
        if entry.size > MAX_MANIFEST_BYTES:
            raise LimitExceededError(
                f"manifest is {entry.size} bytes, more than the limit of {MAX_MANIFEST_BYTES}",
                hint="this is not a bundle kbundle wrote; refuse it",
            )
        manifest_bytes = b"".join(tar.read_data(CHUNK_SIZE))
    except Truncated:
        raise IntegrityError(
            f"{name} is truncated: it ends inside the manifest, its first member",
            hint="the file was cut short; fetch an intact copy",
        ) from None
    return BundleHead(manifest_bytes, parse_manifest(manifest_bytes), None)


def read_head(source: ByteSource, name: str) -> BundleHead:
    """Read only the header region of the bundle ``source``: the manifest and signature
    (what ``inspect`` needs); nothing after the first frame is needed."""
    with BundleReader(source, name, head_only=True) as reader:
        head = reader.head()
        reader.raise_deferred()
        return head


def is_signature(entry: TarEntry) -> bool:
    return entry.name == SIGNATURE_NAME and entry.kind == "file"


def scan_bundle(
    source: ByteSource,
    name: str,
    *,
    extract_to: Path | None = None,
    progress: ProgressCallback | None = None,
    sinks: Mapping[str, MemberSink] | None = None,
) -> ScanReport:
    """Read the whole bundle ``source`` in one pass (:meth:`BundleReader.scan`)."""
    with BundleReader(source, name) as reader:
        return reader.scan(extract_to=extract_to, progress=progress, sinks=sinks)


def _check_trailer(tracker: FrameTracker, digest: str, report: ScanReport) -> None:
    """The catch-all for bytes no member digest covers (frame and tar framing): reported only
    when nothing else already explains the damage."""
    if report.findings:
        return
    trailer = tracker.trailer or b""
    if trailer[: len(TRAILER_TAG)] != TRAILER_TAG:
        report.findings.append(
            Finding(
                location="(trailer)", problem="the trailer frame is not kbundle's", fix=ALTERED_FIX
            )
        )
    elif trailer[len(TRAILER_TAG) :] != digest_bytes(digest):
        report.findings.append(
            Finding(
                location="(payload frames)",
                problem="compressed bytes differ from the trailer's SHA-256 (damaged framing)",
                expected="sha256:" + trailer[len(TRAILER_TAG) :].hex(),
                actual=digest,
                fix="the bundle is damaged; fetch an intact copy",
            )
        )


def stream_limit(consumed: int, manifest: Manifest) -> int:
    """The most decompressed bytes a bundle with ``manifest`` may hold after ``consumed``."""
    return (
        consumed
        + MAX_SIGNATURE_BYTES
        + manifest.payload_size
        + (len(manifest.members) + 2) * MAX_ARCHIVE_OVERHEAD_PER_MEMBER
        + _MAX_TRAILER
    )


def _with_signature(head: BundleHead, tar: TarReader, size: int) -> BundleHead:
    if size > MAX_SIGNATURE_BYTES:
        raise LimitExceededError(
            f"{SIGNATURE_NAME} is {size} bytes, more than the limit of {MAX_SIGNATURE_BYTES}",
            hint="this is not a bundle kbundle wrote; refuse it",
        )
    return BundleHead(head.manifest_bytes, head.manifest, b"".join(tar.read_data(CHUNK_SIZE)))


class _MemberScanner:
    """Checks each payload entry against the manifest; hashes and optionally extracts it."""

    def __init__(
        self,
        manifest: Manifest,
        report: ScanReport,
        extract_to: Path | None,
        progress: ProgressCallback | None,
        sinks: Mapping[str, MemberSink],
    ) -> None:
        self._expected = {collision_key(m.path): m for m in manifest.members}
        self._sinks = sinks
        self._seen: dict[str, str] = {}
        self._report = report
        self._extract_to = extract_to
        self._progress = progress

    def _find(
        self, location: str, problem: str, *, expected: str | None = None, actual: str | None = None
    ) -> None:
        self._report.findings.append(
            Finding(
                location=location,
                problem=problem,
                expected=expected,
                actual=actual,
                fix=ALTERED_FIX,
            )
        )

    def member(self, tar: TarReader, entry: TarEntry, hasher: PipelinedHasher) -> None:
        name = entry.name
        problem = name_problem(name)
        if problem:
            self._find(name or "(empty name)", f"unsafe member name refused: {problem}")
            return
        if entry.kind not in ("file", "dir"):
            self._find(
                name, f"{entry.kind} members are not allowed; only regular files and directories"
            )
            return
        key = collision_key(name)
        if key in self._seen:
            self._find(
                name, f"duplicate member (same name as {self._seen[key]!r} after case folding)"
            )
            return
        self._seen[key] = name
        expected = self._expected.get(key)
        if expected is None:
            self._find(
                name, "member is not listed in the manifest", expected="absent", actual=entry.kind
            )
            return
        if expected.path != name or expected.type != entry.kind:
            self._find(
                name,
                "member does not match the manifest",
                expected=f"{expected.type} {expected.path!r}",
                actual=f"{entry.kind} {name!r}",
            )
            return
        if entry.kind == "dir":
            if entry.size:  # data no digest covers; tar tools would skip or misread it
                self._find(
                    name,
                    "a directory member carries data",
                    expected="0 bytes",
                    actual=f"{entry.size} bytes",
                )
                return
            if self._extract_to is not None:
                (self._extract_to / name).mkdir(mode=0o755, parents=True, exist_ok=True)
            return
        if entry.size != expected.size:
            self._find(
                name,
                "size differs from the manifest",
                expected=f"{expected.size} bytes",
                actual=f"{entry.size} bytes",
            )
            return
        digest = self._hash_member(tar, name, hasher)
        self._report.files_checked += 1
        if digest != expected.digest:
            self._find(
                name,
                "digest mismatch (content corrupted or altered)",
                expected=expected.digest,
                actual=digest,
            )

    def _hash_member(self, tar: TarReader, name: str, hasher: PipelinedHasher) -> str:
        with self._sink(name) as sink:
            for chunk in tar.read_data(CHUNK_SIZE):
                hasher.update(chunk)
                if sink is not None:
                    sink.write(chunk)
                self._report.bytes_checked += len(chunk)
                if self._progress:
                    self._progress(len(chunk))
        return hasher.digest()

    def _sink(self, name: str) -> AbstractContextManager[MemberWriter | None]:
        """Where an extracted member's bytes go: a new file written on its own thread (the
        next chunk is decompressed meanwhile), the caller's writer for this member, or nowhere
        when only verifying."""
        if self._extract_to is None:
            return nullcontext()
        target = self._extract_to / name
        target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        sink = self._sinks.get(name)
        if sink is not None:
            return sink(target)
        return QueuedWriter.create(target)

    def finish(self) -> None:
        for key, member in sorted(self._expected.items()):
            if key not in self._seen:
                self._find(
                    member.path,
                    "member listed in the manifest is missing",
                    expected=member.type,
                    actual="absent",
                )

    def report_unreached(self) -> None:
        unreached = [m.path for key, m in self._expected.items() if key not in self._seen]
        if unreached:
            self._find(
                unreached[0] if len(unreached) == 1 else f"{len(unreached)} members",
                "not checked: the stream broke before reaching them",
            )
