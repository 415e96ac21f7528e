"""Where pack and load keep the copy they read back at once (kbundle._io.scratch)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kbundle._io.scratch import memory_scratch


def test_tmpdir_set_by_the_user_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    assert memory_scratch(1) is None


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no tmpfs at /dev/shm here")
def test_memory_when_it_has_room_for_four_copies(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TMPDIR", raising=False)
    assert memory_scratch(1 << 20) == "/dev/shm"
    stats = os.statvfs("/dev/shm")
    free = stats.f_bavail * stats.f_frsize
    assert memory_scratch(free // 4 + 1) is None  # not four times the room: the disk
    assert memory_scratch(1 << 60) is None
