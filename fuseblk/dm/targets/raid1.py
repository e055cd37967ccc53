"""raid1: mirror the target's range onto several legs, and keep serving when legs fail.

Table line (simpler than the kernel's dm-raid, which also takes metadata devices and region
sizes)::

    raid1 <#legs> <dev> <offset> [<dev> <offset>]... [<#features> [nosync]]

Offsets are 512-byte sectors; a target has at most 32 legs (``MAX_LEGS``, hot-added ones
included). Without ``nosync`` every leg after the first is resynchronised from
the first when the table goes live (dm-raid's initial resync); with it the legs are trusted to
be identical already.

I/O:

- Writes (and discards, flushes) go to every leg that is not failed, concurrently. A leg that
  fails with a media error (EIO, ENXIO, ENODEV) is marked failed and the write still succeeds if
  an in-sync leg took it; when no in-sync leg did, EIO.
- Reads come from in-sync legs, round robin. A media error marks the leg failed and the read is
  retried on the next leg; with no in-sync leg left, EIO.
- Bios keep their encryption context (the target passes crypto through): each leg encrypts with
  its hardware or through the fallback, and the ciphertext is the same either way, so the legs
  hold identical bytes. That is why resync copies raw bytes (bios without a context).

Resync runs in the background, one region at a time, under a range lock that writes take too,
so a region is never copied across a write that lands in it: the copy cannot overwrite newer
data. A leg being resynchronised receives writes but serves no reads until it is in sync.

Degraded writes. The array's **width** is the number of legs it is meant to have: the leg count
of the table line, raised by each hot-add that makes the set larger than the width, never
lowered (failing or removing a leg leaves a hole that only an ``add`` fills; a table with
fewer legs is how an array is made narrower). A write or discard that succeeds on fewer legs
than the width, for whatever reason (a leg failed earlier, removed, or erroring during this
very write), is a degraded write: it bumps the mapped device's ``degraded_writes`` counter and
adds its length to ``degraded_bytes``. A leg being resynchronised takes writes, so it counts as
reached; flushes carry no data and are not counted.

Held devices. Every leg, failed ones included, stays in :meth:`Raid1Target.held_devices` until
it is removed: the table still names it (``dmsetup table`` lists it), so its image stays
attached. I/O, capabilities and key eviction use :meth:`Raid1Target.devices`, the legs that are
not failed.

Messages (legs are numbered from 0 in table order):
``fail <leg>`` marks a leg failed; ``remove <leg>`` drops a failed leg (EBUSY otherwise);
``add <dev> <offset>`` hot-adds a leg and resynchronises it: its inline-encryption capabilities
must include every capability the legs had when the table was loaded (what the mapped device
promised to the layers above), else EINVAL; ``resync`` resynchronises every in-sync leg from the
first one.

Status: ``<#legs> <health> <in-sync sectors>/<total sectors> <action> <width> <state>`` with
health ``A`` (in sync), ``a`` (resynchronising), ``D`` (failed) per leg; action ``idle``,
``resync`` (copying) or ``frozen`` (legs await a resync that is not running: suspended, or no
in-sync source); state ``degraded`` while fewer legs than the width take writes (a write now
misses a leg), else ``optimal``.
"""

from __future__ import annotations

import enum
import errno
import logging
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import trio

from fuseblk import SECTOR_SHIFT
from fuseblk.bio import Bio, BioOp
from fuseblk.capabilities import CryptoCapabilities, has_capabilities, intersect
from fuseblk.dm.fanout import CONCURRENT_MIN_BYTES, fan_out
from fuseblk.dm.targets.base import Target, TargetArgError, TargetEnv
from fuseblk.dm.targets.ctr_args import get_device_at, read_decimal
from fuseblk.errors import FuseblkError
from fuseblk.rangelock import RangeLock

if TYPE_CHECKING:
    from fuseblk.device import BlockDevice

log = logging.getLogger(__name__)

REGION_SIZE = 1 << 20  # bytes copied per resync step (and locked against writes meanwhile)
MAX_LEGS = 32
MEDIA_ERRNOS = frozenset({errno.EIO, errno.ENXIO, errno.ENODEV})


