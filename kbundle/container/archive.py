"""The bundle container: writing a bundle in one streaming pass, and reading it back verified.

Layout (normative text in spec/bundle-format.md): a pax tar stream split over zstd frames.
The first frame is a raw (stored, checksummed) frame holding the ``kbundle.json`` member and,
when signed, the ``kbundle.sig`` member: the *header region*. The payload members follow in
compressed frames (or raw frames when compression is off), then the end-of-archive marker;
a skippable *trailer* frame ends the file with the SHA-256 of every payload-frame byte, so
no byte of a bundle escapes a checksum.

Writing reserves the header region (its size depends only on the manifest's length, which is
known before hashing because digests have a fixed length), streams every payload file once
through SHA-256 (own thread) and zstd (own threads), then rewrites the header region in place.

Reading runs the same pass in reverse: frame structure is tracked, decompression is bounded by
a window limit and by the total the manifest declares, every tar header is checked, every
member is hashed while (optionally) being written into a fresh private directory, and every
problem is collected as a finding. Stable: internal; the layout is format 1.0.
"""

from __future__ import annotations

import shutil
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

import zstandard

from kbundle._io.writers import DirectWriter, QueuedWriter, direct_writes
from kbundle.container.hashing import PipelinedHasher
from kbundle.container.limits import (
    CHUNK_SIZE,
    MAX_ARCHIVE_OVERHEAD_PER_MEMBER,
    MAX_MANIFEST_BYTES,
    MAX_SIGNATURE_BYTES,
    MAX_WINDOW_SIZE,
)
from kbundle.container.manifest import Manifest, bundle_digest, parse_manifest
from kbundle.container.names import MANIFEST_NAME, SIGNATURE_NAME, collision_key, name_problem
from kbundle.container.tarstream import (
    BLOCK,
    END_OF_ARCHIVE,
    TarEntry,
    TarReader,
    member_header,
    padding,
)
from kbundle.container.zstdframes import (
    TRAILER_TAG,
    ZSTD_MAGIC,
    FrameTracker,
    RawFrameWriter,
    TrackedReader,
    raw_frame,
    raw_frame_size,
    trailer_frame,
)
from kbundle.errors import (
    IntegrityError,
    LimitExceededError,
    NotABundleError,
    PackError,
    UsageError,
)
from kbundle.findings import Finding
from kbundle.models.zipsplit import ZipSplit, ZipSplitter

if TYPE_CHECKING:
    from kbundle.signing.signatures import SignatureStatus

__all__ = [
    "DEFAULT_LEVEL",
    "BundleHead",
    "PayloadFile",
    "ProgressCallback",
    "VerifyReport",
    "header_region",
    "header_region_size",
    "read_head",
    "rewrite_header",
    "scan_bundle",
    "write_bundle",
]

# Float32 weights compress ~1.1x at any level, so a higher level costs time for nothing. Packing a
# 1 GiB .keras here took 2.5 s at level 1 against 5.6 s at level 3 (zstd's own default), most of
# the difference system time in the multi-threaded compressor (benchmarks/).
DEFAULT_LEVEL = 1

ProgressCallback = Callable[[int], None]
"""Called with the number of payload bytes just processed."""

# Zero blocks a reader tolerates after the end-of-archive marker: tar tools pad the archive to
# a 10 KiB record (20 blocks); anything beyond that, or non-zero, is trailing garbage.
_MAX_TRAILER = 20 * BLOCK


# --------------------------------------------------------------------------------------------
# Writing


@dataclass(frozen=True, slots=True)
class PayloadFile:
    """One payload member to write: a file (``source`` set) or a directory (``source`` None).

    ``watch``, when set, is given the file's bytes in order as they are packed (one read
    serves the digest, the compressor and, say, a CRC check of a zip's members)."""

    path: str
    source: Path | None
    size: int = 0
    watch: Callable[[bytes], object] | None = None


