"""``flakey <dev> <offset> <up secs> <down secs> [<#features> [<feature args>]]`` (``dm-flakey``).

Linear while "up"; misbehaves while "down". The cycle starts when the target is constructed
(the kernel's ``jiffies`` at ctr) and repeats every ``up + down`` whole seconds. Features
(current kernels): ``error_reads``, ``drop_writes``, ``error_writes``, ``corrupt_bio_byte <Nth>
<r|w> <value> <flags>``, ``random_read_corrupt <p>``, ``random_write_corrupt <p>`` with ``p`` out
of 1000000000. With no features at all, both reads and writes fail while down (the kernel sets
``error_reads`` and ``error_writes`` and prints them in the table). FLUSH and DISCARD are
writes here, as ``bio_data_dir`` says: dropped or failed with them.

Our bios carry no request flags, so ``corrupt_bio_byte``'s flag mask matches only when it is 0.
A corrupted write goes to a copy of the data (the caller's buffer is never modified); a
corrupted read is changed after the device filled it, i.e. after decryption, as ``end_io`` does.

It passes crypto (Linux 5.12): the context travels with the remapped bio.
The clock is the table environment's (monotonic time; tests move it by hand).
"""

from __future__ import annotations

import errno
import random
from collections.abc import Callable
from typing import TYPE_CHECKING

from fuseblk import SECTOR_SIZE
from fuseblk.bio import Bio, BioOp
from fuseblk.dm.targets.base import Target, TargetArgError, TargetEnv
from fuseblk.dm.targets.ctr_args import UINT_MAX, get_device_area, parse_sector, parse_uint
from fuseblk.errors import FuseblkError

if TYPE_CHECKING:
    from fuseblk.device import BlockDevice

PROBABILITY_BASE = 1_000_000_000
MAX_FEATURE_ARGS = 11


