"""``zero``: reads return zeroes, writes and discards are silently dropped (``dm-zero``).

It does not pass crypto: the series' first version let it, and dropped that because a read
would return plaintext zeroes while claiming to honour the encryption context. With no
capability here, a bio with a context is handled by the fallback above, like the kernel does.
"""

from __future__ import annotations

from fuseblk.bio import Bio, BioOp
from fuseblk.dm.targets.base import Target, TargetEnv
from fuseblk.dm.targets.ctr_args import expect_count


class ZeroTarget(Target):
    name = "zero"
    version = (1, 2, 0)
    passes_crypto = False

    def __init__(self, env: TargetEnv, begin: int, length: int, args: list[str]) -> None:
        super().__init__(env, begin, length, args)
        expect_count(args, (0,), "zero takes no arguments")

    async def map(self, bio: Bio) -> None:
        if bio.op is BioOp.READ:
            assert bio.buf is not None
            bio.buf[:] = bytes(bio.length)
        # WRITE, DISCARD, FLUSH: nothing to store, nothing to fail.

    def table_args(self, show_keys: bool = False) -> str:
        return ""
