"""Named limits that bound what a reader will accept, each with the reason for its value.

Readers enforce these before trusting anything a bundle claims; tests patch them small to
build bombs cheaply. Writers never come near them for honest models. Stable: the values may
grow in a minor release, never shrink.
"""

from __future__ import annotations

__all__ = [
    "CHUNK_SIZE",
    "MAX_ARCHIVE_OVERHEAD_PER_MEMBER",
    "MAX_JSON_DEPTH",
    "MAX_MANIFEST_BYTES",
    "MAX_MEMBERS",
    "MAX_MEMBER_NAME_BYTES",
    "MAX_NAME_COMPONENT_BYTES",
    "MAX_SIGNATURE_BYTES",
    "MAX_WINDOW_SIZE",
]

# A manifest lists members and the environment (a few hundred installed distributions make
# ~50 KiB). 16 MiB leaves two orders of magnitude of headroom yet stops a 100 MB manifest
# from being read into memory before anything else is checked.
MAX_MANIFEST_BYTES = 16 * 1024 * 1024

# The signature member holds a few signatures over the manifest; a megabyte is generous.
MAX_SIGNATURE_BYTES = 1024 * 1024

# JSON nested deeper than this is hostile (the manifest's own nesting is below 10). Checked
# before json.loads so CPython's recursion limit is never the guard.
MAX_JSON_DEPTH = 64

# A SavedModel with many variable shards plus bundled code stays in the thousands; 100,000
# bounds the per-member bookkeeping a hostile manifest can demand.
MAX_MEMBERS = 100_000

# Longer names are not needed by any model layout and are where tar implementations differ.
MAX_MEMBER_NAME_BYTES = 1024
# The usual file-system limit for one path component (ext4, APFS, NTFS all use 255).
MAX_NAME_COMPONENT_BYTES = 255

# zstd's own default limit for decompression (`zstd --memory=128MB`). A frame asking for a
# larger window is refused instead of allocating whatever its header claims.
MAX_WINDOW_SIZE = 1 << 27

# Besides member data, a tar stream holds a 512-byte header per member, an optional pax
# header (512 + up to 1024 bytes of records for our name limit), and padding to 512. The
# total decompressed size a reader accepts is the manifest's sizes plus this per member.
MAX_ARCHIVE_OVERHEAD_PER_MEMBER = 4096

# Streaming granularity: large enough that per-chunk Python overhead is negligible next to
# hashing and compression, small enough that memory stays bounded.
CHUNK_SIZE = 1024 * 1024
