"""The keyslot manager (``struct blk_crypto_profile``): which key sits in which hardware slot.

Inline-encryption hardware holds a few keys at a time. Programming a slot is expensive, so a key
already in a slot is reused by every bio that needs it, a released key stays cached in its idle
slot until that slot is needed for another key (lazy eviction), and the slot chosen for a new
key is the one released longest ago (LRU). When every slot is in use, a bio waits for one.

This module reproduces block/blk-crypto-profile.c on trio. The kernel's state is guarded by
``profile->lock`` (an rwsem taken around every call into the driver) and ``idle_slots_lock`` (a
spinlock for the LRU list and refcounts). Under trio there is one thread and code between two
``await``s runs atomically, so the bookkeeping needs no lock at all; what still needs locks is
the part that awaits: calls into the "driver" (:class:`KeyslotOps`) and the queue of bios
waiting to program a key. The rules are written beside the code they govern.

Where this differs from the kernel, on purpose:

- A slot whose programming fails is left empty (the kernel keeps the old key mapped).
- Evicting a key whose slot is in use fails with ``EBUSY`` and leaves the slot alone (the
  kernel WARNs and unlinks it anyway, because its callers free the key).
- Bios that miss are served strictly first come, first served: a key's hit on an *idle* slot
  does not overtake a bio already waiting for an idle slot, so nobody starves.
- Replacing a cached key calls ``ops.evict_key`` on it before programming the new one, as the
  software fallback's driver does; hardware drivers may treat that call as a no-op.

Expanding a key is what programming a slot costs, so it is the hardware's job: ``program_key``
returns the expanded :class:`DataUnitCipher`, and the slot hands it to every bio that uses the
key. The profile never expands a key itself.
"""

from __future__ import annotations

import errno
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

import trio

from fuseblk.capabilities import CryptoCapabilities
from fuseblk.ciphers import DataUnitCipher
from fuseblk.errors import FuseblkError
from fuseblk.key import BlkCryptoKey, CryptoConfig
from fuseblk.modes import CryptoMode
from fuseblk.stats import Counters


class KeyslotOps(Protocol):
    """The "hardware" side of a profile (``blk_crypto_ll_ops``); always called under the hw lock."""

    async def program_key(self, key: BlkCryptoKey, slot: int) -> DataUnitCipher:
        """Load ``key`` into ``slot`` and return the cipher expanded from it (what bios holding
        the slot en/decrypt with); raise :class:`FuseblkError` to fail the bio that needed it."""
        ...

    async def evict_key(self, key: BlkCryptoKey, slot: int | None) -> None:
        """Remove ``key`` from ``slot``; ``slot`` is None for a 0-slot (passthrough) profile."""
        ...


@dataclass(frozen=True)
class Keyslot:
    """A programmed slot as handed to a bio: the key and the cipher the hardware expanded from it."""

    index: int
    key: BlkCryptoKey
    cipher: DataUnitCipher = field(repr=False, compare=False)


@dataclass(frozen=True)
class SlotState:
    """One row of the keyslot table, for image headers and inspection: never the key bytes."""

    index: int
    programmed: bool
    config: CryptoConfig | None
    key_id: str | None
    refs: int
    generation: int  # bumped each time this slot's key changes (program, evict, reset)

    @property
    def mode(self) -> CryptoMode | None:
        return self.config.mode if self.config else None

    @property
    def data_unit_size(self) -> int:
        return self.config.data_unit_size if self.config else 0

    @property
    def dun_bytes(self) -> int:
        return self.config.dun_bytes if self.config else 0


@dataclass
class _Slot:
    """``struct blk_crypto_keyslot``: mutable bookkeeping, private to the profile."""

    index: int
    programmed: Keyslot | None = None  # what the bios get; None while empty or being programmed
    refs: int = 0
    generation: int = 0
    # The key was dropped by a reset while bios still held the slot: they keep using their
    # Keyslot, and the slot becomes empty when the last of them puts it.
    lost: bool = False


