"""A mapped device (``struct mapped_device``): a live table, an inactive one, a crypto profile.

``submit`` is dm core's ``dm_submit_bio``: the suspend gate, a range check, then the split at
target boundaries (:mod:`fuseblk.dm.split`) and ``target.map`` for every piece. Tables are
swapped only while suspended, so a bio sees one table from start to end.

Crypto, as in the kernel: the profile is a passthrough (0-slot) profile whose capabilities are
those the live table could offer when it was loaded. Bios reach ``submit`` prepared by the block
layer (:meth:`~fuseblk.blkcrypto.block_layer.BlockLayer.submit_bio`), which decides once between
inline and the fallback: a context the profile does not support was already encrypted in
software on this device's behalf, and the table sees plain data. With ``fallback_per_target``
(``fallback=target``, beyond the kernel) the block layer hands this device every context, and
only the pieces mapped to targets that do not pass crypto fall back here; pieces for
pass-through targets keep their context, and each device below falls back for itself if it must.
The ciphertext on disk is the same either way.

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
from fuseblk.blkcrypto.block_layer import BlockLayer, supports_natively
from fuseblk.blkcrypto.keyslot_manager import CryptoProfile
from fuseblk.capabilities import CryptoCapabilities, has_capabilities
from fuseblk.device import OpenCounter
from fuseblk.dm.fanout import CONCURRENT_MIN_BYTES, fan_out
from fuseblk.dm.split import split_at_targets
from fuseblk.dm.suspend_gate import SuspendGate
from fuseblk.dm.table import DEFAULT_BLOCK_SIZE, Table
from fuseblk.errors import FuseblkError
from fuseblk.stats import Counters

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from fuseblk.ciphers import DataUnitCipher
    from fuseblk.device import BlockDevice
    from fuseblk.dm.targets.base import Target
    from fuseblk.key import BlkCryptoKey

_READ, _WRITE, _FLUSH = BioOp.READ, BioOp.WRITE, BioOp.FLUSH

MORE_RESTRICTIVE = (
    "Inline encryption capabilities of new DM table were more restrictive than the old table's"
)


class MappedDevice(OpenCounter):
    """A :class:`~fuseblk.device.BlockDevice` whose bios are mapped by a table of targets."""

    def __init__(
        self, name: str, block_layer: BlockLayer, fallback_per_target: bool = False
    ) -> None:
        self._name = name
        self._blk = block_layer
        self.fallback_per_target = fallback_per_target
        self.counters = Counters()
        self.live: Table | None = None
        # The live table's logical block size, fixed with it (targets' granularity is set when
        # they are constructed): the FUSE layer asks for it on every request.
        self._block_size = DEFAULT_BLOCK_SIZE
        self.inactive: Table | None = None
        self.event_nr = 0
        self._profile: CryptoProfile | None = None
        self._gate = SuspendGate()
        self._lock = trio.Lock()  # md->suspend_lock: one suspend/resume/swap at a time
        self._touched: dict[int, BlockDevice] = {}  # every device a live table ever reached
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
    def block_layer(self) -> BlockLayer:
        """The block layer bios to this device go through (its manager's)."""
        return self._blk

    @property
    def block_size(self) -> int:
        return self._block_size

    @property
    def suspended(self) -> bool:
        return self._gate.suspended

    async def submit(self, bio: Bio) -> None:
        """``dm_submit_bio`` for a bio the block layer prepared for this device.

        A context the bio still carries is one this device's profile supports (inline: the
        targets pass it down), or, with ``fallback_per_target``, any context: this device then
        falls back for the pieces whose targets cannot pass it.

        Every bio pays this path, so the counters are bumped in place and the common case (an
        open gate, one target) awaits nothing but the target.
        """
        gate = self._gate
        waited = False if gate.try_enter() else await gate.enter()
        c = self.counters
        try:
            if waited:
                c["waited_for_resume"] += 1
            c["bios"] += 1
            op = bio.op
            if op is _READ:
                c["reads"] += 1
            elif op is _WRITE:
                c["writes"] += 1
            elif op is _FLUSH:
                c["flushes"] += 1
                if self.live is not None:
                    await self._flush(self.live)
                return
            else:
                c["discards"] += 1
            length = bio.length
            c["bytes"] += length
            if bio.offset % SECTOR_SIZE or length % SECTOR_SIZE:
                raise FuseblkError(
                    errno.EINVAL,
                    f"{self._name}: I/O at {bio.offset}+{bio.length} is not 512-byte aligned",
                )
            table = self.live
            size = table.size if table is not None else 0
            if bio.offset + length > size:
                raise FuseblkError(
                    errno.EIO,
                    f"{self._name}: attempt to access beyond end of device ({bio.end} > {size})",
                )
            ctx = bio.crypt_ctx
            if ctx is not None:
                if self.fallback_per_target and not supports_natively(self, ctx.key.config):
                    await self._map(bio, per_target_fallback=True)
                    return
                c["inline_bios"] += 1
                c["inline_bytes"] += length
            if table is not None and len(table.targets) == 1:
                await table.targets[0].map(bio)  # the hot path: target offset == device offset
            else:
                await self._map(bio)
        except FuseblkError:
            c["errors"] += 1
            raise
        finally:
            gate.leave()

    # -- mapping ----------------------------------------------------------------------------------

    async def _map(self, bio: Bio, per_target_fallback: bool = False) -> None:
        """``__split_and_process_bio`` for an admitted data bio: each piece to its target.

        A bio inside one target (nearly every bio) goes straight to it, without a list of
        pieces; the per-target fallback's choice for it is :meth:`_map_falling_back`'s.
        """
        table = self.live
        if table is None:
            raise FuseblkError(errno.EIO, f"{self._name}: device has no table")
        targets = table.targets
        if len(targets) == 1:
            if not per_target_fallback:
                await targets[0].map(bio)
                return
            target = targets[0]
            piece = bio  # the table's one target starts at 0
        else:
            target = targets[table.index_at(bio.offset)]
            begin = target.begin
            if bio.offset + bio.length > begin + target.length:
                await self._map_pieces(table, bio, per_target_fallback)
                return
            op, offset, length, buf, ctx = bio
            piece = Bio(op, offset - begin, length, buf, ctx)
        if per_target_fallback:
            await self._map_falling_back(target, piece)
        else:
            await target.map(piece)

    async def _map_pieces(self, table: Table, bio: Bio, per_target_fallback: bool) -> None:
        """A bio that crosses target boundaries: split, then every piece at once."""
        pieces = split_at_targets(table, bio, self._name)
        self.counters["splits"] += len(pieces) - 1
        map_piece = self._map_falling_back if per_target_fallback else _map_piece
        await fan_out(
            [partial(map_piece, target, piece) for target, piece in pieces],
            concurrent=bio.length >= CONCURRENT_MIN_BYTES,
        )

    async def _map_falling_back(self, target: Target, bio: Bio) -> None:
        """``fallback=target``: a piece keeps its context if its target passes crypto, else the
        fallback serves it here and the target sees plain data."""
        if bio.crypt_ctx is None:
            await target.map(bio)
        elif target.passes_crypto:
            c = self.counters
            c["passthrough_bios"] += 1
            c["passthrough_bytes"] += bio.length
            await target.map(bio)
        else:
            await self._fall_back(target, bio)

    async def _fall_back(self, target: Target, bio: Bio) -> None:
        """The fallback serves ``bio`` here, and ``target`` sees plain data."""
        c = self.counters
        c["fallback_bios"] += 1
        c["fallback_bytes"] += bio.length
        await self._blk.fallback.submit(_TargetPiece(target), bio)

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
        submit_bio = self._blk.submit_bio
        calls.extend(partial(submit_bio, dev, Bio.flush()) for dev in devices.values())
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

    async def hold(self) -> None:
        """Suspend without draining: new bios wait, bios in flight are left where they are.

        For a live hardware change under a device whose bios wait at a suspended device below
        (:mod:`fuseblk.dm.hw_change`): draining would wait for the user's resume of that device.
        """
        async with self._lock:
            await self._block_locked()

    async def _suspend_locked(self) -> None:
        if not self._gate.suspended:
            await self._block_locked()
            await self._gate.drain()

    async def _block_locked(self) -> None:
        """Close the gate to new bios and tell the targets (``presuspend``); drains nothing."""
        if self._gate.suspended:
            return
        self._gate.block()
        if self.live is not None:
            for target in self.live.targets:
                await target.presuspend()

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
        self._block_size = table.block_size
        for target in table.targets:
            target.counters = self.counters
        for dev in table.devices():
            self._touched.setdefault(id(dev), dev)
        caps = table.crypto_caps
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

    def refresh_crypto_profile(self) -> bool:
        """The devices below changed their capabilities: compute this device's profile again
        from its live table (and the inactive table's, which its resume will check); True if
        the profile changed. Beyond the kernel, which fixes a device's profile at its load.

        Growth may happen under live I/O: a bio already decided keeps a context the devices
        below still take. A shrink is only ever applied while this device is suspended
        (:mod:`fuseblk.dm.hw_change`), so no bio sees the profile change under it.
        """
        if self.inactive is not None:
            self.inactive.refresh_crypto_caps()
        if self.live is None:
            return False
        self.live.refresh_crypto_caps()
        caps = self.live.crypto_caps
        old = self._profile.caps if self._profile is not None else None
        if caps == old:
            return False
        if caps is None:
            self._profile = None
        elif self._profile is None:
            self._profile = CryptoProfile(caps, 0, ops=_EvictForwarder(self), name=self._name)
        else:
            self._profile.caps = caps
        self.counters.add("profile_changes")
        return True

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
            self._block_size = DEFAULT_BLOCK_SIZE

    # -- keys --------------------------------------------------------------------------------------

    async def evict_key(self, key: BlkCryptoKey) -> None:
        """Evict ``key`` from every device this one ever reached, and from the fallback.

        Every place is tried even after a failure (``dm_keyslot_evict`` does the same); the
        first error (EBUSY for a key in use) is raised at the end.
        """
        if self.live is not None:  # legs hot-added by a target (raid1 ``add``) since the swap
            for dev in self.live.devices():
                self._touched.setdefault(id(dev), dev)
        await self._blk.evict_key(key, list(self._touched.values()))

    def forget_device(self, dev: BlockDevice) -> None:
        """``dev`` was detached: evicting keys no longer needs to reach it."""
        self._touched.pop(id(dev), None)

    def held_devices(self) -> list[BlockDevice]:
        """Every device the live or inactive table names, once each (``dm_table`` holders):
        failed raid1 legs too, which take no I/O but stay in the table until removed."""
        held: dict[int, BlockDevice] = {}
        for table in (self.live, self.inactive):
            if table is not None:
                for target in table.targets:
                    for dev in target.held_devices():
                        held.setdefault(id(dev), dev)
        return list(held.values())

    def holds(self, dev: BlockDevice) -> bool:
        """Whether the live or inactive table names ``dev``."""
        return any(d is dev for d in self.held_devices())

    def __repr__(self) -> str:
        return f"MappedDevice({self._name!r}, size={self.size}, live={self.live!r})"


async def _map_piece(target: Target, bio: Bio) -> None:
    await target.map(bio)


class _EvictForwarder:
    """The passthrough profile's "hardware": eviction walks the devices below (``dm_keyslot_evict``)."""

    def __init__(self, md: MappedDevice) -> None:
        self._md = md

    async def program_key(self, key: BlkCryptoKey, slot: int) -> DataUnitCipher:
        raise FuseblkError(errno.EOPNOTSUPP, "a passthrough profile has no keyslots to program")

    async def evict_key(self, key: BlkCryptoKey, slot: int | None) -> None:
        await self._md.evict_key(key)


class _TargetPiece:
    """One target seen by the fallback, so that it can serve just that target's piece."""

    def __init__(self, target: Target) -> None:
        self._target = target
        self.name = target.name

    async def submit(self, bio: Bio) -> None:
        await self._target.map(bio)
