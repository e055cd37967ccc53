"""The keyslot manager: program on miss, reuse on hit, LRU of idle slots, wait when all busy."""

from __future__ import annotations

import errno

import pytest
import trio
import trio.testing
from device_helpers import MemKeyslotHardware, make_key

from fuseblk.blkcrypto.keyslot_manager import CryptoProfile, Keyslot
from fuseblk.capabilities import CryptoCapabilities, dus_mask
from fuseblk.ciphers import DataUnitCipher, get_cipher
from fuseblk.errors import FuseblkError
from fuseblk.key import BlkCryptoKey, KeyType
from fuseblk.modes import CryptoMode

CAPS = CryptoCapabilities({CryptoMode.AES_256_XTS: dus_mask(512, 4096)}, 8, KeyType.RAW)
K1, K2, K3, K4 = (make_key(i, dus=512, dun_bytes=8) for i in range(1, 5))


def profile_with(num_slots: int) -> tuple[CryptoProfile, MemKeyslotHardware]:
    hw = MemKeyslotHardware(num_slots)
    return CryptoProfile(CAPS, num_slots, hw, name="test"), hw


async def test_miss_programs_the_key_and_a_second_get_hits() -> None:
    profile, hw = profile_with(2)
    first = await profile.get_keyslot(K1)
    second = await profile.get_keyslot(K1)
    assert first is not None and second is first
    assert hw.slots[first.index] == K1
    assert hw.programs() == [(K1.key_id, first.index)]
    assert profile.counters.snapshot() == {"hits": 1, "misses": 1, "programs": 1}
    assert profile.slot_table()[first.index].refs == 2


async def test_slot_cipher_is_the_cipher_of_its_key() -> None:
    profile, _ = profile_with(1)
    async with profile.keyslot(K1) as slot:
        assert slot is not None
        data = bytes(range(256)) * 4
        assert slot.cipher.encrypt(data, 7) == get_cipher(K1).encrypt(data, 7)


class ExpandingHardware(MemKeyslotHardware):
    """Hardware that hands back its own expansion of each key it programs."""

    def __init__(self, num_slots: int) -> None:
        super().__init__(num_slots)
        self.expanded: list[object] = []

    async def program_key(self, key: BlkCryptoKey, slot: int) -> DataUnitCipher:
        cipher = await super().program_key(key, slot)
        self.expanded.append(cipher)
        return cipher


async def test_slot_cipher_is_the_one_the_hardware_expanded_when_programming() -> None:
    hw = ExpandingHardware(2)
    profile = CryptoProfile(CAPS, 2, hw, name="test")
    async with profile.keyslot(K1) as first, profile.keyslot(K2) as second:
        assert first is not None and second is not None
        assert len(hw.expanded) == 2
        assert first.cipher is hw.expanded[0] and second.cipher is hw.expanded[1]


def test_a_profile_with_keyslots_needs_ops_to_program_them() -> None:
    with pytest.raises(ValueError, match="KeyslotOps"):
        CryptoProfile(CAPS, 2, name="no-hardware")
    assert CryptoProfile(CAPS, 0).is_passthrough  # a passthrough profile programs nothing


async def test_fresh_profile_fills_slots_in_index_order() -> None:
    profile, hw = profile_with(3)
    slots = [await profile.get_keyslot(k) for k in (K1, K2, K3)]
    assert [s.index for s in slots if s] == [0, 1, 2]
    assert hw.slots == [K1, K2, K3]


async def test_released_key_stays_cached_in_its_idle_slot() -> None:
    profile, hw = profile_with(1)
    profile.put_keyslot(await profile.get_keyslot(K1))
    assert hw.slots == [K1]
    assert profile.slot_table()[0].programmed and profile.slot_table()[0].refs == 0
    profile.put_keyslot(await profile.get_keyslot(K1))
    assert profile.counters["programs"] == 1 and profile.counters["hits"] == 1


async def test_miss_reuses_the_least_recently_released_idle_slot() -> None:
    profile, hw = profile_with(3)
    s1, s2, s3 = [await profile.get_keyslot(k) for k in (K1, K2, K3)]
    for slot in (s2, s3, s1):  # release order: slot 1, slot 2, slot 0
        profile.put_keyslot(slot)
    assert profile.idle_order() == [1, 2, 0]
    s4 = await profile.get_keyslot(K4)
    assert s4 is not None and s4.index == 1
    assert hw.slots == [K1, K4, K3]
    assert profile.find_slot(K2) is None


