"""Suspend and resume: in-flight I/O completes, new I/O waits, nothing is failed or lost."""

from __future__ import annotations

import errno

import pytest
import trio
import trio.testing
from device_helpers import MemDevice
from dm_helpers import image_manager, manager_over, pattern, read, write

from fuseblk.errors import FuseblkError


async def test_suspend_waits_for_in_flight_io_to_complete():
    a = MemDevice("a")
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
    a, b = MemDevice("a"), MemDevice("b")
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
    a = MemDevice("a")
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


async def stress_suspend_reload(dm, dev: str) -> None:
    """Four writers and a reader against ``top`` while another task suspends, reloads (the same
    mapping, expressed differently each time) and resumes it; then every block is checked."""
    md = await dm.create("top", f"0 2048 linear {dev} 0")
    tables = [
        f"0 1024 linear {dev} 0\n1024 1024 linear {dev} 1024",
        f"0 2048 striped 1 64 {dev} 0",
        f"0 2048 delay {dev} 0 0",
        f"0 2048 linear {dev} 0",
    ]
    blocks, rounds = 64, 12
    written: dict[int, bytes] = {}
    versions: dict[int, set[bytes]] = {blk: {bytes(4096)} for blk in range(blocks)}

    async def writer(w: int) -> None:
        for r in range(rounds):
            for blk in range(w, blocks, 4):
                data = pattern(4096, seed=r * 100 + blk)
                versions[blk].add(data)
                await write(md, blk * 4096, data)
                written[blk] = data
                await trio.sleep(0)

    async def reader() -> None:
        for r in range(rounds * 4):
            blk = r % blocks
            assert await read(md, blk * 4096, 4096) in versions[blk]  # never torn or foreign
            await trio.sleep(0)

    async def reloader() -> None:
        for i in range(3 * rounds):
            await dm.suspend("top")
            await dm.load("top", tables[i % len(tables)])
            await trio.sleep(0)
            await dm.resume("top")
            await trio.sleep(0)

    async with trio.open_nursery() as nursery:
        for w in range(4):
            nursery.start_soon(writer, w)
        nursery.start_soon(reader)
        nursery.start_soon(reloader)
    assert md.counters["errors"] == 0 and md.counters["waited_for_resume"] > 0
    for blk, data in written.items():
        assert await read(md, blk * 4096, 4096) == data
    assert len(written) == blocks and md.event_nr > 1


async def test_concurrent_io_loses_nothing_across_suspend_reload_resume():
    await stress_suspend_reload(manager_over(MemDevice("a", size=1 << 20)), "a")


async def test_concurrent_io_over_an_image_stacked_device_loses_nothing(tmp_path):
    async with image_manager(tmp_path, {"img": (1 << 20, "none")}) as dm:
        await dm.create("lower", "0 2048 linear img 0")
        await stress_suspend_reload(dm, "lower")


async def test_removed_device_fails_waiting_io_with_enodev():
    dm = manager_over(MemDevice("a"))
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
    dm = manager_over(MemDevice("a"))
    md = await dm.create("d", "0 16 linear a 0")
    await dm.resume("d")
    await dm.suspend("d")
    await dm.suspend("d")
    await dm.resume("d")
    await write(md, 0, pattern(512))
    with pytest.raises(FuseblkError):
        await dm.suspend("nope")
