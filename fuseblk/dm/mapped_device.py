"""A mapped device (``struct mapped_device``): a live table, an inactive one, a crypto profile.

``submit`` is dm core's ``dm_submit_bio``: the suspend gate, a range check, blk-crypto's
preparation against this device's own profile, then the split at target boundaries and
``target.map`` for every piece. Tables are swapped only while suspended, so a bio sees one
table from start to end.

Crypto, as in the kernel: the profile is a passthrough (0-slot) profile whose capabilities are
those the live table could offer when it was loaded. A context it does not support is handled
by the software fallback **at this device**, and the table sees plain data. With
``fallback_per_target`` (``fallback=target``, beyond the kernel) the device accepts every
context and only the pieces mapped to targets that do not pass crypto fall back here; pieces
for pass-through targets keep their context, and each device below falls back for itself if it
must. The ciphertext on disk is the same either way.

Eviction goes further than the kernel: a key is evicted from every device this one ever sent
bios to (not only the live table's) and from the fallback.
"""

from __future__ import annotations

import errno
from functools import partial
from typing import TYPE_CHECKING

import trio

from fuseblk import SECTOR_SIZE
from fuseblk.bio import Bio, BioOp
from fuseblk.blkcrypto import submit as blk_crypto
from fuseblk.blkcrypto.fallback import get_fallback
from fuseblk.blkcrypto.keyslot_manager import CryptoProfile
from fuseblk.capabilities import CryptoCapabilities, has_capabilities
from fuseblk.dm.fanout import CONCURRENT_MIN_BYTES, fan_out
from fuseblk.dm.suspend_gate import SuspendGate
from fuseblk.dm.table import DEFAULT_BLOCK_SIZE, Table
from fuseblk.errors import FuseblkError
from fuseblk.stats import Counters

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from fuseblk.ciphers import DataUnitCipher
    from fuseblk.device import BlockDevice
    from fuseblk.dm.targets import Target
    from fuseblk.key import BlkCryptoKey

MORE_RESTRICTIVE = (
    "Inline encryption capabilities of new DM table were more restrictive than the old table's"
)