async def test_replacing_a_cached_key_evicts_it_through_the_ops_first() -> None:
    profile, hw = profile_with(1)
    profile.put_keyslot(await profile.get_keyslot(K1))
    profile.put_keyslot(await profile.get_keyslot(K2))
    assert hw.calls == [
        ("program", K1.key_id, 0),
        ("evict", K1.key_id, 0),
        ("program", K2.key_id, 0),
    ]
    assert profile.counters["evictions"] == 1


async def test_hit_takes_an_idle_slot_off_the_lru() -> None:
    profile, _ = profile_with(2)
    profile.put_keyslot(await profile.get_keyslot(K1))
    profile.put_keyslot(await profile.get_keyslot(K2))
    assert profile.idle_order() == [0, 1]
    held = await profile.get_keyslot(K1)
    assert profile.idle_order() == [1]
    profile.put_keyslot(held)
    assert profile.idle_order() == [1, 0]


async def test_get_waits_while_every_slot_is_busy_and_proceeds_when_one_is_released() -> None:
    profile, hw = profile_with(1)
    held = await profile.get_keyslot(K1)
    got: list[Keyslot | None] = []

    async def waiter() -> None:
        got.append(await profile.get_keyslot(K2))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            assert got == [] and profile.counters["waits"] == 1
            profile.put_keyslot(held)
    assert got[0] is not None and got[0].key == K2 and hw.slots == [K2]


async def test_waiting_bio_does_not_block_other_tasks() -> None:
    profile, _ = profile_with(1)
    held = await profile.get_keyslot(K1)
    other_ran = trio.Event()

    async def waiter() -> None:
        profile.put_keyslot(await profile.get_keyslot(K2))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            # A hit on the busy slot is not held up by the waiter.
            profile.put_keyslot(await profile.get_keyslot(K1))
            other_ran.set()
            profile.put_keyslot(held)
    assert other_ran.is_set()


async def test_waiters_are_served_in_arrival_order() -> None:
    profile, _ = profile_with(1)
    held = await profile.get_keyslot(K1)
    order: list[int] = []

    async def waiter(n: int, key_seed: int) -> None:
        slot = await profile.get_keyslot(make_key(key_seed, dus=512, dun_bytes=8))
        order.append(n)
        await trio.testing.wait_all_tasks_blocked()
        profile.put_keyslot(slot)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for n in range(4):
                nursery.start_soon(waiter, n, 10 + n)
                await trio.testing.wait_all_tasks_blocked()
            profile.put_keyslot(held)
    assert order == [0, 1, 2, 3]


async def test_hit_on_an_idle_slot_does_not_overtake_a_waiting_miss() -> None:
    profile, hw = profile_with(1)
    held = await profile.get_keyslot(K1)
    order: list[str] = []

    async def get(name: str, key_seed: int) -> None:
        slot = await profile.get_keyslot(make_key(key_seed, dus=512, dun_bytes=8))
        order.append(name)
        profile.put_keyslot(slot)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(get, "miss K2", 2)
            await trio.testing.wait_all_tasks_blocked()
            profile.put_keyslot(held)  # K1 is now idle and cached, and K2's miss was woken
            nursery.start_soon(get, "hit K1", 1)
    assert order == ["miss K2", "hit K1"]
    assert [key_id for key_id, _ in hw.programs()] == [K1.key_id, K2.key_id, K1.key_id]


async def test_concurrent_gets_of_the_same_missing_key_program_it_once() -> None:
    profile, hw = profile_with(2)
    hw.gate = trio.Event()
    got: list[Keyslot | None] = []

    async def get() -> None:
        got.append(await profile.get_keyslot(K1))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(get)
            await trio.testing.wait_all_tasks_blocked()
            assert hw.programming == 1
            hw.gate.set()
    assert len(hw.programs()) == 1
    assert len({id(s) for s in got}) == 1 and profile.slot_table()[got[0].index].refs == 3  # type: ignore[union-attr]
    assert profile.counters["misses"] == 1 and profile.counters["hits"] == 2


async def test_failing_program_fails_the_get_and_leaves_the_slot_empty_and_usable() -> None:
    profile, hw = profile_with(1)
    profile.put_keyslot(await profile.get_keyslot(K1))
    hw.fail_program.add(K2)
    with pytest.raises(FuseblkError) as err:
        await profile.get_keyslot(K2)
    assert err.value.errno == errno.EIO
    row = profile.slot_table()[0]
    assert not row.programmed and row.refs == 0
    assert profile.find_slot(K1) is None and profile.idle_order() == [0]
    assert profile.counters["program_errors"] == 1
    async with profile.keyslot(K3) as slot:
        assert slot is not None and slot.index == 0 and hw.slots == [K3]