class CryptoProfile:
    """Capabilities plus ``num_slots`` keyslots; ``num_slots == 0`` is the passthrough profile.

    A passthrough profile only advertises capabilities (a device-mapper device, or hardware that
    takes the key with every request): ``get_keyslot`` returns None and evictions are forwarded
    to ``ops.evict_key(key, None)``. A profile with keyslots needs ``ops`` to program them.
    """

    def __init__(
        self,
        caps: CryptoCapabilities,
        num_slots: int,
        ops: KeyslotOps | None = None,
        name: str = "",
    ) -> None:
        if num_slots < 0:
            raise ValueError(f"num_slots must be >= 0, got {num_slots}")
        if num_slots and ops is None:
            raise ValueError(f"{name or 'profile'}: keyslots need KeyslotOps to program them")
        self.caps = caps
        self.num_slots = num_slots
        self.ops = ops
        self.name = name
        self.counters = Counters()
        self.generation = 0  # bumped whenever any slot's key changes: "is the header stale?"
        self._slots = [_Slot(i) for i in range(num_slots)]
        # Lookup by key (the kernel's slot_hashtable). Holds exactly the slots whose
        # ``programmed`` is set and not ``lost``.
        self._by_key: dict[BlkCryptoKey, _Slot] = {}
        # The idle LRU (``idle_slots``): slots with refs == 0 that are not being programmed,
        # least recently released first. A slot leaves it on 0 -> 1 and rejoins at the tail on
        # 1 -> 0. Initially every slot, in index order.
        self._idle: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_slots))
        # ``profile->lock``: held across every call into ``ops`` (program, evict, reprogram), so
        # the driver sees one operation at a time and an eviction never races the programming
        # that replaces the same key. Never held while waiting for an idle slot.
        self._hw_lock = trio.Lock()
        # The queue of bios that missed. trio.Lock is FIFO, so misses are served in arrival
        # order; the holder is the only task that waits for an idle slot or programs one. A
        # second bio missing on the same key queues here and, once in front, finds the key
        # the first one programmed: a key is never programmed twice concurrently.
        self._miss_lock = trio.Lock()
        # ``idle_slots_wait_queue``: the head of the miss queue parks here while no slot is idle.
        self._idle_wait = trio.lowlevel.ParkingLot()
        # Set while the head of the miss queue needs an idle slot: a hit that would take an
        # idle slot (0 -> 1) then queues behind it instead of overtaking it.
        self._claiming = False

    # -- capabilities ------------------------------------------------------------------------

    @property
    def is_passthrough(self) -> bool:
        return self.num_slots == 0

    def supports(self, config: CryptoConfig) -> bool:
        """``__blk_crypto_cfg_supported``."""
        return self.caps.supports(config)

    def __repr__(self) -> str:
        return f"CryptoProfile({self.name!r}, slots={self.num_slots}, caps={self.caps.describe()})"

    # -- getting and putting keyslots ---------------------------------------------------------

    async def get_keyslot(self, key: BlkCryptoKey) -> Keyslot | None:
        """``blk_crypto_get_keyslot``: a slot holding ``key``, programming one if needed.

        Returns None for a passthrough profile. Waits while every slot is in use. Fails with
        EOPNOTSUPP if the key's configuration is not supported, or with the driver's error if
        programming fails. Every slot returned must be given back with :meth:`put_keyslot`.
        """
        if not self.caps.supports(key.config):
            raise FuseblkError(
                errno.EOPNOTSUPP,
                f"{self.name or 'device'}: key {key.key_id} ({key.mode.sysfs_name}, "
                f"{key.data_unit_size}-byte data units, {key.dun_bytes}-byte DUN) is not supported",
            )
        if self.num_slots == 0:
            return None
        # Fast path, no await: a hit on a busy slot, or on an idle one nobody queued for.
        slot = self._by_key.get(key)
        if slot is not None and (slot.refs > 0 or not self._claiming):
            self.counters.add("hits")
            return self._grab(slot)
        async with self._miss_lock:
            return await self._get_keyslot_slow(key)

    def get_cached_keyslot(self, key: BlkCryptoKey) -> Keyslot | None:
        """:meth:`get_keyslot`'s fast path, without awaiting: a supported key's hit on a busy
        slot, or on an idle one nobody queued for. None when :meth:`get_keyslot` must be awaited
        instead (a miss, a deferred hit, an unsupported key, a passthrough profile)."""
        slot = self._by_key.get(key)
        if slot is None or (slot.refs == 0 and self._claiming):
            return None
        if not self.caps.supports(key.config):
            return None
        self.counters["hits"] += 1
        return self._grab(slot)

    async def _get_keyslot_slow(self, key: BlkCryptoKey) -> Keyslot:
        # Called with _miss_lock held: we are the only task that parks on _idle_wait or
        # programs a slot. _claiming is ours to set and clear.
        try:
            while True:
                slot = self._by_key.get(key)
                if slot is not None:  # programmed by the bio ahead of us, or a deferred hit
                    self.counters.add("hits")
                    return self._grab(slot)
                self._claiming = True
                if not self._idle:
                    # Every slot is in use: wait for a put (or a reset) to make one idle.
                    self.counters.add("waits")
                    await self._idle_wait.park()
                    continue
                async with self._hw_lock:
                    # Acquiring may have yielded: evictions (which keep idle slots idle) and
                    # hits deferred by _claiming cannot take our slot, but a reset may have
                    # changed everything, so look again before choosing.
                    if self._idle and key not in self._by_key:
                        index, _ = self._idle.popitem(last=False)
                        self._claiming = False
                        self.counters.add("misses")
                        return await self._program(self._slots[index], key)
        finally:
            self._claiming = False

    async def _program(self, slot: _Slot, key: BlkCryptoKey) -> Keyslot:
        # Called with _hw_lock held and ``slot`` already off the idle list: nobody else can
        # choose it, and while its key is unmapped no hit can find it. The slot is "busy".
        old = slot.programmed
        if old is not None:
            del self._by_key[old.key]
            slot.programmed = None
            self._changed(slot)
            self.counters.add("evictions")
        ops = self.ops
        assert ops is not None  # a profile with slots has ops (__init__)
        try:
            if old is not None:
                await ops.evict_key(old.key, slot.index)
            cipher = await ops.program_key(key, slot.index)
        except BaseException:
            # Failed or cancelled: the slot is left empty and goes back to the head of the
            # idle list, where the kernel would have left it, usable by the next miss. Nobody
            # needs waking: only the head of the miss queue (us) ever waits for an idle slot.
            self.counters.add("program_errors")
            self._idle[slot.index] = None
            self._idle.move_to_end(slot.index, last=False)
            raise
        keyslot = Keyslot(slot.index, key, cipher)
        slot.programmed = keyslot
        slot.refs = 1
        self._by_key[key] = slot
        self._changed(slot)
        self.counters.add("programs")
        return keyslot

    def _grab(self, slot: _Slot) -> Keyslot:
        """``blk_crypto_find_and_grab_keyslot`` after the lookup: take a reference."""
        assert slot.programmed is not None
        slot.refs += 1
        if slot.refs == 1:
            # First reference: the slot is no longer idle, so it cannot be chosen for another key.
            del self._idle[slot.index]
        return slot.programmed

    def put_keyslot(self, keyslot: Keyslot | None) -> None:
        """``blk_crypto_put_keyslot``: drop a reference; the key stays cached in the idle slot."""
        if keyslot is None:
            return
        slot = self._slots[keyslot.index]
        if slot.refs <= 0 or slot.programmed is not keyslot:
            raise RuntimeError(f"{self.name}: put of keyslot {keyslot.index} that is not held")
        slot.refs -= 1
        if slot.refs == 0:
            if slot.lost:
                slot.programmed = None
                slot.lost = False
            # Last reference: the slot becomes the most recently released idle slot, and a
            # bio waiting for one can proceed.
            self._idle[slot.index] = None
            if self._idle_wait:  # nearly always empty: skip the wake-up call
                self._idle_wait.unpark_all()

    @asynccontextmanager
    async def keyslot(self, key: BlkCryptoKey) -> AsyncIterator[Keyslot | None]:
        """Hold a slot for ``key`` for the duration of a ``with`` block."""
        keyslot = await self.get_keyslot(key)
        try:
            yield keyslot
        finally:
            self.put_keyslot(keyslot)

    # -- eviction, reprogramming, reset --------------------------------------------------------

    async def evict_key(self, key: BlkCryptoKey) -> None:
        """``__blk_crypto_evict_key``: make sure no slot holds ``key`` any more.

        A key in no slot is already evicted (there can be more keys than slots). A key whose
        slot is in use fails with EBUSY. A passthrough profile forwards to ``ops.evict_key(key,
        None)``, which for a device-mapper device evicts from every device below.
        """
        if self.num_slots == 0:
            if self.ops is not None:
                async with self._hw_lock:
                    await self.ops.evict_key(key, None)
            return
        async with self._hw_lock:
            slot = self._by_key.get(key)
            if slot is None:
                return
            if slot.refs > 0:
                raise FuseblkError(
                    errno.EBUSY,
                    f"{self.name or 'device'}: key {key.key_id} is in use in keyslot {slot.index}",
                )
            # Unmap before awaiting the driver: no hit can grab the slot meanwhile, and since it
            # stays on the idle list where it was (as in the kernel), the next miss may reuse it
            # once we release the hw lock. Even if the driver fails, the slot is forgotten: the
            # caller is told, and reprogramming an unknown state would be worse.
            del self._by_key[key]
            slot.programmed = None
            self._changed(slot)
            self.counters.add("evictions")
            if self.ops is not None:
                await self.ops.evict_key(key, slot.index)

    async def reprogram_all(self) -> None:
        """``blk_crypto_reprogram_all_keys``: after the hardware lost its keys, load them again.

        Every slot that holds a key is programmed again. A slot whose programming fails is
        emptied (if bios still hold it, when they release it); the first error is raised after
        every slot was tried.
        """
        if self.num_slots == 0 or self.ops is None:
            return
        first_error: BaseException | None = None
        async with self._hw_lock:
            for slot in self._slots:
                keyslot = slot.programmed
                if keyslot is None or slot.lost:
                    continue
                try:
                    # The slot keeps the Keyslot its bios already hold: same key, same expansion.
                    await self.ops.program_key(keyslot.key, slot.index)
                except FuseblkError as err:
                    self.counters.add("program_errors")
                    first_error = first_error or err
                    self._forget(slot)
        if first_error is not None:
            raise first_error

    def reset(self) -> None:
        """A hardware reset: every slot is empty (as when an image is attached).

        Bios holding slots keep their :class:`Keyslot` until they put it; those slots then
        become idle and empty. The ops are not called: the hardware already forgot.
        """
        for slot in self._slots:
            if slot.programmed is not None and not slot.lost:
                self._forget(slot)
        # Empty slots first, in index order, like a freshly initialised profile.
        idle = sorted(self._idle)
        self._idle = OrderedDict((i, None) for i in idle)
        self._idle_wait.unpark_all()

    # -- live hardware changes -------------------------------------------------------------------

    async def reconfigure(self, caps: CryptoCapabilities, num_slots: int) -> list[BlkCryptoKey]:
        """The hardware now offers ``caps`` and ``num_slots`` slots (``fuseblk hw set``, beyond
        the kernel, whose profiles never change after registration); returns the keys evicted.

        A key the new capabilities do not support, or held in a slot that no longer exists, is
        evicted through the ops. Such a slot must be idle: the caller drains the devices above
        first, so a busy one is EBUSY and nothing changes. Added slots are empty and go to the
        head of the idle list, so misses fill them before replacing a cached key. A failed
        driver eviction is counted and ignored: the slot is gone or unusable for that key either
        way, and the change stands.

        Lock order: ``_hw_lock`` only, like an eviction, and only when something is evicted
        or removed: growth is bookkeeping with no await, so it never waits behind a slow
        programming. A miss parked for an idle slot is woken and looks again, so it never picks
        a slot that was removed.
        """
        if num_slots < 0 or (self.num_slots == 0) != (num_slots == 0):
            raise ValueError(f"{self.name}: a profile keeps its shape (slots or passthrough)")
        if num_slots >= self.num_slots and not self._doomed(caps, num_slots):
            self._resize(caps, num_slots)
            return []
        async with self._hw_lock:
            doomed = self._doomed(caps, num_slots)
            busy = [s.index for s in self._slots[num_slots:] if s.refs > 0]
            busy += [s.index for s in doomed if s.refs > 0 and s.index < num_slots]
            if busy:
                raise FuseblkError(
                    errno.EBUSY,
                    f"{self.name or 'device'}: keyslot(s) {', '.join(map(str, sorted(busy)))} "
                    "in use: drain the devices above before shrinking",
                )
            evicted = []
            for slot in doomed:
                assert slot.programmed is not None
                key = slot.programmed.key
                del self._by_key[key]
                slot.programmed = None
                self._changed(slot)
                self.counters.add("evictions")
                evicted.append(key)
                if self.ops is not None:
                    try:
                        await self.ops.evict_key(key, slot.index)
                    except FuseblkError:
                        self.counters.add("evict_errors")
            self._resize(caps, num_slots)
        return evicted

    def _doomed(self, caps: CryptoCapabilities, num_slots: int) -> list[_Slot]:
        """Slots holding a key that ``caps`` does not support or beyond ``num_slots``."""
        return [
            slot
            for slot in self._slots
            if (slot.programmed is not None and not slot.lost)
            and (slot.index >= num_slots or not caps.supports(slot.programmed.key.config))
        ]

    def _resize(self, caps: CryptoCapabilities, num_slots: int) -> None:
        """Take the new capabilities and slot count; removed slots are idle and empty."""
        self.caps = caps
        old = self.num_slots
        if num_slots < old:
            for slot in self._slots[num_slots:]:
                self._idle.pop(slot.index, None)
            del self._slots[num_slots:]
            self.generation += 1
        elif num_slots > old:
            added = [_Slot(i) for i in range(old, num_slots)]
            self._slots.extend(added)
            for slot in reversed(added):
                self._idle[slot.index] = None
                self._idle.move_to_end(slot.index, last=False)
            self.generation += 1
        self.num_slots = num_slots
        if self._idle_wait:
            self._idle_wait.unpark_all()

    def _forget(self, slot: _Slot) -> None:
        assert slot.programmed is not None
        del self._by_key[slot.programmed.key]
        if slot.refs > 0:
            slot.lost = True
        else:
            slot.programmed = None
        self._changed(slot)

    def _changed(self, slot: _Slot) -> None:
        slot.generation += 1
        self.generation += 1

    # -- inspection -----------------------------------------------------------------------------

    def slot_table(self) -> list[SlotState]:
        """The keyslot table as an image header records it: configuration and key id per slot."""
        rows = []
        for slot in self._slots:
            keyslot = None if slot.lost else slot.programmed
            rows.append(
                SlotState(
                    index=slot.index,
                    programmed=keyslot is not None,
                    config=keyslot.key.config if keyslot else None,
                    key_id=keyslot.key.key_id if keyslot else None,
                    refs=slot.refs,
                    generation=slot.generation,
                )
            )
        return rows

    def idle_order(self) -> list[int]:
        """Indices of idle slots, least recently released first: the order misses reuse them."""
        return list(self._idle)

    def find_slot(self, key: BlkCryptoKey) -> int | None:
        """The index of the slot holding ``key``, if any (no reference is taken)."""
        slot = self._by_key.get(key)
        return slot.index if slot is not None else None