def header_region(manifest_bytes: bytes, signature_bytes: bytes | None = None) -> bytes:
    """The stored frame holding the manifest member (and the signature member when given)."""
    content = member_header(MANIFEST_NAME, len(manifest_bytes), is_dir=False, mtime=0)
    content += manifest_bytes + padding(len(manifest_bytes))
    if signature_bytes is not None:
        content += member_header(SIGNATURE_NAME, len(signature_bytes), is_dir=False, mtime=0)
        content += signature_bytes + padding(len(signature_bytes))
    return raw_frame(content)


def header_region_size(source: BinaryIO) -> int | None:
    """The size of a bundle's header region when its first frame is a stored frame with a
    declared size (as kbundle writes it), else ``None``. Used to splice a new header region
    in front of an existing payload without recompressing it."""
    head = source.read(13)
    if len(head) < 13 or head[:4] != ZSTD_MAGIC or head[4] & 0b1110_0000 != 0b1110_0000:
        return None
    (content_size,) = struct.unpack("<Q", head[5:13])
    if content_size > MAX_MANIFEST_BYTES + MAX_SIGNATURE_BYTES + 8 * BLOCK:
        return None
    return raw_frame_size(content_size)


def write_bundle(
    out: BinaryIO,
    payload: Sequence[PayloadFile],
    make_manifest: Callable[[Mapping[str, str]], bytes],
    *,
    level: int | None,
    threads: int,
    mtime: int,
    sign: Callable[[bytes], bytes] | None = None,
    signature_size: int = 0,
    progress: ProgressCallback | None = None,
) -> bytes:
    """Write a bundle to the seekable ``out`` and return the manifest bytes written.

    ``make_manifest(digests)`` builds the manifest bytes from a member-path -> digest map; it is
    called once with placeholder digests (to size the header region) and once with the real
    ones, and both results must have the same length. ``level`` None stores the payload.
    """
    placeholder = {p.path: "sha256:" + "0" * 64 for p in payload if p.source is not None}
    draft = make_manifest(placeholder)
    reserved = len(header_region(draft, b"\0" * signature_size if sign else None))
    digests: dict[str, str] = {}
    with (
        direct_writes(out) as sink,
        PipelinedHasher() as hasher,
        PipelinedHasher() as frame_hasher,
    ):
        sink.write(b"\0" * reserved)
        stream = _payload_stream(_TeeSink(sink, frame_hasher), level, threads)
        for item in payload:
            is_dir = item.source is None
            stream.write(member_header(item.path, item.size, is_dir=is_dir, mtime=mtime))
            if item.source is not None:
                _copy_member(item, stream, hasher, progress)
                digests[item.path] = hasher.digest()
                stream.write(padding(item.size))
        stream.write(END_OF_ARCHIVE)
        stream.close()
        sink.write(trailer_frame(_raw_digest(frame_hasher.digest())))
    manifest_bytes = make_manifest(digests)
    signature = sign(manifest_bytes) if sign else None
    region = header_region(manifest_bytes, signature)
    if len(region) != reserved:
        raise PackError(  # a kbundle bug, never the user's input
            f"internal error: header region is {len(region)} bytes, {reserved} were reserved",
            hint="please report this with the model that triggered it",
        )
    out.seek(0)
    out.write(region)
    return manifest_bytes


def _raw_digest(digest: str) -> bytes:
    return bytes.fromhex(digest.partition(":")[2])


class _TeeSink:
    """A write-only stream that hashes (on the hasher's thread) what it passes on."""

    def __init__(self, out: BinaryIO | DirectWriter, hasher: PipelinedHasher) -> None:
        self._out = out
        self._hasher = hasher

    def write(self, data: bytes) -> int:
        self._hasher.update(bytes(data))
        return self._out.write(data)

    def flush(self) -> None:
        self._out.flush()


