"""Byte-range locks for trio tasks: overlapping ranges serialize, disjoint ranges run together.

A read-modify-write of a partial block must not interleave with another write to that block, or
one writer's bytes would be lost (a torn block). Locking whole blocks' byte ranges — rather than
the device — keeps unrelated requests concurrent, which is what lets a slow target not stall
others. The number of holders is bounded by the FUSE worker count, so a linear scan is cheaper
than an interval tree at these sizes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio


@dataclass(eq=False, slots=True)
class _Hold:
    start: int
    end: int
    # Made by the first waiter: most holds are never waited on, and every write takes one.
    released: trio.Event | None = field(default=None)

    def overlaps(self, start: int, end: int) -> bool:
        return self.start < end and start < self.end


class RangeLock:
    """Exclusive locks on half-open byte ranges ``[start, end)``.

    Waiters are not queued fairly: a waiter retries after the holder it waited on releases, and
    may wait again behind a newer overlapping holder. With FUSE's bounded concurrency that cannot
    starve anyone for long, and release needs no hand-over: it drops the hold and wakes its waiters.
    """

    def __init__(self) -> None:
        self._holds: list[_Hold] = []

    @property
    def held(self) -> list[tuple[int, int]]:
        """The ranges currently held, for tests and debugging."""
        return [(h.start, h.end) for h in self._holds]

    def _blocker(self, start: int, end: int) -> _Hold | None:
        for hold in self._holds:
            if hold.overlaps(start, end):
                return hold
        return None

    def try_acquire(self, start: int, end: int) -> _Hold | None:
        """Hold ``[start, end)`` at once if nothing overlapping is held, else None (then
        :meth:`acquire`): the uncontended case awaits nothing."""
        if end <= start:
            raise ValueError(f"empty range [{start}, {end})")
        holds = self._holds
        if holds and self._blocker(start, end) is not None:
            return None
        hold = _Hold(start, end)
        holds.append(hold)
        return hold

    async def acquire(self, start: int, end: int) -> _Hold:
        if end <= start:
            raise ValueError(f"empty range [{start}, {end})")
        while (blocker := self._blocker(start, end)) is not None:
            if blocker.released is None:
                blocker.released = trio.Event()
            await blocker.released.wait()
        hold = _Hold(start, end)
        self._holds.append(hold)
        return hold

    def release(self, hold: _Hold) -> None:
        self._holds.remove(hold)
        if hold.released is not None:
            hold.released.set()

    @asynccontextmanager
    async def locked(self, start: int, end: int) -> AsyncIterator[None]:
        """Hold ``[start, end)`` for the body; released even if the body fails or is cancelled."""
        hold = await self.acquire(start, end)
        try:
            yield
        finally:
            self.release(hold)