class MappedDevice:
    """A :class:`~fuseblk.device.BlockDevice` whose bios are mapped by a table of targets."""

    def __init__(self, name: str, fallback_per_target: bool = False) -> None:
        self._name = name
        self.fallback_per_target = fallback_per_target
        self.counters = Counters()
        self.live: Table | None = None
        self.inactive: Table | None = None
        self.open_count = 0
        self.event_nr = 0
        self._profile: CryptoProfile | None = None
        self._gate = SuspendGate()
        self._lock = trio.Lock()  # md->suspend_lock: one suspend/resume/swap at a time
        self._touched: dict[int, BlockDevice] = {}  # every device a live table ever reached
        self._unprepared = _Unprepared(self)
        # key -> does the live profile support it: a dict hit is ~0.25 us cheaper per context bio
        # than profile.supports() (tools/bench_dm_overhead.py, "with context": 5.96 vs 6.22 us).
        # Cleared whenever the profile's capabilities change.
        self._supported: dict[BlkCryptoKey, bool] = {}
        self.removed = False

    # -- BlockDevice ----------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    def rename(self, new: str) -> None:
        """Called by the manager, which owns the names (``dm_hash_rename``)."""
        self._name = new
        if self._profile is not None:
            self._profile.name = new

    @property
    def size(self) -> int:
        return self.live.size if self.live is not None else 0

    @property
    def crypto_profile(self) -> CryptoProfile | None:
        return self._profile

    @property
    def block_size(self) -> int:
        return self.live.block_size if self.live is not None else DEFAULT_BLOCK_SIZE

    @property
    def suspended(self) -> bool:
        return self._gate.suspended

    async def submit(self, bio: Bio) -> None:
        waited = await self._gate.enter()
        c = self.counters
        try:
            if waited:
                c.add("waited_for_resume")
            c.add("bios")
            op = bio.op
            if op is BioOp.READ:
                c.add("reads")
            elif op is BioOp.WRITE:
                c.add("writes")
            elif op is BioOp.FLUSH:
                c.add("flushes")
                await self._map(bio)
                return
            else:
                c.add("discards")
            c.add("bytes", bio.length)
            if bio.offset % SECTOR_SIZE or bio.length % SECTOR_SIZE:
                raise FuseblkError(
                    errno.EINVAL,
                    f"{self._name}: I/O at {bio.offset}+{bio.length} is not 512-byte aligned",
                )
            if bio.end > self.size:
                raise FuseblkError(
                    errno.EIO,
                    f"{self._name}: attempt to access beyond end of device ({bio.end} > {self.size})",
                )
            ctx = bio.crypt_ctx
            if ctx is None:
                await self._map(bio)
                return
            if op.has_data:
                ctx.check_aligned(0, bio.length)
            supported = self._supported.get(ctx.key)
            if supported is None:
                profile = self._profile
                supported = profile is not None and profile.supports(ctx.key.config)
                if len(self._supported) >= 4096:  # many short-lived keys: start over
                    self._supported.clear()
                self._supported[ctx.key] = supported
            if supported:
                c.add("inline_bios")
                c.add("inline_bytes", bio.length)
                await self._map(bio)
            elif self.fallback_per_target:
                await self._map(bio, per_target_fallback=True)
            else:
                c.add("fallback_bios")
                c.add("fallback_bytes", bio.length)
                await get_fallback().submit(self._unprepared, bio)
        except FuseblkError:
            c.add("errors")
            raise
        finally:
            self._gate.leave()

    # -- mapping ----------------------------------------------------------------------------------

    async def _map(self, bio: Bio, per_target_fallback: bool = False) -> None:
        """``__split_and_process_bio`` for a bio already admitted and prepared."""
        table = self.live
        if bio.op is BioOp.FLUSH:
            if table is not None:
                await self._flush(table)
            return
        if table is None:
            raise FuseblkError(errno.EIO, f"{self._name}: device has no table")
        targets = table.targets
        if len(targets) == 1:  # the hot path: no split, target offset == device offset
            await self._map_piece(targets[0], bio, per_target_fallback)
            return
        i = table.index_at(bio.offset)
        target = targets[i]
        if bio.end <= target.begin + target.length:
            piece = Bio(bio.op, bio.offset - target.begin, bio.length, bio.buf, bio.crypt_ctx)
            await self._map_piece(target, piece, per_target_fallback)
            return
        dus = bio.crypt_ctx.key.data_unit_size if bio.crypt_ctx is not None else SECTOR_SIZE
        calls: list[Callable[[], Awaitable[None]]] = []
        pos = bio.offset
        while pos < bio.end:
            target = targets[i]
            if (pos - bio.offset) % dus:
                raise FuseblkError(
                    errno.EINVAL,
                    f"{self._name}: target boundary at sector {pos // SECTOR_SIZE} falls inside a "
                    f"{dus}-byte data unit of the bio",
                )
            n = min(bio.end, target.begin + target.length) - pos
            piece = bio.slice(pos - bio.offset, n).remap(pos - target.begin)
            calls.append(partial(self._map_piece, target, piece, per_target_fallback))
            pos += n
            i += 1
        self.counters.add("splits", len(calls) - 1)
        await fan_out(calls, concurrent=bio.length >= CONCURRENT_MIN_BYTES)

    async def _map_piece(self, target: Target, bio: Bio, per_target_fallback: bool) -> None:
        if per_target_fallback and bio.crypt_ctx is not None:
            if target.passes_crypto:
                self.counters.add("passthrough_bios")
                self.counters.add("passthrough_bytes", bio.length)
            else:
                self.counters.add("fallback_bios")
                self.counters.add("fallback_bytes", bio.length)
                await get_fallback().submit(_TargetDevice(target), bio)
                return
        await target.map(bio)

    async def _flush(self, table: Table) -> None:
        """A FLUSH reaches every device below once, and every target that wants to see it."""
        devices: dict[int, BlockDevice] = {}
        calls: list[Callable[[], Awaitable[None]]] = []
        for target in table.targets:
            if target.flush_to_devices:
                for dev in target.devices():
                    devices.setdefault(id(dev), dev)
            else:
                calls.append(partial(target.map, Bio.flush()))
        calls.extend(partial(blk_crypto.submit_bio, dev, Bio.flush()) for dev in devices.values())
        if calls:
            await fan_out(calls)

    # -- tables, suspend and resume ---------------------------------------------------------------

    def check_capabilities(self, table: Table) -> None:
        """EINVAL if ``table`` would offer less inline encryption than the live table does."""
        old = self._profile.caps if self._profile is not None else None
        if old is None:
            return
        new = table.crypto_caps or CryptoCapabilities.nothing()
        if not has_capabilities(new, old):
            raise FuseblkError(errno.EINVAL, f"{self._name}: {MORE_RESTRICTIVE}")

    async def install(self, table: Table) -> None:
        """Make ``table`` live on a device that has none yet (create = create + load + resume)."""
        async with self._lock:
            await self._swap(table)

    def set_inactive(self, table: Table) -> Table | None:
        """Put ``table`` in the inactive slot; returns the table it replaced (for destruction)."""
        self.check_capabilities(table)
        old, self.inactive = self.inactive, table
        return old

    async def clear_inactive(self) -> None:
        if self.inactive is not None:
            old, self.inactive = self.inactive, None
            await old.destroy()

    async def suspend(self) -> None:
        async with self._lock:
            await self._suspend_locked()

    async def _suspend_locked(self) -> None:
        if self._gate.suspended:
            return
        self._gate.block()
        if self.live is not None:
            for target in self.live.targets:
                await target.presuspend()
        await self._gate.drain()

    async def resume(self) -> None:
        """Swap in the inactive table, if any, and admit I/O again (``do_resume``)."""
        async with self._lock:
            if self.inactive is not None:
                table = self.inactive
                self.check_capabilities(table)
                await self._suspend_locked()
                self.inactive = None
                await self._swap(table)
                self._gate.resume()
            else:
                await self._resume_live_locked()

    async def lift_suspension(self) -> bool:
        """Admit I/O again with the live table, leaving any inactive table loaded.

        For the daemon's shutdown: bios held by a suspend must complete (with the table they
        were submitted against) before the mount can go; True if the device was suspended.
        """
        async with self._lock:
            was_suspended = self._gate.suspended
            await self._resume_live_locked()
            return was_suspended

    async def _resume_live_locked(self) -> None:
        if self._gate.suspended and self.live is not None:
            for target in self.live.targets:
                await target.resume()
        self._gate.resume()

    async def _swap(self, table: Table) -> None:
        """``dm_swap_table`` plus ``dm_update_crypto_profile``; called with the lock, I/O quiesced."""
        old, self.live = self.live, table
        for target in table.targets:
            target.counters = self.counters
        for dev in table.devices():
            self._touched.setdefault(id(dev), dev)
        caps = table.crypto_caps
        self._supported.clear()
        if caps is not None:
            if self._profile is None:
                self._profile = CryptoProfile(caps, 0, ops=_EvictForwarder(self), name=self._name)
            else:  # only ever less restrictive: check_capabilities refused the rest
                self._profile.caps = caps
        self.event_nr += 1
        if old is not None:
            await old.destroy()
        for target in table.targets:
            await target.resume()

    async def shutdown(self) -> None:
        """Removal: wait for in-flight I/O, fail anything still waiting, destroy both tables."""
        async with self._lock:
            await self._suspend_locked()
            self._gate.close()
            self.removed = True
            for table in (self.inactive, self.live):
                if table is not None:
                    await table.destroy()
            self.inactive = self.live = None

    # -- keys --------------------------------------------------------------------------------------

    async def evict_key(self, key: BlkCryptoKey) -> None:
        """Evict ``key`` from every device this one ever reached, and from the fallback.

        Every device is tried even after a failure (``dm_keyslot_evict`` does the same); the first
        error (EBUSY for a key in use) is raised at the end.
        """
        first: FuseblkError | None = None
        if self.live is not None:  # legs hot-added by a target (raid1 ``add``) since the swap
            for dev in self.live.devices():
                self._touched.setdefault(id(dev), dev)
        for dev in list(self._touched.values()):
            try:
                await evict_from_device(dev, key)
            except FuseblkError as err:
                first = first or err
        try:
            await get_fallback().evict_key(key)
        except FuseblkError as err:
            first = first or err
        if first is not None:
            raise first

    def forget_device(self, dev: BlockDevice) -> None:
        """``dev`` was detached: evicting keys no longer needs to reach it."""
        self._touched.pop(id(dev), None)

    def holds(self, dev: BlockDevice) -> bool:
        """Whether the live or inactive table maps onto ``dev`` (``dm_table`` holders)."""
        return any(
            any(d is dev for d in table.devices())
            for table in (self.live, self.inactive)
            if table is not None
        )

    def __repr__(self) -> str:
        return f"MappedDevice({self._name!r}, size={self.size}, live={self.live!r})"