class _ZstdPayloadStream:
    def __init__(self, out: Any, level: int, threads: int) -> None:
        compressor = zstandard.ZstdCompressor(
            level=level, threads=threads, write_checksum=True, write_content_size=False
        )
        # The bindings' stubs type neither our sink nor close(); the writer is used as Any.
        self._writer: Any = compressor.stream_writer(out, closefd=False, write_size=CHUNK_SIZE)

    def write(self, data: bytes) -> None:
        self._writer.write(data)

    def close(self) -> None:
        self._writer.close()  # ends the frame; an explicit FLUSH_FRAME first added an empty one


def _payload_stream(
    out: Any, level: int | None, threads: int
) -> _ZstdPayloadStream | RawFrameWriter:
    if level is None:
        return RawFrameWriter(out)
    return _ZstdPayloadStream(out, level, threads)


def _copy_member(
    item: PayloadFile,
    stream: _ZstdPayloadStream | RawFrameWriter,
    hasher: PipelinedHasher,
    progress: ProgressCallback | None,
) -> None:
    assert item.source is not None
    remaining = item.size
    with item.source.open("rb") as handle:
        while chunk := handle.read(min(CHUNK_SIZE, remaining + 1)):
            remaining -= len(chunk)
            if remaining < 0:
                break
            hasher.update(chunk)
            stream.write(chunk)
            if item.watch:
                item.watch(chunk)
            if progress:
                progress(len(chunk))
    if remaining != 0:
        raise PackError(
            f"{item.source} changed size while it was being packed (expected {item.size} bytes)",
            hint="do not write to the model while packing it; run pack again",
        )


# --------------------------------------------------------------------------------------------
# Reading


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


@dataclass(slots=True)
class VerifyReport:
    """The outcome of reading a whole bundle."""

    head: BundleHead
    findings: list[Finding] = field(default_factory=list)
    files_checked: int = 0
    bytes_checked: int = 0
    # What the signatures say, once kbundle.signing.signatures.check_signatures has looked at them.
    signature: SignatureStatus | None = None


class _Truncated(Exception):
    pass


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
                    raise _Truncated()
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


@contextmanager
def _open_stream(
    path: Path, on_payload: Callable[[bytes], None] | None = None
) -> Iterator[tuple[TarReader, _BoundedStream, FrameTracker, BinaryIO]]:
    try:
        handle = path.open("rb")
    except IsADirectoryError:
        raise UsageError(
            f"{path} is a directory, not a bundle", hint="pass a .kbundle file"
        ) from None
    except FileNotFoundError:
        raise UsageError(f"{path} does not exist", hint="check the path") from None
    except OSError as exc:
        raise UsageError(f"cannot open {path}: {exc.strerror}", hint="check the path") from None
    with handle:
        magic = handle.read(4)
        if magic != ZSTD_MAGIC:
            raise NotABundleError(
                f"{path} is not a kbundle bundle: {_describe_kind(magic)}", hint=_kind_hint(magic)
            )
        handle.seek(0)
        tracker = FrameTracker(on_payload)
        decompressor = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW_SIZE)
        reader = decompressor.stream_reader(
            cast(BinaryIO, TrackedReader(handle, tracker)),
            read_size=CHUNK_SIZE,
            read_across_frames=True,
            closefd=False,
        )
        bounded = _BoundedStream(reader, MAX_MANIFEST_BYTES + MAX_ARCHIVE_OVERHEAD_PER_MEMBER)
        yield TarReader(bounded.read_exact), bounded, tracker, handle


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


def _read_manifest_member(tar: TarReader, path: Path) -> BundleHead:
    """Read and parse the first member, which must be the manifest."""
    try:
        entry = tar.next_entry()
        if entry is None or entry.name != MANIFEST_NAME or entry.kind != "file":
            found = "an empty archive" if entry is None else repr(entry.name)
            raise NotABundleError(
                f"{path} is not a kbundle bundle: its first member is {found}, "
                f"not {MANIFEST_NAME!r}",
                hint="pass a file written by 'kbundle pack'",
            )
        if entry.size > MAX_MANIFEST_BYTES:
            raise LimitExceededError(
                f"manifest is {entry.size} bytes, more than the limit of {MAX_MANIFEST_BYTES}",
                hint="this is not a bundle kbundle wrote; refuse it",
            )
        manifest_bytes = b"".join(tar.read_data(CHUNK_SIZE))
    except _Truncated:
        raise IntegrityError(
            f"{MANIFEST_NAME}: bundle is truncated inside the manifest",
            hint="the file was cut short; fetch an intact copy",
        ) from None
    return BundleHead(manifest_bytes, parse_manifest(manifest_bytes), None)