async def test_cancelled_program_leaves_the_slot_empty_and_usable() -> None:
    profile, hw = profile_with(1)
    profile.put_keyslot(await profile.get_keyslot(K1))
    hw.gate = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(profile.get_keyslot, K2)
        await trio.testing.wait_all_tasks_blocked()
        assert hw.programming == 1  # cancelled in the middle of programming K2
        nursery.cancel_scope.cancel()
    assert not profile.slot_table()[0].programmed and profile.idle_order() == [0]
    assert profile.find_slot(K1) is None and profile.find_slot(K2) is None
    hw.gate = None
    async with profile.keyslot(K3) as slot:
        assert slot is not None and slot.index == 0


async def test_unsupported_configuration_is_eopnotsupp_naming_the_key() -> None:
    profile, hw = profile_with(1)
    for key in (
        make_key(1, dus=1024, dun_bytes=8),
        make_key(1, mode=CryptoMode.ADIANTUM, dus=512, dun_bytes=32),
        make_key(1, dus=512, dun_bytes=9),
    ):
        with pytest.raises(FuseblkError) as err:
            await profile.get_keyslot(key)
        assert err.value.errno == errno.EOPNOTSUPP and key.key_id in str(err.value)
    assert hw.calls == []


async def test_evicting_a_key_in_no_slot_succeeds() -> None:
    profile, hw = profile_with(1)
    await profile.evict_key(K1)
    assert hw.calls == [] and profile.counters["evictions"] == 0


async def test_evict_busy_slot_returns_ebusy() -> None:
    profile, hw = profile_with(1)
    held = await profile.get_keyslot(K1)
    with pytest.raises(FuseblkError) as err:
        await profile.evict_key(K1)
    assert err.value.errno == errno.EBUSY and K1.key_id in str(err.value)
    assert hw.slots == [K1] and profile.find_slot(K1) == 0
    profile.put_keyslot(held)


async def test_evicting_an_idle_key_empties_its_slot_in_place() -> None:
    profile, hw = profile_with(2)
    profile.put_keyslot(await profile.get_keyslot(K1))
    profile.put_keyslot(await profile.get_keyslot(K2))
    await profile.evict_key(K1)
    assert hw.slots == [None, K2] and ("evict", K1.key_id, 0) in hw.calls
    assert not profile.slot_table()[0].programmed and profile.idle_order() == [0, 1]
    assert profile.counters["evictions"] == 1


async def test_failed_eviction_is_reported_and_the_key_forgotten() -> None:
    profile, hw = profile_with(1)
    profile.put_keyslot(await profile.get_keyslot(K1))
    hw.fail_evict.add(K1)
    with pytest.raises(FuseblkError):
        await profile.evict_key(K1)
    assert profile.find_slot(K1) is None


async def test_passthrough_profile_has_no_slots_and_forwards_eviction() -> None:
    hw = MemKeyslotHardware(0)
    profile = CryptoProfile(CAPS, 0, hw, name="dm-0")
    assert profile.is_passthrough
    async with profile.keyslot(K1) as slot:
        assert slot is None
    profile.put_keyslot(None)
    await profile.evict_key(K1)
    assert hw.calls == [("evict", K1.key_id, None)]
    assert profile.slot_table() == []
    with pytest.raises(FuseblkError) as err:
        await profile.get_keyslot(make_key(1, dus=1024, dun_bytes=8))
    assert err.value.errno == errno.EOPNOTSUPP


async def test_passthrough_profile_without_ops_evicts_nothing() -> None:
    profile = CryptoProfile(CAPS, 0)
    await profile.evict_key(K1)


async def test_reprogram_all_programs_every_slot_that_holds_a_key() -> None:
    profile, hw = profile_with(3)
    held = await profile.get_keyslot(K1)
    profile.put_keyslot(await profile.get_keyslot(K2))
    hw.slots = [None, None, None]  # the controller was reset and lost its keys
    hw.calls.clear()
    await profile.reprogram_all()
    assert hw.slots == [K1, K2, None]
    assert sorted(hw.programs()) == sorted([(K1.key_id, 0), (K2.key_id, 1)])
    profile.put_keyslot(held)


