"""flakey: up/down cycles from construction time and every feature of current kernels."""

from __future__ import annotations

import errno

import pytest
from device_helpers import XTS, MemDevice, caps, ciphertext, make_key
from dm_helpers import ManualClock, manager_over, pattern, read, write

from fuseblk.bio import Bio
from fuseblk.crypt_context import BioCryptContext
from fuseblk.dm.targets.flakey import FlakeyTarget
from fuseblk.errors import FuseblkError

SZ = 64


async def flakey(table_args: str, clock: ManualClock, disk: MemDevice | None = None):
    disk = disk or MemDevice("dev")
    dm = manager_over(disk, clock=clock)
    md = await dm.create("f", f"0 {SZ} flakey dev 0 {table_args}")
    return dm, md, disk


async def test_up_180_down_0_behaves_like_linear():
    clock = ManualClock()
    dm, md, disk = await flakey("180 0", clock)
    for _ in range(3):
        await write(md, 0, pattern(4096))
        assert await read(md, 0, 4096) == pattern(4096)
        clock.advance(100)
    assert dm.table("f") == f"0 {SZ} flakey dev 0 180 0 2 error_reads error_writes\n"


async def test_up_0_down_180_fails_everything_by_default():
    clock = ManualClock()
    dm, md, disk = await flakey("0 180", clock)
    for bio in (
        Bio.write(0, bytes(512)),
        Bio.read(0, bytearray(512)),
        Bio.flush(),
        Bio.discard(0, 512),
    ):
        with pytest.raises(FuseblkError) as info:
            await md.submit(bio)
        assert info.value.errno == errno.EIO
    assert md.counters["flakey_errored"] == 4 and disk.counters["bios"] == 0


async def test_drop_writes_silently_drops_writes_while_reads_work():
    clock = ManualClock()
    disk = MemDevice("dev")
    disk.data[:4096] = pattern(4096, 1)
    dm, md, _ = await flakey("0 180 1 drop_writes", clock, disk)
    await write(md, 0, pattern(4096, 2))
    assert disk.data[:4096] == pattern(4096, 1)
    assert await read(md, 0, 4096) == pattern(4096, 1)
    assert md.counters["flakey_dropped"] == 1 and md.counters["errors"] == 0


async def test_the_cycle_starts_at_construction_and_repeats():
    clock = ManualClock()
    dm, md, disk = await flakey("2 3 1 error_writes", clock)
    outcomes = []
    for _ in range(10):
        try:
            await write(md, 0, bytes(512))
            outcomes.append("up")
        except FuseblkError:
            outcomes.append("down")
        clock.advance(1)
    assert outcomes == ["up", "up", "down", "down", "down"] * 2
    clock.advance(0.5)  # whole seconds, like jiffies / HZ
    assert md.live.targets[0].is_down() is False


async def test_error_reads_fails_reads_only():
    clock = ManualClock()
    dm, md, disk = await flakey("0 5 1 error_reads", clock)
    await write(md, 0, pattern(512))
    assert disk.data[:512] == pattern(512)
    with pytest.raises(FuseblkError):
        await read(md, 0, 512)


async def test_corrupt_bio_byte_on_writes_changes_a_copy_never_the_callers_buffer():
    clock = ManualClock()
    dm, md, disk = await flakey("0 5 5 corrupt_bio_byte 3 w 170 0", clock)
    data = bytearray(pattern(1024))
    await write(md, 0, bytes(data))
    expected = bytearray(data)
    expected[2] = 170
    assert disk.data[:1024] == expected and data == pattern(1024)
    assert md.counters["flakey_corrupted"] == 1


async def test_corrupt_bio_byte_on_reads_after_the_data_arrived():
    clock = ManualClock()
    disk = MemDevice("dev")
    disk.data[:1024] = pattern(1024)
    dm, md, _ = await flakey("0 5 5 corrupt_bio_byte 1000 r 7 0", clock, disk)
    got = await read(md, 0, 1024)
    assert got[999] == 7 and got[:999] == pattern(1024)[:999] and disk.data[:1024] == pattern(1024)
    assert await read(md, 0, 512) == pattern(512)  # shorter than the Nth byte: untouched


async def test_nonzero_flags_mask_never_matches_our_flagless_bios():
    clock = ManualClock()
    dm, md, disk = await flakey("0 5 5 corrupt_bio_byte 1 w 9 32", clock)
    await write(md, 0, pattern(512))
    assert disk.data[:512] == pattern(512)


async def test_random_corruption_with_certainty_changes_at_most_one_byte():
    clock = ManualClock()
    dm, md, disk = await flakey("0 5 2 random_write_corrupt 1000000000", clock)
    md.live.targets[0].rng.seed(1)
    data = pattern(4096)
    for _ in range(20):
        await write(md, 0, data)
        diff = sum(x != y for x, y in zip(disk.data[:4096], data, strict=True))
        assert diff <= 1
    assert md.counters["flakey_corrupted"] == 20


async def test_corrupted_reads_are_corrupted_after_decryption():
    clock = ManualClock()
    disk = MemDevice("dev", caps=caps({XTS: (4096,)}))
    dm, md, _ = await flakey("5 5 5 corrupt_bio_byte 1 r 0 0", clock, disk)
    assert FlakeyTarget.passes_crypto and md.crypto_profile is not None
    key = make_key(1)
    data = b"\x55" * 4096
    await write(md, 0, data, BioCryptContext.at(key, 0))
    assert disk.data[:4096] == ciphertext(key, data, 0)
    clock.advance(5)
    got = await read(md, 0, 4096, BioCryptContext.at(key, 0))
    assert got[0] == 0 and got[1:] == data[1:]