def read_head(path: Path) -> BundleHead:
    """Read only the header region: the manifest and signature (what ``inspect`` needs)."""
    with _open_stream(path) as (tar, bounded, _tracker, _handle):
        head = _read_manifest_member(tar, path)
        bounded.limit += MAX_SIGNATURE_BYTES + MAX_ARCHIVE_OVERHEAD_PER_MEMBER
        try:
            entry = tar.next_entry()
            if entry is not None and _is_signature(entry):
                return _with_signature(head, tar, entry.size)
        except _Truncated:
            pass  # the head is complete; a full verify reports the truncation
        return head


def _is_signature(entry: TarEntry) -> bool:
    return entry.name == SIGNATURE_NAME and entry.kind == "file"


def scan_bundle(
    path: Path,
    *,
    extract_to: Path | None = None,
    progress: ProgressCallback | None = None,
    split: ZipSplit | None = None,
) -> VerifyReport:
    """Read the whole bundle, hashing every member (and writing it under ``extract_to``; the
    member ``split`` names is written through its splitter, see :mod:`kbundle.models.zipsplit`).

    Structural problems that make further reading impossible (corrupt compression, truncation)
    end the scan with one finding; everything else is collected. The caller decides what the
    findings mean; files under ``extract_to`` are only trustworthy when there are none.
    """
    with (
        PipelinedHasher() as frame_hasher,
        _open_stream(path, frame_hasher.update) as (
            tar,
            bounded,
            tracker,
            handle,
        ),
    ):
        head = _read_manifest_member(tar, path)
        manifest = head.manifest
        bounded.limit = _stream_limit(bounded.total, manifest)
        report = VerifyReport(head=head)
        scanner = _MemberScanner(manifest, report, extract_to, progress, split)
        current = MANIFEST_NAME
        try:
            with PipelinedHasher() as hasher:
                first = True
                while (entry := tar.next_entry()) is not None:
                    current = entry.name
                    if first and _is_signature(entry):
                        report.head = _with_signature(head, tar, entry.size)
                    else:
                        scanner.member(tar, entry, hasher)
                    first = False
            current = "(end of archive)"
            if bounded.drain():
                report.findings.append(
                    Finding(location=current, problem="data after the end-of-archive marker")
                )
            if not tracker.at_end:
                raise _Truncated()
            scanner.finish()
            _check_trailer(tracker, frame_hasher.digest(), report)
        except _Truncated:
            report.findings.append(
                Finding(
                    location=current,
                    problem="bundle is truncated: the stream ends before its trailer",
                    actual=f"{handle.tell()} bytes on disk",
                    fix="the file was cut short; fetch an intact copy",
                )
            )
            scanner.report_unreached()
        except IntegrityError as exc:
            report.findings.append(Finding(location=current, problem=exc.message, fix=exc.hint))
            scanner.report_unreached()
        return report


def _check_trailer(tracker: FrameTracker, digest: str, report: VerifyReport) -> None:
    """The catch-all for bytes no member digest covers (frame and tar framing): reported only
    when nothing else already explains the damage."""
    if report.findings:
        return
    trailer = tracker.trailer or b""
    if trailer[: len(TRAILER_TAG)] != TRAILER_TAG:
        report.findings.append(
            Finding(location="(trailer)", problem="the trailer frame is not kbundle's")
        )
    elif trailer[len(TRAILER_TAG) :] != _raw_digest(digest):
        report.findings.append(
            Finding(
                location="(payload frames)",
                problem="compressed bytes differ from the trailer's SHA-256 (damaged framing)",
                expected="sha256:" + trailer[len(TRAILER_TAG) :].hex(),
                actual=digest,
                fix="the bundle is damaged; fetch an intact copy",
            )
        )


