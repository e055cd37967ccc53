"""Suspend and resume: in-flight I/O completes, new I/O waits, nothing is failed or lost."""

from __future__ import annotations

import errno

import pytest
import trio
import trio.testing
from dm_helpers import MemDisk, manager_over, pattern, read, write

from fuseblk.errors import FuseblkError


async def test_suspend_waits_for_in_flight_io_to_complete():
    a = MemDisk("a")
    dm = manager_over(a)
    md = await dm.create("d", "0 16 linear a 0")
    a.hold = trio.Event()
    suspended = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(write, md, 0, pattern(4096))
        await trio.testing.wait_all_tasks_blocked()

        async def suspend() -> None:
            await dm.suspend("d")
            suspended.set()

        nursery.start_soon(suspend)
        await trio.testing.wait_all_tasks_blocked()
        assert not suspended.is_set()  # the write is still in flight
        a.hold.set()
    assert suspended.is_set() and a.data[:4096] == pattern(4096)


async def test_io_submitted_while_suspended_waits_for_resume_and_sees_the_new_table():
    a, b = MemDisk("a"), MemDisk("b")
    dm = manager_over(a, b)
    md = await dm.create("d", "0 16 linear a 0")
    await dm.suspend("d")
    done = trio.Event()

    async def writer() -> None:
        await write(md, 0, pattern(4096, 1))
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        await trio.testing.wait_all_tasks_blocked()
        assert not done.is_set() and b.counters["bios"] == 0 and a.counters["bios"] == 0
        await dm.load("d", "0 16 linear b 0")
        await dm.resume("d")
    assert done.is_set() and b.data[:4096] == pattern(4096, 1) and a.counters["bios"] == 0


async def test_resume_with_a_new_table_suspends_first():
    a = MemDisk("a")
    dm = manager_over(a)
    md = await dm.create("d", "0 16 linear a 0")
    a.hold = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(write, md, 0, pattern(4096, 2))
        await trio.testing.wait_all_tasks_blocked()
        await dm.load("d", "0 16 error")
        nursery.start_soon(dm.resume, "d")
        await trio.testing.wait_all_tasks_blocked()
        assert md.live is not None and md.live.targets[0].name == "linear"  # not swapped under I/O
        a.hold.set()
    assert a.data[:4096] == pattern(4096, 2) and md.live.targets[0].name == "error"


async def test_concurrent_writers_lose_nothing_across_suspend_reload_resume():
    a = MemDisk("a", size=1 << 20)
    dm = manager_over(a)
    md = await dm.create("d", "0 2048 linear a 0")
    tables = [
        "0 1024 linear a 0\n1024 1024 linear a 1024",
        "0 2048 striped 1 64 a 0",
        "0 2048 linear a 0",
    ]
    blocks = 64
    rounds = 12
    written: dict[int, bytes] = {}

    async def writer(w: int) -> None:
        for r in range(rounds):
            for blk in range(w, blocks, 4):
                data = pattern(4096, seed=r * 100 + blk)
                await write(md, blk * 4096, data)
                written[blk] = data
                await trio.sleep(0)

    async def reloader() -> None:
        for i in range(3 * rounds):
            await dm.suspend("d")
            await dm.load("d", tables[i % len(tables)])
            await trio.sleep(0)
            await dm.resume("d")
            await trio.sleep(0)

    async with trio.open_nursery() as nursery:
        for w in range(4):
            nursery.start_soon(writer, w)
        nursery.start_soon(reloader)
    assert md.counters["errors"] == 0
    for blk, data in written.items():
        assert await read(md, blk * 4096, 4096) == data
    assert len(written) == blocks and md.event_nr > 1


async def test_removed_device_fails_waiting_io_with_enodev():
    dm = manager_over(MemDisk("a"))
    md = await dm.create("d", "0 16 linear a 0")
    await dm.suspend("d")
    failures: list[int] = []

    async def reader() -> None:
        try:
            await read(md, 0, 512)
        except FuseblkError as err:
            failures.append(err.errno)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        await dm.remove("d")
    assert failures == [errno.ENODEV]


async def test_suspending_twice_and_resuming_an_active_device_are_harmless():
    dm = manager_over(MemDisk("a"))
    md = await dm.create("d", "0 16 linear a 0")
    await dm.resume("d")
    await dm.suspend("d")
    await dm.suspend("d")
    await dm.resume("d")
    await write(md, 0, pattern(512))
    with pytest.raises(FuseblkError):
        await dm.suspend("nope")
