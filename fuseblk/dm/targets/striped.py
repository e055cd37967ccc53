"""``striped <#stripes> <chunk_sectors> [<dev> <offset>]+``: RAID0 over several devices (``dm-stripe``).

Chunk ``c`` of the target lives on stripe ``c % stripes`` at chunk ``c // stripes`` of that
stripe's area. Validation follows dm-stripe: a positive stripe count and chunk size (any size,
not only powers of two, as since Linux 4.x), the target length divisible by the stripe count
and the per-stripe width divisible by the chunk size, and exactly two arguments per stripe.
At most 256 stripes (``MAX_STRIPES``): dm-stripe is bounded only by the size of the ioctl
buffer that carries the table.

It passes crypto (upstream since ~6.15): striping moves whole sectors and never touches data.
A chunk boundary that falls inside a data unit of a bio's context cannot be split and fails
with EINVAL (the DUN can only advance by whole data units).
"""

from __future__ import annotations

import errno
from functools import partial
from typing import TYPE_CHECKING

from fuseblk import SECTOR_SIZE
from fuseblk.bio import Bio, BioOp
from fuseblk.dm.fanout import CONCURRENT_MIN_BYTES, fan_out
from fuseblk.dm.targets.base import Target, TargetArgError, TargetEnv
from fuseblk.dm.targets.ctr_args import get_device_area, parse_sector, parse_uint
from fuseblk.errors import FuseblkError

if TYPE_CHECKING:
    from fuseblk.device import BlockDevice

MAX_STRIPES = 256


class _Stripe:
    __slots__ = ("dev", "start", "errors")

    def __init__(self, dev: BlockDevice, start: int) -> None:
        self.dev = dev
        self.start = start  # sectors
        self.errors = 0


class StripedTarget(Target):
    name = "striped"
    version = (1, 7, 0)
    passes_crypto = True
    flush_to_devices = True

    def __init__(self, env: TargetEnv, begin: int, length: int, args: list[str]) -> None:
        super().__init__(env, begin, length, args)
        if len(args) < 2:
            raise TargetArgError(
                "arguments", "<#stripes> <chunk_sectors> [<dev> <offset>]+", " ".join(args)
            )
        self.nstripes = parse_uint(args[0], "#stripes", lo=1, hi=MAX_STRIPES)
        self.chunk_sectors = parse_uint(args[1], "chunk_sectors", lo=1)
        sectors = length // SECTOR_SIZE
        if sectors % self.nstripes:
            raise TargetArgError(
                "length", f"a multiple of the {self.nstripes} stripes", str(sectors)
            )
        width = sectors // self.nstripes
        if width % self.chunk_sectors:
            raise TargetArgError(
                "length",
                f"a multiple of #stripes * chunk_sectors = {self.nstripes * self.chunk_sectors}",
                str(sectors),
            )
        if len(args) != 2 + 2 * self.nstripes:
            raise TargetArgError(
                "arguments", f"{self.nstripes} <dev> <offset> pairs", " ".join(args[2:])
            )
        self.chunk = self.chunk_sectors * SECTOR_SIZE
        width_bytes = width * SECTOR_SIZE
        self.stripes: list[_Stripe] = []
        for i in range(self.nstripes):
            start = parse_sector(args[3 + 2 * i], f"stripe {i} offset")
            dev = get_device_area(env, args[2 + 2 * i], start, width_bytes, f"stripe {i} device")
            self.stripes.append(_Stripe(dev, start))

    def map_offset(self, offset: int) -> tuple[int, int]:
        """``stripe_map_sector``: (stripe index, byte offset on that stripe's device)."""
        chunk, within = divmod(offset, self.chunk)
        row, stripe = divmod(chunk, self.nstripes)
        return stripe, self.stripes[stripe].start * SECTOR_SIZE + row * self.chunk + within

    async def map(self, bio: Bio) -> None:
        pieces: list[tuple[_Stripe, Bio]] = []
        if bio.op is BioOp.FLUSH:  # num_flush_bios = #stripes: one per distinct device
            seen: set[int] = set()
            for s in self.stripes:
                if id(s.dev) not in seen:
                    seen.add(id(s.dev))
                    pieces.append((s, bio))
        pos = 0
        while pos < bio.length:
            stripe, dev_off = self.map_offset(bio.offset + pos)
            n = min(bio.length - pos, self.chunk - (bio.offset + pos) % self.chunk)
            piece = bio if n == bio.length else bio.slice(pos, n)
            pieces.append((self.stripes[stripe], piece.remap(dev_off)))
            pos += n
        calls = [partial(self._submit, s, piece) for s, piece in pieces]
        await fan_out(calls, concurrent=bio.length >= CONCURRENT_MIN_BYTES)

    async def _submit(self, stripe: _Stripe, bio: Bio) -> None:
        try:
            await self.submit_bio(stripe.dev, bio)
        except FuseblkError as err:
            if err.errno == errno.EIO:  # stripe_end_io counts EIO per stripe: 'D' in status
                stripe.errors += 1
            raise

    def table_args(self, show_keys: bool = False) -> str:
        legs = " ".join(f"{s.dev.name} {s.start}" for s in self.stripes)
        return f"{self.nstripes} {self.chunk_sectors} {legs}"

    def status(self) -> str:
        names = " ".join(s.dev.name for s in self.stripes)
        health = "".join("D" if s.errors else "A" for s in self.stripes)
        return f"{self.nstripes} {names} 1 {health}"

    def devices(self) -> list[BlockDevice]:
        return [s.dev for s in self.stripes]
