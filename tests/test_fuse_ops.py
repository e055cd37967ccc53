"""The FUSE layer on a real mount, over in-memory devices: files, sizes, errors, alignment.

The server runs in a thread of the test process (``serve_in_thread``); the test does ordinary
blocking file I/O on the mount, exactly as dd or fio would.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import random
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from device_helpers import MemDevice
from dm_helpers import manager_over
from fuse_helpers import MemoryManager, eventually, is_mounted, needs_fuse, serve_in_thread

pytestmark = [needs_fuse, pytest.mark.integration]

MiB = 1 << 20
LARGEST_FILE = (1 << 63) - 1  # off_t


@pytest.fixture
def manager() -> MemoryManager:
    mgr = MemoryManager()
    mgr.add(MemDevice("small", 64 * 1024, block_size=512, tear_writes=True))
    mgr.add(MemDevice("big4k", 4 * MiB, block_size=4096, tear_writes=True))
    return mgr


@pytest.fixture
def mnt(tmp_path: Path, manager: MemoryManager) -> Iterator[Path]:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    with serve_in_thread(manager, mountpoint):
        yield mountpoint


def test_each_device_is_a_0600_regular_file_sized_to_its_table(mnt: Path) -> None:
    assert sorted(os.listdir(mnt)) == ["big4k", "small"]
    st = os.stat(mnt / "big4k")
    assert stat.S_ISREG(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_size == 4 * MiB
    assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())
    assert os.stat(mnt / "small").st_size == 64 * 1024


def test_inode_numbers_are_stable_per_device(mnt: Path) -> None:
    first = os.stat(mnt / "small").st_ino
    assert os.stat(mnt / "small").st_ino == first
    assert os.stat(mnt / "big4k").st_ino != first


def test_buffered_write_then_read_round_trips(mnt: Path, manager: MemoryManager) -> None:
    data = random.randbytes(200_000)
    with open(mnt / "big4k", "r+b") as f:
        f.seek(12345)
        f.write(data)
    with open(mnt / "big4k", "rb") as f:
        f.seek(12345)
        assert f.read(len(data)) == data
    assert manager.devices["big4k"].data[12345 : 12345 + len(data)] == data


def test_o_direct_write_and_read_round_trip(mnt: Path, manager: MemoryManager) -> None:
    buf = mmap.mmap(-1, MiB)  # page-aligned, as O_DIRECT wants
    pattern = random.randbytes(MiB)
    buf[:] = pattern
    fd = os.open(mnt / "big4k", os.O_RDWR | os.O_DIRECT)
    try:
        assert os.pwrite(fd, buf, MiB) == MiB
        out = mmap.mmap(-1, MiB)
        assert os.preadv(fd, [out], MiB) == MiB
        assert out[:] == pattern
    finally:
        os.close(fd)
    assert manager.devices["big4k"].data[MiB : 2 * MiB] == pattern


def test_unaligned_writes_read_modify_write_whole_blocks(mnt: Path, manager: MemoryManager) -> None:
    dev = manager.devices["big4k"]
    dev.data[:] = random.randbytes(dev.size)
    expected = bytearray(dev.data)
    rng = random.Random(7)
    fd = os.open(mnt / "big4k", os.O_RDWR)
    try:
        for _ in range(50):
            off = rng.randrange(0, dev.size - 10_000)
            chunk = rng.randbytes(rng.randrange(1, 10_000))
            assert os.pwrite(fd, chunk, off) == len(chunk)
            expected[off : off + len(chunk)] = chunk
    finally:
        os.close(fd)
    assert dev.data == expected
    # MemDevice rejects unaligned bios, so none reached it.
    assert all(o % 4096 == 0 and n % 4096 == 0 for _, o, n in dev.extents() if n)


def test_read_at_end_is_eof_and_past_end_is_short(mnt: Path) -> None:
    fd = os.open(mnt / "small", os.O_RDONLY)
    try:
        assert os.pread(fd, 4096, 64 * 1024) == b""
        assert len(os.pread(fd, 4096, 64 * 1024 - 100)) == 100
    finally:
        os.close(fd)


def test_write_at_end_is_enospc(mnt: Path) -> None:
    fd = os.open(mnt / "small", os.O_WRONLY)
    try:
        with pytest.raises(OSError) as info:
            os.pwrite(fd, b"x" * 512, 64 * 1024)
        assert info.value.errno == errno.ENOSPC
    finally:
        os.close(fd)


def test_truncate_to_another_size_is_eperm_and_same_size_is_allowed(mnt: Path) -> None:
    with pytest.raises(PermissionError):
        os.truncate(mnt / "small", 512)
    os.truncate(mnt / "small", 64 * 1024)


def test_open_with_o_trunc_is_ignored_as_on_a_block_device(mnt: Path) -> None:
    """`dd of=DEV` opens with O_TRUNC; a block device ignores it, and so do we."""
    data = os.urandom(4096)
    (mnt / "small").write_bytes(data)  # opens with O_TRUNC, then writes
    assert os.stat(mnt / "small").st_size == 64 * 1024
    with open(mnt / "small", "r+b") as f:
        assert f.read(4096) == data
    open(mnt / "small", "wb").close()
    assert (mnt / "small").read_bytes()[:4096] == data


def test_create_unlink_mkdir_rename_are_eperm(mnt: Path) -> None:
    with pytest.raises(PermissionError):
        open(mnt / "new", "xb").close()
    with pytest.raises(PermissionError):
        os.unlink(mnt / "small")
    with pytest.raises(PermissionError):
        os.mkdir(mnt / "dir")
    with pytest.raises(PermissionError):
        os.rename(mnt / "small", mnt / "other")


def test_device_errors_reach_the_caller_as_eio_and_the_log_as_warnings(
    mnt: Path, manager: MemoryManager, caplog: pytest.LogCaptureFixture
) -> None:
    manager.devices["small"].failing = errno.EIO
    fd = os.open(mnt / "small", os.O_RDONLY)
    try:
        with (
            caplog.at_level(logging.WARNING, logger="fuseblk.fuse.ops"),
            pytest.raises(OSError) as info,
        ):
            os.pread(fd, 512, 0)
        assert info.value.errno == errno.EIO
        assert any("EIO" in r.getMessage() for r in caplog.records if r.name == "fuseblk.fuse.ops")
    finally:
        manager.devices["small"].failing = None
        os.close(fd)


def test_fsync_and_fdatasync_flush_the_device_and_close_does_not(
    mnt: Path, manager: MemoryManager
) -> None:
    dev = manager.devices["small"]
    fd = os.open(mnt / "small", os.O_RDWR)
    os.pwrite(fd, b"a" * 512, 0)
    os.fsync(fd)
    assert dev.counters["flushes"] == 1
    os.fdatasync(fd)
    assert dev.counters["flushes"] == 2
    os.close(fd)  # blkdev_release issues no flush
    assert dev.counters["flushes"] == 2


@pytest.fixture
def dm_mnt(tmp_path: Path) -> Iterator[tuple[Path, MemDevice]]:
    """A real DeviceManager over one RAM disk, mounted: ``flaky`` is dm-flakey always down with
    ``error_writes`` (up 0 s, down 1 s), ``lin`` is linear over the same disk, ``huge`` the
    largest device there can be."""
    disk = MemDevice("disk", MiB)
    dm = manager_over(disk)
    trio.run(dm.create, "flaky", "0 1024 flakey disk 0 0 1 1 error_writes")
    trio.run(dm.create, "lin", "0 1024 linear disk 1024")
    trio.run(dm.create, "huge", f"0 {LARGEST_FILE // 512} zero")
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    with serve_in_thread(dm, mountpoint):
        yield mountpoint, disk


def test_the_largest_device_is_a_file_of_the_largest_size(dm_mnt: tuple[Path, MemDevice]) -> None:
    mnt = dm_mnt[0]
    assert sorted(os.listdir(mnt)) == ["flaky", "huge", "lin"]
    size = os.stat(mnt / "huge").st_size
    assert size == LARGEST_FILE // 512 * 512
    assert _pread(mnt / "huge", 4096, size - 4096) == bytes(4096)


def test_closing_a_flakey_error_writes_device_after_reads_in_its_down_interval_succeeds(
    dm_mnt: tuple[Path, MemDevice],
) -> None:
    mnt, disk = dm_mnt
    fd = os.open(mnt / "flaky", os.O_RDONLY)
    try:
        assert os.pread(fd, 4096, 0) == bytes(4096)  # reads are handled while down
    finally:
        os.close(fd)  # no FLUSH, so no EIO (dd: "closing input file")
    assert disk.counters["flushes"] == 0


def test_fsync_on_a_flakey_error_writes_device_in_its_down_interval_is_eio(
    dm_mnt: tuple[Path, MemDevice],
) -> None:
    fd = os.open(dm_mnt[0] / "flaky", os.O_RDWR)
    try:
        with pytest.raises(OSError) as info:
            os.fsync(fd)  # a FLUSH is a write to dm-flakey
        assert info.value.errno == errno.EIO
    finally:
        os.close(fd)


def test_fsync_and_fdatasync_of_a_mapped_device_reach_the_disk_below(
    dm_mnt: tuple[Path, MemDevice],
) -> None:
    mnt, disk = dm_mnt
    fd = os.open(mnt / "lin", os.O_RDWR)
    try:
        os.pwrite(fd, b"b" * 4096, 0)
        assert disk.counters["flushes"] == 0
        os.fsync(fd)
        assert disk.counters["flushes"] == 1
        os.fdatasync(fd)
        assert disk.counters["flushes"] == 2
    finally:
        os.close(fd)
    assert disk.counters["flushes"] == 2
    assert disk.data[1024 * 512 : 1024 * 512 + 4096] == b"b" * 4096


def test_devices_added_and_removed_while_mounted_appear_and_disappear(
    mnt: Path, manager: MemoryManager
) -> None:
    assert not (mnt / "late").exists()
    manager.add(MemDevice("late", 8192))
    assert os.stat(mnt / "late").st_size == 8192
    assert "late" in os.listdir(mnt)
    manager.remove("late")
    eventually(lambda: not (mnt / "late").exists())
    assert "late" not in os.listdir(mnt)


def test_a_device_whose_name_is_no_file_name_is_left_out_of_the_listing(
    mnt: Path, manager: MemoryManager, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="fuseblk.fuse.ops"):
        manager.add(MemDevice("\ud800", 8192))  # a lone surrogate: no UTF-8 spelling
        manager.add(MemDevice("caf\u00e9", 8192))
        assert sorted(os.listdir(mnt)) == ["big4k", "caf\u00e9", "small"]
    assert os.stat(mnt / "caf\u00e9").st_size == 8192
    assert any("not UTF-8" in r.getMessage() for r in caplog.records)
    with pytest.raises(FileNotFoundError):
        os.stat(os.fsencode(mnt) + b"/\xed\xa0\x80")  # what surrogatepass would spell


def test_renamed_device_keeps_its_inode(mnt: Path, manager: MemoryManager) -> None:
    inode = os.stat(mnt / "small").st_ino
    manager.rename("small", "tiny")
    eventually(lambda: not (mnt / "small").exists())
    assert os.stat(mnt / "tiny").st_ino == inode


def test_resized_device_shows_its_new_size(mnt: Path, manager: MemoryManager) -> None:
    assert os.stat(mnt / "small").st_size == 64 * 1024
    manager.resize("small", 128 * 1024)
    assert os.stat(mnt / "small").st_size == 128 * 1024


def test_concurrent_overlapping_unaligned_writers_never_tear_a_block(
    mnt: Path, manager: MemoryManager
) -> None:
    dev = manager.devices["big4k"]
    region = 64 * 1024
    errors: list[BaseException] = []

    def writer(i: int) -> None:
        rng = random.Random(i)
        try:
            fd = os.open(mnt / "big4k", os.O_WRONLY)
            try:
                for _ in range(60):
                    start = rng.randrange(0, region - 8192) // 4096 * 4096 + 1000
                    os.pwrite(fd, bytes([i + 1]) * 4096, start)
            finally:
                os.close(fd)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    # Each write covers [b+1000, b+5096): the bytes of one block before and after offset 1000
    # must each come from a single write.
    for b in range(0, region, 4096):
        assert len(set(dev.data[b : b + 1000])) == 1
        assert len(set(dev.data[b + 1000 : b + 4096])) == 1


def test_one_mib_direct_write_and_read_each_reach_the_device_as_one_bio(
    mnt: Path, manager: MemoryManager
) -> None:
    dev = manager.devices["big4k"]
    buf = mmap.mmap(-1, MiB)
    fd = os.open(mnt / "big4k", os.O_RDWR | os.O_DIRECT)
    try:
        dev.bios.clear()
        os.pwrite(fd, buf, 0)
        os.preadv(fd, [buf], 0)
    finally:
        os.close(fd)
    data_bios = [(op.value, off, n) for op, off, n in dev.extents() if n]
    assert data_bios == [("write", 0, MiB), ("read", 0, MiB)]


def test_a_slow_device_does_not_stall_requests_to_another(
    mnt: Path, manager: MemoryManager
) -> None:
    slow = manager.devices["big4k"]
    slow.gate = threading.Event()
    result: dict[str, bytes] = {}
    reader = threading.Thread(target=lambda: result.update(slow=_pread(mnt / "big4k", 4096, 0)))
    reader.start()
    try:
        eventually(lambda: any(n for _, _, n in slow.extents()))  # the slow read is in flight
        manager.devices["small"].data[:5] = b"quick"
        quick = threading.Thread(target=lambda: result.update(small=_pread(mnt / "small", 5, 0)))
        quick.start()
        quick.join(timeout=10)  # a safety net: if it stalled, fail instead of hanging
        assert result.get("small") == b"quick"
        assert reader.is_alive()
    finally:
        slow.gate.set()
        reader.join(timeout=10)
    assert result["slow"] == bytes(4096)


def test_statfs_reports_the_devices(mnt: Path) -> None:
    st = os.statvfs(mnt)
    assert st.f_blocks * st.f_frsize == 4 * MiB + 64 * 1024


def test_a_second_mount_on_the_same_mountpoint_is_refused(mnt: Path) -> None:
    from fuseblk.errors import FuseblkError
    from fuseblk.fuse.daemon import MountSettings, run_foreground

    async def build() -> MemoryManager:
        raise AssertionError("must refuse before building devices")

    with pytest.raises(FuseblkError) as info:
        run_foreground(build, MountSettings(mnt))
    assert info.value.errno == errno.EBUSY
    assert "already a mount point" in info.value.message


def test_shutdown_unmounts_and_closes_the_manager(tmp_path: Path) -> None:
    mgr = MemoryManager()
    mgr.add(MemDevice("d", 8192))
    mountpoint = tmp_path / "m"
    mountpoint.mkdir()
    with serve_in_thread(mgr, mountpoint):
        assert is_mounted(mountpoint)
    assert not is_mounted(mountpoint)
    assert mgr.closed and mgr.flushed


def _pread(path: Path, length: int, offset: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


def test_mountpoint_with_spaces_is_recognised_as_a_mount(tmp_path: Path) -> None:
    mgr = MemoryManager()
    mgr.add(MemDevice("d", 8192))
    mountpoint = tmp_path / "with space\tand tab"
    mountpoint.mkdir()
    with serve_in_thread(mgr, mountpoint):
        assert is_mounted(mountpoint)
        assert os.listdir(mountpoint) == ["d"]
    assert not is_mounted(mountpoint)
