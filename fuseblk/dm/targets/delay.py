"""``delay <dev> <offset> <delay_ms> [<wdev> <woffset> <wdelay> [<fdev> <foffset> <fdelay>]]`` (``dm-delay``).

Three classes of bio, each with its own device, offset and delay in milliseconds: reads, writes
(and discards), flushes. With 3 arguments all three use the first set; with 6 flushes use the
write set. A delayed bio waits, then is submitted. Suspending stops delaying: ``presuspend``
releases every waiting bio at once (the kernel's ``flush_delayed_bios(dc, 1)``) so a suspend
never waits out the delays; ``resume`` delays again.

It passes crypto, **beyond the kernel on purpose**: dm-delay does not set
DM_TARGET_PASSES_CRYPTO upstream, but it only postpones bios and remaps their sector; it never
reads or modifies data, so passing the context through is exactly as safe as linear.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from fuseblk import SECTOR_SIZE
from fuseblk.bio import Bio, BioOp
from fuseblk.dm.targets.base import Target, TargetEnv
from fuseblk.dm.targets.ctr_args import expect_count, get_device_area, parse_sector, parse_uint

if TYPE_CHECKING:
    from fuseblk.device import BlockDevice


class _DelayClass:
    __slots__ = ("dev", "start", "delay_ms", "ops")

    def __init__(self, env: TargetEnv, args: list[str], length: int, what: str) -> None:
        self.start = parse_sector(args[1], f"{what} offset")
        self.delay_ms = parse_uint(args[2], f"{what} delay")
        self.dev = get_device_area(env, args[0], self.start, length, f"{what} device")
        self.ops = 0  # bios of this class waiting right now (dmsetup status)

    def args(self) -> str:
        return f"{self.dev.name} {self.start} {self.delay_ms}"


class DelayTarget(Target):
    name = "delay"
    version = (1, 4, 0)
    passes_crypto = True  # beyond the kernel: see the module docstring

    def __init__(self, env: TargetEnv, begin: int, length: int, args: list[str]) -> None:
        super().__init__(env, begin, length, args)
        expect_count(args, (3, 6, 9), "<dev> <offset> <delay> [x2 for writes [x3 for flushes]]")
        self.argc = len(args)
        self.read = _DelayClass(env, args[0:3], length, "read")
        wargs = args[3:6] if self.argc >= 6 else args[0:3]
        self.write = _DelayClass(env, wargs, length, "write")
        self.flush = _DelayClass(env, args[6:9] if self.argc == 9 else wargs, length, "flush")
        self._released = trio.Event()  # set while suspending: nothing may wait

    def _class(self, op: BioOp) -> _DelayClass:
        if op is BioOp.READ:
            return self.read
        return self.flush if op is BioOp.FLUSH else self.write

    async def map(self, bio: Bio) -> None:
        c = self._class(bio.op)
        if c.delay_ms and not self._released.is_set():
            c.ops += 1
            self._count("delay_delayed")
            try:
                with trio.move_on_after(c.delay_ms / 1000):
                    await self._released.wait()
            finally:
                c.ops -= 1
        if bio.op is not BioOp.FLUSH:
            bio = bio.remap(c.start * SECTOR_SIZE + bio.offset)
        await self.submit_bio(c.dev, bio)

    async def presuspend(self) -> None:
        self._released.set()

    async def resume(self) -> None:
        if self._released.is_set():
            self._released = trio.Event()

    def table_args(self, show_keys: bool = False) -> str:
        parts = [self.read.args()]
        if self.argc >= 6:
            parts.append(self.write.args())
        if self.argc == 9:
            parts.append(self.flush.args())
        return " ".join(parts)

    def status(self) -> str:
        return f"{self.read.ops} {self.write.ops} {self.flush.ops}"

    def devices(self) -> list[BlockDevice]:
        devs: list[BlockDevice] = []
        for c in (self.read, self.write, self.flush):
            if all(d is not c.dev for d in devs):
                devs.append(c.dev)
        return devs
