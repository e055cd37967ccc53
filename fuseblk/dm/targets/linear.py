"""``linear <dev> <offset>``: map the target's range onto a contiguous area of one device.

The simplest remapping, and the one that stacks: it passes crypto through
(``DM_TARGET_PASSES_CRYPTO``) because it never looks at the data, so a bio's context reaches the
device below unchanged (remapping keeps the DUN).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fuseblk import SECTOR_SIZE
from fuseblk.bio import Bio
from fuseblk.dm.targets.base import Target, TargetEnv
from fuseblk.dm.targets.ctr_args import expect_count, get_device_area, parse_sector

if TYPE_CHECKING:
    from fuseblk.device import BlockDevice


class LinearTarget(Target):
    name = "linear"
    version = (1, 4, 0)
    passes_crypto = True
    flush_to_devices = True

    def __init__(self, env: TargetEnv, begin: int, length: int, args: list[str]) -> None:
        super().__init__(env, begin, length, args)
        expect_count(args, (2,), "<dev> <offset>")
        self.start = parse_sector(args[1])
        self.dev = get_device_area(env, args[0], self.start, length)
        self._base = self.start * SECTOR_SIZE

    async def map(self, bio: Bio) -> None:
        if bio.length == 0:  # FLUSH
            await self.submit_bio(self.dev, bio)
        else:
            op, offset, length, buf, ctx = bio
            await self.submit_bio(self.dev, Bio(op, self._base + offset, length, buf, ctx))

    def table_args(self, show_keys: bool = False) -> str:
        return f"{self.dev.name} {self.start}"

    def devices(self) -> list[BlockDevice]:
        return [self.dev]