class FlakeyTarget(Target):
    name = "flakey"
    version = (1, 5, 0)
    passes_crypto = True

    def __init__(self, env: TargetEnv, begin: int, length: int, args: list[str]) -> None:
        super().__init__(env, begin, length, args)
        if len(args) < 4:
            raise TargetArgError(
                "arguments",
                "<dev> <offset> <up interval> <down interval> [<#features> ...]",
                " ".join(args),
            )
        self.clock: Callable[[], float] = env.clock
        self.rng = random.Random()
        self.start_time = self.clock()
        self.start = parse_sector(args[1])
        self.up = parse_uint(args[2], "up interval")
        self.down = parse_uint(args[3], "down interval")
        if self.up + self.down == 0:
            raise TargetArgError(
                "down interval", "a total (up + down) interval above zero", args[3]
            )
        if self.up + self.down > UINT_MAX:
            raise TargetArgError("down interval", "up + down without overflow", args[3])
        self.error_reads = self.drop_writes = self.error_writes = False
        self.corrupt_byte = 0  # 1-based; 0 = off
        self.corrupt_rw: BioOp | None = None
        self.corrupt_value = 0
        self.corrupt_flags = 0
        self.random_read_corrupt = 0
        self.random_write_corrupt = 0
        self._parse_features(args[4:])
        self.dev = get_device_area(env, args[0], self.start, length)
        self._base = self.start * SECTOR_SIZE

    def _parse_features(self, rest: list[str]) -> None:
        count = parse_uint(rest[0], "#features", hi=MAX_FEATURE_ARGS) if rest else 0
        if len(rest) != count + (1 if rest else 0):
            raise TargetArgError(
                "#features", f"exactly {count} feature arguments", " ".join(rest[1:])
            )
        it = iter(rest[1:])
        for word in it:
            name = word.lower()
            if name in ("error_reads", "drop_writes", "error_writes"):
                if getattr(self, name):  # dynamic: the feature's name is its flag's attribute
                    raise TargetArgError(f"feature {name}", "no duplicate", word)
                setattr(self, name, True)
                if self.drop_writes and self.error_writes:
                    raise TargetArgError(
                        f"feature {name}", "not both drop_writes and error_writes", word
                    )
            elif name == "corrupt_bio_byte":
                params = [next(it, None) for _ in range(4)]
                if self.corrupt_byte or None in params:
                    raise TargetArgError(
                        "feature corrupt_bio_byte",
                        "once, with <Nth_byte> <r|w> <value> <flags>",
                        word,
                    )
                nth, rw, value, flags = (p for p in params if p is not None)
                self.corrupt_byte = parse_uint(nth, "corrupt_bio_byte Nth_byte", lo=1)
                if rw.lower() not in ("r", "w"):
                    raise TargetArgError("corrupt_bio_byte direction", "r or w", rw)
                self.corrupt_rw = BioOp.READ if rw.lower() == "r" else BioOp.WRITE
                self.corrupt_value = parse_uint(value, "corrupt_bio_byte value", hi=255)
                self.corrupt_flags = parse_uint(flags, "corrupt_bio_byte flags")
            elif name in ("random_read_corrupt", "random_write_corrupt"):
                param = next(it, None)
                # dynamic: the feature's name is the attribute holding its probability
                if getattr(self, name) or param is None:
                    raise TargetArgError(f"feature {name}", "once, with a probability", word)
                setattr(self, name, parse_uint(param, f"{name} probability", hi=PROBABILITY_BASE))
            else:
                raise TargetArgError(
                    "feature",
                    "error_reads, drop_writes, error_writes, corrupt_bio_byte, "
                    "random_read_corrupt or random_write_corrupt",
                    word,
                )
        corrupts_writes = (
            self.corrupt_byte and self.corrupt_rw is BioOp.WRITE
        ) or self.random_write_corrupt
        corrupts_reads = (
            self.corrupt_byte and self.corrupt_rw is BioOp.READ
        ) or self.random_read_corrupt
        if self.drop_writes and corrupts_writes:
            raise TargetArgError(
                "feature drop_writes",
                "no random_write_corrupt or corrupt_bio_byte w",
                "drop_writes",
            )
        if self.error_writes and corrupts_writes:
            raise TargetArgError(
                "feature error_writes",
                "no random_write_corrupt or corrupt_bio_byte w",
                "error_writes",
            )
        if self.error_reads and corrupts_reads:
            raise TargetArgError(
                "feature error_reads", "no random_read_corrupt or corrupt_bio_byte r", "error_reads"
            )
        if not (
            self.corrupt_byte
            or self.error_reads
            or self.drop_writes
            or self.error_writes
            or self.random_read_corrupt
            or self.random_write_corrupt
        ):
            self.error_reads = self.error_writes = True

    def is_down(self) -> bool:
        elapsed = int(self.clock() - self.start_time)
        return elapsed % (self.up + self.down) >= self.up

    def _event(self, name: str) -> None:
        self._count(f"flakey_{name}")

    def _corrupt_fixed(self, op: BioOp) -> bool:
        return bool(self.corrupt_byte) and self.corrupt_rw is op and self.corrupt_flags == 0

    def _chance(self, probability: int) -> bool:
        return probability > 0 and self.rng.randrange(PROBABILITY_BASE) < probability

    def _corrupt(self, buf: memoryview | bytearray, fixed: bool, randomly: bool) -> None:
        if fixed and len(buf) >= self.corrupt_byte:
            buf[self.corrupt_byte - 1] = self.corrupt_value
        if randomly and len(buf):
            buf[self.rng.randrange(len(buf))] = self.rng.randrange(256)

    async def map(self, bio: Bio) -> None:
        remapped = bio if bio.op is BioOp.FLUSH else bio.remap(self._base + bio.offset)
        if not self.is_down():
            await self.submit_bio(self.dev, remapped)
            return
        if bio.op is BioOp.READ:
            if self.error_reads:
                self._event("errored")
                raise FuseblkError(errno.EIO, "flakey: read while down")
            await self.submit_bio(self.dev, remapped)
            fixed = self._corrupt_fixed(BioOp.READ)
            randomly = self._chance(self.random_read_corrupt)
            if fixed or randomly:
                assert remapped.buf is not None
                self._corrupt(remapped.buf, fixed, randomly)
                self._event("corrupted")
            return
        if self.drop_writes:
            self._event("dropped")
            return
        if self.error_writes:
            self._event("errored")
            raise FuseblkError(errno.EIO, f"flakey: {bio.op.value} while down")
        if bio.op is BioOp.WRITE:
            fixed = self._corrupt_fixed(BioOp.WRITE)
            randomly = self._chance(self.random_write_corrupt)
            if fixed or randomly:
                assert remapped.buf is not None
                copy = bytearray(remapped.buf)  # the clone: never modify the caller's buffer
                self._corrupt(copy, fixed, randomly)
                self._event("corrupted")
                remapped = remapped.with_buf(copy)
        await self.submit_bio(self.dev, remapped)

    def table_args(self, show_keys: bool = False) -> str:
        features: list[str] = []
        if self.error_reads:
            features.append("error_reads")
        if self.drop_writes:
            features.append("drop_writes")
        elif self.error_writes:
            features.append("error_writes")
        if self.corrupt_byte:
            rw = "w" if self.corrupt_rw is BioOp.WRITE else "r"
            features.append(
                f"corrupt_bio_byte {self.corrupt_byte} {rw} {self.corrupt_value} {self.corrupt_flags}"
            )
        if self.random_read_corrupt:
            features.append(f"random_read_corrupt {self.random_read_corrupt}")
        if self.random_write_corrupt:
            features.append(f"random_write_corrupt {self.random_write_corrupt}")
        nargs = sum(len(f.split()) for f in features)
        text = f"{self.dev.name} {self.start} {self.up} {self.down} {nargs}"
        return " ".join([text, *features])

    def devices(self) -> list[BlockDevice]:
        return [self.dev]