def _stream_limit(consumed: int, manifest: Manifest) -> int:
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
        report: VerifyReport,
        extract_to: Path | None,
        progress: ProgressCallback | None,
        split: ZipSplit | None = None,
    ) -> None:
        self._expected = {collision_key(m.path): m for m in manifest.members}
        self._split = split
        self._seen: dict[str, str] = {}
        self._report = report
        self._extract_to = extract_to
        self._progress = progress

    def _find(
        self, location: str, problem: str, *, expected: str | None = None, actual: str | None = None
    ) -> None:
        self._report.findings.append(
            Finding(location=location, problem=problem, expected=expected, actual=actual)
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

    def _sink(self, name: str) -> AbstractContextManager[QueuedWriter | ZipSplitter | None]:
        """Where an extracted member's bytes go: a new file written on its own thread (the
        next chunk is decompressed meanwhile), through the zip splitter for the member it is
        for, or nowhere when only verifying."""
        if self._extract_to is None:
            return nullcontext()
        target = self._extract_to / name
        target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        if self._split is not None and name == self._split.member:
            return self._split.writer(target)
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


# --------------------------------------------------------------------------------------------
# Replacing the header region (adding a signature to an existing bundle)


def rewrite_header(
    source: Path,
    out: BinaryIO,
    head: BundleHead,
    signature_bytes: bytes | None,
    *,
    level: int,
    threads: int = 0,
) -> bool:
    """Write the bundle ``source`` to ``out`` with a new header region: ``head``'s manifest
    bytes (unchanged, so the digest is too) and ``signature_bytes``.

    Returns True when the payload frames were copied byte for byte, which they are whenever
    ``source`` is in kbundle's layout (its first frame is exactly the header region for
    ``head``). A bundle re-compressed by another tool has its payload's tar stream
    decompressed and compressed again at zstd ``level`` instead. ``source`` must have been
    verified first: this copies structure, it does not check digests.
    """
    out.write(header_region(head.manifest_bytes, signature_bytes))
    with source.open("rb") as handle:
        size = header_region_size(handle)
        handle.seek(0)
        if size is not None and handle.read(size) == header_region(
            head.manifest_bytes, head.signature
        ):
            shutil.copyfileobj(handle, out, CHUNK_SIZE)
            return True
    # The re-compressed payload is framed exactly as write_bundle frames it, trailer included.
    try:
        start = _payload_offset(source, head)
        with (
            _open_stream(source) as (_tar, bounded, _tracker, _handle),
            PipelinedHasher() as frame_hasher,
        ):
            bounded.limit = _stream_limit(0, head.manifest)
            bounded.read_exact(start)
            stream = _payload_stream(_TeeSink(out, frame_hasher), level, threads)
            for chunk in bounded.chunks():
                stream.write(chunk)
            stream.close()
            out.write(trailer_frame(_raw_digest(frame_hasher.digest())))
    except _Truncated:
        raise IntegrityError(
            f"{source}: bundle is truncated", hint="the file was cut short; fetch an intact copy"
        ) from None
    return False


def _payload_offset(source: Path, head: BundleHead) -> int:
    """Where the first payload entry (or the end-of-archive marker) starts in the tar stream."""
    with _open_stream(source) as (tar, bounded, _tracker, _handle):
        _read_manifest_member(tar, source)
        bounded.limit = _stream_limit(bounded.total, head.manifest)
        entry = tar.next_entry()
        if entry is not None and _is_signature(entry):
            tar.skip()
            entry = tar.next_entry()
        return entry.offset if entry is not None else tar.offset - len(END_OF_ARCHIVE)
