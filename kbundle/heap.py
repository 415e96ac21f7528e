"""Keeping freed chunk memory in the process instead of handing it back to the kernel.

The pipelines pass megabyte-sized chunks between threads: each read, each compressed block
and each decompressed piece is a fresh buffer that lives for a moment. glibc serves such
blocks from the heap but returns the heap's top to the kernel as soon as more than twice the
last block size is free there, so the next chunks fault in new, zeroed pages again. On the
2-CPU VM kbundle is developed on, fresh pages cost far more than the copies themselves: a
1 GiB pack spent 9% of its CPU time zeroing pages, and raising glibc's trim and mmap
thresholds took the pack from 2.54 s to 2.13 s (median of 5).

Only the ``kbundle`` command calls :func:`retain_freed_memory`; a program that imports
kbundle keeps its own allocator settings. The memory kept is what the bounded queues held
at their peak (a few tens of MiB). Stable: internal.
"""

from __future__ import annotations

import os

__all__ = ["retain_freed_memory"]

# mallopt() parameters (glibc malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Blocks below this come from the heap and are reused; above it they are mapped and unmapped
# one by one. Every chunk the pipelines use is far smaller.
_MMAP_THRESHOLD = 32 * 1024 * 1024
# Free memory at the top of the heap is kept up to this much.
_TRIM_THRESHOLD = 256 * 1024 * 1024


def retain_freed_memory() -> bool:
    """Tune glibc so freed chunks are reused, not returned and faulted in again. Returns
    whether it applied (False on other C libraries and platforms)."""
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return False
    except (AttributeError, ValueError, OSError):
        return False  # not glibc (musl, macOS, Windows)
    import ctypes

    libc = ctypes.CDLL(None)
    return bool(
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
        and libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    )