async def evict_from_device(dev: BlockDevice, key: BlkCryptoKey) -> None:
    """``blk_crypto_evict_key`` on one device below: its own profile if it supports the key."""
    if isinstance(dev, MappedDevice):
        await dev.evict_key(key)
        return
    profile = dev.crypto_profile
    if profile is not None and profile.supports(key.config):
        await profile.evict_key(key)


class _EvictForwarder:
    """The passthrough profile's "hardware": eviction walks the devices below (``dm_keyslot_evict``)."""

    def __init__(self, md: MappedDevice) -> None:
        self._md = md

    async def program_key(self, key: BlkCryptoKey, slot: int) -> DataUnitCipher:
        raise FuseblkError(errno.EOPNOTSUPP, "a passthrough profile has no keyslots to program")

    async def evict_key(self, key: BlkCryptoKey, slot: int | None) -> None:
        await self._md.evict_key(key)


class _Unprepared:
    """The mapped device seen from the fallback: ``submit`` maps without crypto preparation."""

    crypto_profile = None

    def __init__(self, md: MappedDevice) -> None:
        self._md = md

    @property
    def name(self) -> str:
        return self._md.name

    @property
    def size(self) -> int:
        return self._md.size

    async def submit(self, bio: Bio) -> None:
        await self._md._map(bio)


class _TargetDevice:
    """One target seen as a device, so the fallback can serve just that target's piece."""

    crypto_profile = None

    def __init__(self, target: Target) -> None:
        self._target = target
        self.name = target.name
        self.size = target.length

    async def submit(self, bio: Bio) -> None:
        await self._target.map(bio)
