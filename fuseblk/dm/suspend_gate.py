"""The suspend gate of a mapped device: what lets a table be swapped under live I/O.

The kernel's ``dm_suspend`` sets ``DMF_BLOCK_IO_FOR_SUSPEND`` so new bios queue instead of being
mapped, then waits until the in-flight count drops to zero; ``dm_resume`` clears the flag and
re-submits what queued. Nothing is failed or lost: a bio either completed against the old table or
waits and runs against the new one. Here a bio that arrives while suspended simply waits in
:meth:`enter` until :meth:`resume`.

trio runs one task at a time, so the counter and flag need no lock: nothing between two ``await``s
can interleave.
"""

from __future__ import annotations

import errno

import trio

from fuseblk.errors import FuseblkError


class SuspendGate:
    __slots__ = ("_inflight", "_suspended", "_resumed", "_drained", "_closed")

    def __init__(self) -> None:
        self._inflight = 0
        self._suspended = False
        self._closed = False
        self._resumed = trio.Event()
        self._resumed.set()
        self._drained: trio.Event | None = None

    @property
    def suspended(self) -> bool:
        return self._suspended

    @property
    def inflight(self) -> int:
        return self._inflight

    def try_enter(self) -> bool:
        """Admit one bio at once if the gate is open (True); False if it must :meth:`enter`.
        The hot path: a bio that need not wait pays no coroutine."""
        if self._suspended or self._closed:
            return False
        self._inflight += 1
        return True

    async def enter(self) -> bool:
        """Admit one bio: waits while suspended (returns True if it had to); ENODEV once the
        device is gone. The common case does not yield: the hot path pays one comparison."""
        waited = False
        while self._suspended:
            if self._closed:
                raise FuseblkError(errno.ENODEV, "device was removed")
            waited = True
            await self._resumed.wait()
        if self._closed:
            raise FuseblkError(errno.ENODEV, "device was removed")
        self._inflight += 1
        return waited

    def leave(self) -> None:
        """The bio admitted by :meth:`enter` completed (successfully or not)."""
        self._inflight -= 1
        if self._inflight == 0 and self._drained is not None:
            self._drained.set()

    def block(self) -> None:
        """Stop admitting bios: from now on :meth:`enter` waits."""
        if not self._suspended:
            self._suspended = True
            self._resumed = trio.Event()

    async def suspend(self) -> None:
        """Stop admitting bios and wait until every admitted one has completed."""
        self.block()
        await self.drain()

    async def drain(self) -> None:
        """Wait until every admitted bio has completed."""
        while self._inflight:
            self._drained = trio.Event()
            await self._drained.wait()
        self._drained = None

    def resume(self) -> None:
        """Admit bios again, starting with those that waited."""
        self._suspended = False
        self._resumed.set()

    def close(self) -> None:
        """The device is removed: waiters and later bios fail with ENODEV."""
        self._closed = True
        self._suspended = True
        self._resumed.set()