class LegState(enum.Enum):
    IN_SYNC = "A"
    SYNCING = "a"
    FAILED = "D"


@dataclass(eq=False)
class Leg:
    dev: BlockDevice
    offset: int  # bytes
    state: LegState
    synced: int  # bytes from the start known identical to the in-sync legs

    def describe(self) -> str:
        return f"{self.dev.name} {self.offset >> SECTOR_SHIFT}"


class Raid1Target(Target):
    name = "raid1"
    version = (1, 0, 0)
    passes_crypto = True

    def __init__(self, env: TargetEnv, begin: int, length: int, args: list[str]) -> None:
        super().__init__(env, begin, length, args)
        self._env = env  # for hot-adding legs later
        if not args:
            raise TargetArgError("#legs", f"a leg count from 1 to {MAX_LEGS}", None)
        count = read_decimal(args[0], MAX_LEGS)
        if not count:
            raise TargetArgError("#legs", f"a leg count from 1 to {MAX_LEGS}", args[0])
        leg_args, rest = args[1 : 1 + 2 * count], args[1 + 2 * count :]
        if len(leg_args) < 2 * count:
            missing = "device" if len(leg_args) % 2 == 0 else "offset"
            raise TargetArgError(
                f"leg {len(leg_args) // 2} {missing}", f"{count} <dev> <offset> pairs", None
            )
        self.nosync = self._parse_features(rest)
        self.width = count  # legs the array is meant to have (see the module docstring)
        self.legs: list[Leg] = []
        for i in range(count):
            dev, offset = get_device_at(
                env, leg_args[2 * i], leg_args[2 * i + 1], length, f"leg {i} offset"
            )
            state = LegState.IN_SYNC if self.nosync or i == 0 else LegState.SYNCING
            self.legs.append(Leg(dev, offset, state, length if state is LegState.IN_SYNC else 0))
        # What the mapped device promises upward: the legs' common capabilities at load time.
        caps = CryptoCapabilities.everything()
        for leg in self.legs:
            caps = intersect(caps, leg.dev.crypto_profile.caps if leg.dev.crypto_profile else None)
        self.caps = caps
        self._lock = RangeLock()
        self._next_read = 0
        self._resync_scope: trio.CancelScope | None = None
        self._resync_done = trio.Event()
        self._resync_done.set()
        self._live = False

    @staticmethod
    def _parse_features(rest: list[str]) -> bool:
        if not rest:
            return False
        if read_decimal(rest[0], len(rest) - 1) != len(rest) - 1:
            raise TargetArgError(
                "#features", f"the number of features that follow ({len(rest) - 1})", rest[0]
            )
        for feature in rest[1:]:
            if feature != "nosync":
                raise TargetArgError(f"feature {feature!r}", "nosync", feature)
        return len(rest) > 1

    # ---- dmsetup interface -------------------------------------------------------------------

    def table_args(self, show_keys: bool = False) -> str:
        legs = " ".join(leg.describe() for leg in self.legs)
        return f"{len(self.legs)} {legs}" + (" 1 nosync" if self.nosync else "")

    def devices(self) -> list[BlockDevice]:
        return [leg.dev for leg in self._writable_legs()]

    def held_devices(self) -> list[BlockDevice]:
        return [leg.dev for leg in self.legs]

    def crypto_requirement(self) -> CryptoCapabilities:
        """Every leg keeps what the array promised at load, as a hot-added leg must."""
        return self.caps

    def _writable_legs(self) -> list[Leg]:
        return [leg for leg in self.legs if leg.state is not LegState.FAILED]

    def status(self) -> str:
        health = "".join(leg.state.value for leg in self.legs)
        syncing = [leg.synced for leg in self.legs if leg.state is LegState.SYNCING]
        synced = min(syncing, default=self.length)
        if self._resync_scope is not None:
            action = "resync"
        elif syncing:
            action = "frozen"
        else:
            action = "idle"
        state = "degraded" if len(self._writable_legs()) < self.width else "optimal"
        return (
            f"{len(self.legs)} {health} {synced >> SECTOR_SHIFT}/{self.length >> SECTOR_SHIFT} "
            f"{action} {self.width} {state}"
        )

    async def message(self, args: list[str]) -> str:
        verb = args[0] if args else ""
        if verb in ("fail", "remove") and len(args) == 2:
            leg = self._leg_arg(args[1])
            if verb == "fail":
                self._fail(leg, "failed by message")
            else:
                self._remove(leg)
        elif verb == "add" and len(args) == 3:
            await self._add(args[1], args[2])
        elif verb == "resync" and len(args) == 1:
            self._resync_all()
        else:
            raise FuseblkError(
                errno.EINVAL,
                f"raid1: unrecognised message {' '.join(args)!r} "
                "(fail <leg>, remove <leg>, add <dev> <offset>, resync)",
            )
        return ""

    def _leg_arg(self, text: str) -> Leg:
        index = read_decimal(text, len(self.legs) - 1)
        if index is None:
            raise FuseblkError(
                errno.EINVAL, f"raid1: no leg {text!r} (legs are 0..{len(self.legs) - 1})"
            )
        return self.legs[index]

    def _remove(self, leg: Leg) -> None:
        if leg.state is not LegState.FAILED:
            raise FuseblkError(
                errno.EBUSY, f"raid1: leg {self.legs.index(leg)} is active: fail it first"
            )
        if len(self.legs) == 1:
            raise FuseblkError(errno.EBUSY, "raid1: cannot remove the only leg")
        self.legs.remove(leg)

    async def _add(self, ref: str, offset_text: str) -> None:
        if len(self.legs) >= MAX_LEGS:
            raise FuseblkError(errno.EINVAL, f"raid1: add: at most {MAX_LEGS} legs")
        try:
            dev, offset = get_device_at(self._env, ref, offset_text, self.length, "new leg offset")
        except TargetArgError as exc:
            raise FuseblkError(errno.EINVAL, f"raid1: add: {exc}") from None
        new_caps = dev.crypto_profile.caps if dev.crypto_profile else CryptoCapabilities.nothing()
        if not has_capabilities(new_caps, self.caps):
            raise FuseblkError(
                errno.EINVAL,
                f"raid1: inline encryption capabilities of the new leg {ref} ({new_caps.describe()}) "
                f"are more restrictive than the device's ({self.caps.describe()})",
            )
        if not any(leg.state is LegState.IN_SYNC for leg in self.legs):
            raise FuseblkError(errno.EIO, "raid1: no in-sync leg to resynchronise a new leg from")
        self.legs.append(Leg(dev, offset, LegState.SYNCING, 0))
        self.width = max(self.width, len(self.legs))
        self._start_resync()

    def _resync_all(self) -> None:
        in_sync = [leg for leg in self.legs if leg.state is LegState.IN_SYNC]
        if not in_sync:
            raise FuseblkError(errno.EIO, "raid1: no in-sync leg to resynchronise from")
        for leg in in_sync[1:]:
            leg.state, leg.synced = LegState.SYNCING, 0
        self._start_resync()

    # ---- lifecycle ---------------------------------------------------------------------------

    async def resume(self) -> None:
        self._live = True
        self._start_resync()

    async def presuspend(self) -> None:
        self._live = False
        await self._stop_resync()

    async def destroy(self) -> None:
        self._live = False
        await self._stop_resync()

    async def wait_resync(self) -> None:
        """Return once no resync is running (finished, or stopped for lack of a source)."""
        await self._resync_done.wait()

    # ---- I/O ---------------------------------------------------------------------------------

    async def map(self, bio: Bio) -> None:
        if bio.op is BioOp.READ:
            await self._read(bio)
        elif bio.op is BioOp.FLUSH:
            await self._to_all_legs(bio)
        else:
            async with self._lock.locked(bio.offset, bio.end):
                await self._to_all_legs(bio)

    def _fail(self, leg: Leg, why: str) -> None:
        if leg.state is LegState.FAILED:
            return
        leg.state = LegState.FAILED
        self._count("leg_failures")
        log.warning("raid1: leg %s failed (%s)", leg.describe(), why)

    def _pick_reader(self, tried: set[int]) -> Leg | None:
        n = len(self.legs)
        for k in range(n):
            i = (self._next_read + k) % n
            leg = self.legs[i]
            if leg.state is LegState.IN_SYNC and id(leg) not in tried:
                self._next_read = (i + 1) % n
                return leg
        return None

    async def _read(self, bio: Bio) -> None:
        tried: set[int] = set()
        while (leg := self._pick_reader(tried)) is not None:
            tried.add(id(leg))
            try:
                await self.submit_bio(leg.dev, bio.remap(leg.offset + bio.offset))
                return
            except FuseblkError as exc:
                if exc.errno not in MEDIA_ERRNOS:
                    raise
                self._fail(leg, f"read: {exc}")
        raise FuseblkError(errno.EIO, "raid1: no in-sync leg left to read from")

    async def _to_all_legs(self, bio: Bio) -> None:
        """Send a write, discard or flush to every leg that is not failed, concurrently."""
        legs = self._writable_legs()
        errors: dict[int, FuseblkError] = {}

        async def one(leg: Leg) -> None:
            lower = bio if bio.op is BioOp.FLUSH else bio.remap(leg.offset + bio.offset)
            try:
                await self.submit_bio(leg.dev, lower)
            except FuseblkError as exc:
                errors[id(leg)] = exc

        # one() keeps each leg's error: fan_out only decides whether the legs overlap (a nursery
        # costs more than a small write gains from it)
        await fan_out([partial(one, leg) for leg in legs], bio.length >= CONCURRENT_MIN_BYTES)
        for exc in errors.values():
            if exc.errno not in MEDIA_ERRNOS:
                raise exc  # the bio itself is wrong (alignment, no crypto support): not the leg
        done = [leg for leg in legs if id(leg) not in errors and leg.state is LegState.IN_SYNC]
        for leg in legs:
            if id(leg) in errors:
                self._fail(leg, f"{bio.op.value}: {errors[id(leg)]}")
        if not done:
            raise FuseblkError(errno.EIO, f"raid1: {bio.op.value} failed on every in-sync leg")
        if bio.op is not BioOp.FLUSH and len(legs) - len(errors) < self.width:
            self._count("degraded_writes")
            self._count("degraded_bytes", bio.length)

    # ---- resync ------------------------------------------------------------------------------

    def _start_resync(self) -> None:
        if not self._live or self._resync_scope is not None:
            return
        if not any(leg.state is LegState.SYNCING for leg in self.legs):
            return
        self._resync_scope = trio.CancelScope()
        self._resync_done = trio.Event()
        # A system task: the target has no nursery of its own, and resync must outlive the
        # message or resume call that started it. It catches everything (a system task must not
        # raise) and is cancelled by presuspend/destroy.
        trio.lowlevel.spawn_system_task(self._resync_main, self._resync_scope, name="raid1-resync")

    async def _stop_resync(self) -> None:
        if self._resync_scope is not None:
            self._resync_scope.cancel()
        await self._resync_done.wait()

    async def _resync_main(self, scope: trio.CancelScope) -> None:
        try:
            with scope:
                while (
                    leg := next((x for x in self.legs if x.state is LegState.SYNCING), None)
                ) is not None:
                    await self._recover(leg)
        except FuseblkError as exc:
            log.error("raid1: resync stopped: %s", exc)
        except Exception:
            log.exception("raid1: resync crashed")
        finally:
            self._resync_scope = None
            self._resync_done.set()

    async def _recover(self, leg: Leg) -> None:
        """Copy raw bytes from in-sync legs onto ``leg``, region by region."""
        while leg.state is LegState.SYNCING and leg.synced < self.length:
            start = leg.synced
            n = min(REGION_SIZE, self.length - start)
            buf = bytearray(n)
            async with self._lock.locked(start, start + n):
                await self._read(Bio.read(start, buf))  # no context: the stored ciphertext
                if leg.state is not LegState.SYNCING:
                    return
                try:
                    await self.submit_bio(leg.dev, Bio.write(leg.offset + start, buf))
                except FuseblkError as exc:
                    if exc.errno not in MEDIA_ERRNOS:
                        raise
                    self._fail(leg, f"resync: {exc}")
                    return
            leg.synced = start + n
            self._count("resync_bytes", n)
        if leg.state is LegState.SYNCING:
            leg.state = LegState.IN_SYNC
            log.info("raid1: leg %s in sync", leg.describe())
