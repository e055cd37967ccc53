"""``error``: every read, write and discard fails with EIO (``dm-error``).

How xfstests turn a device into a dead one: load an error table and resume. FLUSH succeeds,
because the kernel's error target sets no ``num_flush_bios`` and dm core never sends it one.
"""

from __future__ import annotations

import errno

from fuseblk.bio import Bio, BioOp
from fuseblk.dm.targets.base import Target, TargetEnv
from fuseblk.dm.targets.ctr_args import expect_count
from fuseblk.errors import FuseblkError


class ErrorTarget(Target):
    name = "error"
    version = (1, 7, 0)
    passes_crypto = False

    def __init__(self, env: TargetEnv, begin: int, length: int, args: list[str]) -> None:
        super().__init__(env, begin, length, args)
        # The kernel ignores arguments here; accepting none keeps format(parse(t)) exact.
        expect_count(args, (0,), "error takes no arguments")

    async def map(self, bio: Bio) -> None:
        if bio.op is BioOp.FLUSH:
            return
        self._count("error_target_bios")
        raise FuseblkError(errno.EIO, f"error target: {bio.op.value} at {bio.offset} fails")

    def table_args(self, show_keys: bool = False) -> str:
        return ""
