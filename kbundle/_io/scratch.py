"""Where a step keeps a private copy it reads back at once: memory when there is room.

Loading a just-written 1 GiB model from disk was 2-3x slower than from tmpfs here (dirty pages
being written back while Keras reads them), and saving a live model to disk before packing it
paid the same writeback. A copy that is read back at once and deleted needs no disk.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["memory_scratch"]

_MEMORY = Path("/dev/shm")
# Used only with room to spare: free space and available memory of at least this many times
# the bytes the copy needs.
_HEADROOM = 4


def memory_scratch(size: int) -> str | None:
    """A directory for ``tempfile`` (``dir=``) to keep ``size`` bytes in: ``None`` (TMPDIR, or
    the system's default) when the user set TMPDIR or tmpfs lacks the room, else tmpfs."""
    if os.environ.get("TMPDIR"):
        return None
    try:
        stats = os.statvfs(_MEMORY)
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            available = next(
                int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:")
            )
    except (OSError, StopIteration, ValueError, AttributeError):  # AttributeError: no statvfs
        return None
    room = min(stats.f_bavail * stats.f_frsize, available)
    return str(_MEMORY) if room >= _HEADROOM * size else None