async def test_reprogram_all_empties_slots_whose_programming_fails() -> None:
    profile, hw = profile_with(2)
    profile.put_keyslot(await profile.get_keyslot(K1))
    profile.put_keyslot(await profile.get_keyslot(K2))
    hw.fail_program.add(K1)
    with pytest.raises(FuseblkError):
        await profile.reprogram_all()
    assert profile.find_slot(K1) is None and profile.find_slot(K2) == 1


async def test_reset_empties_every_slot_without_calling_the_ops() -> None:
    profile, hw = profile_with(3)
    for key in (K1, K2):
        profile.put_keyslot(await profile.get_keyslot(key))
    hw.calls.clear()
    profile.reset()
    assert [row.programmed for row in profile.slot_table()] == [False, False, False]
    assert profile.idle_order() == [0, 1, 2] and hw.calls == []
    await profile.reprogram_all()
    assert hw.calls == []


async def test_reset_with_a_held_slot_empties_it_when_released() -> None:
    profile, _ = profile_with(2)
    held = await profile.get_keyslot(K1)
    profile.reset()
    assert profile.find_slot(K1) is None and not profile.slot_table()[0].programmed
    assert profile.idle_order() == [1]
    profile.put_keyslot(held)
    assert profile.idle_order() == [1, 0]
    async with profile.keyslot(K1) as again:
        assert again is not None and again.index == 1


async def test_slot_table_names_keys_by_id_and_never_shows_key_bytes() -> None:
    profile, _ = profile_with(2)
    held = await profile.get_keyslot(K1)
    table = profile.slot_table()
    row = table[0]
    assert (row.index, row.programmed, row.refs, row.key_id) == (0, True, 1, K1.key_id)
    assert (row.mode, row.data_unit_size, row.dun_bytes) == (CryptoMode.AES_256_XTS, 512, 8)
    assert not table[1].programmed and table[1].key_id is None and table[1].data_unit_size == 0
    text = repr(table) + repr(held) + repr(profile)
    assert K1.raw.hex() not in text and repr(K1.raw) not in text
    profile.put_keyslot(held)


async def test_generation_changes_when_a_slot_key_changes_and_not_on_hits() -> None:
    profile, _ = profile_with(1)
    start = profile.generation
    profile.put_keyslot(await profile.get_keyslot(K1))
    after_program = profile.generation
    assert after_program > start and profile.slot_table()[0].generation > 0
    profile.put_keyslot(await profile.get_keyslot(K1))
    assert profile.generation == after_program
    await profile.evict_key(K1)
    assert profile.generation > after_program


async def test_put_of_a_slot_that_is_not_held_is_a_bug() -> None:
    profile, _ = profile_with(1)
    slot = await profile.get_keyslot(K1)
    profile.put_keyslot(slot)
    with pytest.raises(RuntimeError):
        profile.put_keyslot(slot)


async def test_keyslot_context_releases_the_slot_when_the_body_fails() -> None:
    profile, _ = profile_with(1)
    with pytest.raises(ValueError):
        async with profile.keyslot(K1):
            raise ValueError("bio failed")
    assert profile.slot_table()[0].refs == 0 and profile.idle_order() == [0]


async def test_eviction_is_not_held_up_by_a_bio_waiting_for_a_slot() -> None:
    profile, _ = profile_with(1)
    held = await profile.get_keyslot(K1)
    with trio.fail_after(10):  # a deadlock guard
        async with trio.open_nursery() as nursery:
            nursery.start_soon(profile.get_keyslot, K2)
            await trio.testing.wait_all_tasks_blocked()
            await profile.evict_key(K3)  # absent: returns at once
            with pytest.raises(FuseblkError) as err:
                await profile.evict_key(K1)
            assert err.value.errno == errno.EBUSY
            nursery.cancel_scope.cancel()
    profile.put_keyslot(held)


async def test_cached_hit_is_refused_once_the_capabilities_stop_supporting_the_key() -> None:
    profile, _ = profile_with(2)
    slot = await profile.get_keyslot(K1)
    cached = profile.get_cached_keyslot(K1)
    assert cached is slot
    profile.put_keyslot(cached)
    profile.caps = CryptoCapabilities({CryptoMode.AES_256_XTS: dus_mask(4096)}, 8, KeyType.RAW)
    assert profile.get_cached_keyslot(K1) is None
    profile.put_keyslot(slot)
