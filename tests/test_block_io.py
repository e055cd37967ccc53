"""Byte-granular I/O over block devices: clamping at the end and read-modify-write of partial blocks."""

from __future__ import annotations

import errno
import random

import pytest
import trio
from device_helpers import MemDevice

from fuseblk.bio import BioOp
from fuseblk.errors import FuseblkError
from fuseblk.fuse.block_io import BlockIO


def make(size: int = 64 * 1024, block_size: int = 4096) -> tuple[MemDevice, BlockIO]:
    dev = MemDevice("d", size, block_size, tear_writes=True)
    dev.data[:] = random.Random(1).randbytes(size)
    return dev, BlockIO(dev)


async def test_aligned_write_is_one_bio_without_reads() -> None:
    dev, bio = make()
    assert await bio.write(4096, b"x" * 8192) == 8192
    assert dev.extents() == [(BioOp.WRITE, 4096, 8192)]
    assert dev.data[4096:12288] == b"x" * 8192


async def test_unaligned_write_merges_into_whole_blocks() -> None:
    dev, bio = make()
    before = bytes(dev.data)
    assert await bio.write(4000, b"y" * 200) == 200
    expected = before[:4000] + b"y" * 200 + before[4200:]
    assert bytes(dev.data) == expected
    # Two partial blocks (0 and 1): each read once, then one write of both.
    assert dev.extents() == [
        (BioOp.READ, 0, 4096),
        (BioOp.READ, 4096, 4096),
        (BioOp.WRITE, 0, 8192),
    ]


async def test_write_inside_one_block_reads_it_once() -> None:
    dev, bio = make()
    await bio.write(5000, b"z" * 10)
    assert dev.extents() == [(BioOp.READ, 4096, 4096), (BioOp.WRITE, 4096, 4096)]


async def test_unaligned_read_returns_exactly_the_range() -> None:
    dev, bio = make()
    assert bytes(await bio.read(1000, 5000)) == dev.data[1000:6000]
    assert dev.extents() == [(BioOp.READ, 0, 8192)]


async def test_read_at_end_is_empty_and_past_end_is_short() -> None:
    dev, bio = make(size=16384)
    assert bytes(await bio.read(16384, 4096)) == b""
    assert bytes(await bio.read(20000, 10)) == b""
    assert bytes(await bio.read(16000, 4096)) == dev.data[16000:]


async def test_write_at_end_is_enospc() -> None:
    _, bio = make(size=16384)
    with pytest.raises(FuseblkError) as info:
        await bio.write(16384, b"a")
    assert info.value.errno == errno.ENOSPC


async def test_write_running_past_end_is_short() -> None:
    dev, bio = make(size=16384)
    assert await bio.write(16000, b"b" * 1000) == 384
    assert dev.data[16000:] == b"b" * 384


async def test_device_errors_pass_through() -> None:
    dev, bio = make()
    dev.failing = errno.EIO
    with pytest.raises(FuseblkError) as info:
        await bio.read(0, 4096)
    assert info.value.errno == errno.EIO


async def test_flush_reaches_the_device() -> None:
    dev, bio = make()
    await bio.flush()
    assert dev.counters["flushes"] == 1


async def test_block_size_is_read_per_request() -> None:
    dev, bio = make(block_size=512)
    await bio.write(512, b"c" * 512)
    dev.block_size = 4096
    await bio.write(512, b"d" * 512)
    assert dev.extents()[-1] == (BioOp.WRITE, 0, 4096)


async def test_concurrent_overlapping_unaligned_writes_never_tear_a_block() -> None:
    dev, bio = make(size=8 * 4096)
    writers = 8

    async def writer(i: int) -> None:
        rng = random.Random(i)
        for _ in range(40):
            off = rng.randrange(0, dev.size - 6000)
            # Whole blocks' worth of one byte, starting mid-block: every touched block is RMW.
            await bio.write(off - off % 4096 + 100, bytes([i + 1]) * 4096)

    dev.data[:] = bytes(dev.size)
    async with trio.open_nursery() as nursery:
        for i in range(writers):
            nursery.start_soon(writer, i)
    # Every write covers [b+100, b+4196): block b+1's first 100 bytes and block b's tail; each
    # run of bytes written by one request must be intact, so within a block the bytes before and
    # after offset 100 each come from a single writer.
    for b in range(0, dev.size, 4096):
        head, tail = dev.data[b : b + 100], dev.data[b + 100 : b + 4096]
        assert len(set(head)) == 1 and len(set(tail)) == 1
