"""Range locks: overlapping byte ranges serialize, disjoint ones proceed together."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from fuseblk.rangelock import RangeLock


async def test_disjoint_ranges_are_held_at_the_same_time() -> None:
    lock = RangeLock()
    async with lock.locked(0, 4096), lock.locked(4096, 8192):
        assert lock.held == [(0, 4096), (4096, 8192)]
    assert lock.held == []


async def test_overlapping_range_waits_until_the_holder_releases() -> None:
    lock = RangeLock()
    order: list[str] = []

    async def second() -> None:
        async with lock.locked(4000, 5000):
            order.append("second")

    async with trio.open_nursery() as nursery:
        hold = await lock.acquire(0, 4096)
        nursery.start_soon(second)
        await trio.testing.wait_all_tasks_blocked()
        assert order == []
        order.append("first")
        lock.release(hold)
    assert order == ["first", "second"]


async def test_adjacent_ranges_do_not_overlap() -> None:
    lock = RangeLock()
    hold = await lock.acquire(0, 512)
    with trio.move_on_after(1) as scope:
        async with lock.locked(512, 1024):
            pass
    assert not scope.cancelled_caught
    lock.release(hold)


async def test_lock_is_released_when_the_body_raises() -> None:
    lock = RangeLock()
    with pytest.raises(RuntimeError):
        async with lock.locked(0, 10):
            raise RuntimeError("boom")
    assert lock.held == []


async def test_cancelled_waiter_leaves_no_hold() -> None:
    lock = RangeLock()
    hold = await lock.acquire(0, 10)
    with trio.move_on_after(0.01):
        await lock.acquire(5, 15)
    lock.release(hold)
    assert lock.held == []


async def test_empty_range_is_refused() -> None:
    with pytest.raises(ValueError):
        await RangeLock().acquire(10, 10)
