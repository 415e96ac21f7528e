"""The page-cache-bypassing writer under pack: what reaches the file, in every path."""

from __future__ import annotations

import errno
import os
import resource
import signal
import threading
from pathlib import Path

import pytest

from kbundle._io import writers
from kbundle._io.writers import ALIGNMENT, DirectWriter, QueuedWriter, direct_writes


def _supports_direct(directory: Path) -> bool:
    try:
        fd = os.open(directory / "probe", os.O_CREAT | os.O_WRONLY | os.O_DIRECT, 0o600)
    except (OSError, AttributeError):
        return False
    os.close(fd)
    (directory / "probe").unlink()
    return True


def _pieces(total: int) -> list[bytes]:
    """Deterministic data in awkward piece sizes (1 byte to several buffers)."""
    sizes = [1, 4095, 4097, 3 * ALIGNMENT, 17, 2 * 8192 + 5, 100_000]
    out, made, index = [], 0, 0
    while made < total:
        size = min(sizes[index % len(sizes)], total - made)
        out.append(bytes((made + i) * 7 % 251 for i in range(size)))
        made += size
        index += 1
    return out


@pytest.mark.parametrize("total", [0, 100, ALIGNMENT, 8192 * 3, 8192 * 3 + 1234, 200_003])
def test_stream_then_header_patch_lands_byte_for_byte(tmp_path: Path, total: int) -> None:
    target = tmp_path / "out.bin"
    pieces = _pieces(total)
    with target.open("w+b") as handle:
        with direct_writes(handle) as writer:
            assert writer.direct is _supports_direct(tmp_path)
            for piece in pieces:
                assert writer.write(piece) == len(piece)
            assert writer.tell() == total
        assert handle.tell() == total  # positioned for whatever the caller writes next
        handle.write(b"END")
        handle.seek(0)
        handle.write(b"HEAD")
    expected = b"".join(pieces) + b"END"
    expected = (b"HEAD" + expected[4:]) if total >= 4 else b"HEAD"
    assert target.read_bytes() == expected


def test_small_buffers_are_submitted_while_streaming(tmp_path: Path) -> None:
    if not _supports_direct(tmp_path):
        pytest.skip("the file system under tmp_path does not do O_DIRECT")
    data = bytes(range(256)) * 1000  # 256,000 bytes: 31 whole 8 KiB buffers and a tail
    with (tmp_path / "out.bin").open("w+b") as handle:
        writer = DirectWriter(handle, buffer_size=8192)
        for start in range(0, len(data), 3000):
            writer.write(memoryview(data)[start : start + 3000])
        writer.seek(0)  # finishes the stream, then patches like write_bundle does
        handle.write(b"\xff")
        writer.close()
    assert (tmp_path / "out.bin").read_bytes() == b"\xff" + data[1:]


def test_falls_back_to_buffered_writes_where_direct_io_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writers, "_O_DIRECT", 0)  # as on a platform without O_DIRECT
    with (tmp_path / "out.bin").open("w+b") as handle, direct_writes(handle) as writer:
        assert writer.direct is False
        writer.write(b"abc" * 5000)
    assert (tmp_path / "out.bin").read_bytes() == b"abc" * 5000


def test_an_unaligned_start_is_written_buffered(tmp_path: Path) -> None:
    with (tmp_path / "out.bin").open("w+b") as handle:
        handle.write(b"x" * 100)
        with direct_writes(handle) as writer:
            assert writer.direct is False
            writer.write(b"y" * 10_000)
    assert (tmp_path / "out.bin").read_bytes() == b"x" * 100 + b"y" * 10_000


def test_a_failure_inside_stops_the_writer_thread_and_keeps_the_error(tmp_path: Path) -> None:
    before = {t.name for t in threading.enumerate()}
    with (
        (tmp_path / "out.bin").open("w+b") as handle,
        pytest.raises(RuntimeError, match="boom"),
        direct_writes(handle) as writer,
    ):
        writer.write(b"z" * (writers.BUFFER_SIZE + 10))
        raise RuntimeError("boom")
    after = {t.name for t in threading.enumerate()}
    assert not [name for name in after - before if name.startswith("kbundle-write")]


def test_a_background_write_error_surfaces_in_the_caller(tmp_path: Path) -> None:
    """A file size limit fails the writer thread's pwrite as a full disk would (EFBIG)."""
    if not _supports_direct(tmp_path):
        pytest.skip("the file system under tmp_path does not do O_DIRECT")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (16384, hard))
    try:
        with (tmp_path / "out.bin").open("w+b") as handle:
            writer = DirectWriter(handle, buffer_size=8192)
            with pytest.raises(OSError) as raised:
                for _ in range(5):
                    writer.write(b"q" * 8192)
                writer.finish()
            writer.close()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert raised.value.errno == errno.EFBIG


def test_buffer_size_must_keep_the_alignment(tmp_path: Path) -> None:
    with (tmp_path / "out.bin").open("w+b") as handle, pytest.raises(ValueError, match="multiple"):
        DirectWriter(handle, buffer_size=ALIGNMENT + 1)


# --------------------------------------------------------------------------------------------
# QueuedWriter: extraction's writer thread


def test_queued_chunks_land_in_order_even_from_a_reused_buffer(tmp_path: Path) -> None:
    buffer = bytearray(4096)
    expected = b""
    with QueuedWriter.create(tmp_path / "out.bin") as writer:
        for round_number in range(50):
            buffer[:] = bytes([round_number]) * len(buffer)  # refilled at once, as readinto does
            writer.write(memoryview(buffer))
            writer.write(b"end of round %d\n" % round_number)
            expected += bytes([round_number]) * len(buffer) + b"end of round %d\n" % round_number
    assert (tmp_path / "out.bin").read_bytes() == expected


def test_queued_writer_creates_only_new_files_and_never_through_a_link(tmp_path: Path) -> None:
    (tmp_path / "exists").write_bytes(b"keep")
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(FileExistsError):
        QueuedWriter.create(tmp_path / "exists")
    with pytest.raises(FileExistsError):
        QueuedWriter.create(tmp_path / "link")
    assert (tmp_path / "exists").read_bytes() == b"keep"
    assert not (tmp_path / "elsewhere").exists()


def test_a_queued_write_error_is_raised_in_the_caller(tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (16384, hard))
    try:
        with pytest.raises(OSError) as raised, QueuedWriter.create(tmp_path / "out.bin") as writer:
            for _ in range(64):
                writer.write(b"w" * 4096)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert raised.value.errno == errno.EFBIG
    assert (tmp_path / "out.bin").stat().st_size == 16384


def test_a_failure_while_queueing_ends_the_writer_thread(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="stop"), QueuedWriter.create(tmp_path / "o") as writer:
        writer.write(b"x" * 10)
        raise RuntimeError("stop")
    assert not [t for t in threading.enumerate() if t.name == "kbundle-write"]
    assert (tmp_path / "o").read_bytes() == b"x" * 10
