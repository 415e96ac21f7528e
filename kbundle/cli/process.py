"""How the ``kbundle`` command tunes its own process; a program that imports kbundle keeps
its own settings. Stable: internal.

Freed chunk memory stays in the process. The pipelines pass megabyte-sized chunks between
threads: each read, each compressed block and each decompressed piece is a fresh buffer that
lives for a moment. glibc serves such blocks from the heap but returns the heap's top to the
kernel as soon as more than twice the last block size is free there, so the next chunks fault
in new, zeroed pages again, which can cost more than the copies themselves. The memory kept
is what the bounded queues held at their peak (a few tens of MiB).

OpenBLAS runs single-threaded. kbundle does no linear algebra, but the pre-pack and pre-load
checks import h5py and with it numpy, whose OpenBLAS starts one thread per CPU that spins
for a while before it sleeps, taking a CPU from the pipeline. TensorFlow, when a command
loads a model, does not use OpenBLAS. (benchmarks/README.md has the figures.)

Other libraries' log records go nowhere. The storage libraries log each retry and, when they
give up, the exception with its traceback (gcsfs at ERROR level); with no handler configured,
Python prints those to standard error beside kbundle's one-line error. ``KBUNDLE_DEBUG=1``
lets them through, for bug reports.
"""

from __future__ import annotations

import logging
import os

__all__ = ["quiet_blas_threads", "quiet_library_logs", "retain_freed_memory"]

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


def quiet_blas_threads() -> None:
    """Keep OpenBLAS (loaded with numpy) to the calling thread unless the user chose a count.
    Effective only before numpy is first imported."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def quiet_library_logs() -> None:
    """Drop other libraries' log records (the module docstring), unless ``KBUNDLE_DEBUG`` is
    set or the root logger already has a handler."""
    root = logging.getLogger()
    if not root.handlers and not os.environ.get("KBUNDLE_DEBUG"):
        root.addHandler(logging.NullHandler())
