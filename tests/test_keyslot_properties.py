"""The keyslot manager against a reference LRU model, and under random concurrent use.

The sequential test replays random get/put/evict/reset sequences (with keys whose programming
fails) on a profile and on a 30-line model of the kernel's rules, and compares slot choice,
refcounts, the idle LRU and the "hardware" after every step. A get the model says must wait is
checked to really block (and to leave no trace when cancelled). The concurrent test runs many
trio tasks with more keys than slots and checks that a held slot's key is never replaced.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field

import trio
import trio.testing
from device_helpers import MemKeyslotHardware, make_key
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuseblk.blkcrypto.keyslot_manager import CryptoProfile, Keyslot
from fuseblk.capabilities import CryptoCapabilities
from fuseblk.errors import FuseblkError
from fuseblk.key import BlkCryptoKey

KEYS = [make_key(i, dus=512, dun_bytes=16) for i in range(8)]
BAD = {KEYS[7]}  # programming this key always fails
CAPS = CryptoCapabilities.everything()


@dataclass
class LruModel:
    """The kernel's keyslot rules, written as plainly as possible."""

    slots: list[BlkCryptoKey | None]
    refs: list[int] = field(init=False)
    idle: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.refs = [0] * len(self.slots)
        self.idle = list(range(len(self.slots)))

    def find(self, key: BlkCryptoKey) -> int | None:
        return self.slots.index(key) if key in self.slots else None

    def get(self, key: BlkCryptoKey) -> int | str:
        """The slot index, or "wait" if every slot is busy, or "fail" if programming fails."""
        i = self.find(key)
        if i is None:
            if not self.idle:
                return "wait"
            i = self.idle[0]  # least recently released; stays at the head if programming fails
            self.slots[i] = None
            if key in BAD:
                return "fail"
            self.slots[i] = key
        self.refs[i] += 1
        if self.refs[i] == 1:
            self.idle.remove(i)
        return i

    def put(self, i: int) -> None:
        self.refs[i] -= 1
        if self.refs[i] == 0:
            self.idle.append(i)

    def evict(self, key: BlkCryptoKey) -> str:
        i = self.find(key)
        if i is None:
            return "ok"
        if self.refs[i]:
            return "busy"
        self.slots[i] = None
        return "ok"

    def reset(self) -> None:
        # Held slots keep their refs; their keys are forgotten. Idle slots in index order.
        self.slots = [None] * len(self.slots)
        self.idle.sort()


def check_same(profile: CryptoProfile, hw: MemKeyslotHardware, model: LruModel) -> None:
    table = profile.slot_table()
    assert [row.key_id for row in table] == [k.key_id if k else None for k in model.slots]
    assert [row.refs for row in table] == model.refs
    assert profile.idle_order() == model.idle
    for i, key in enumerate(model.slots):
        if key is not None:
            assert hw.slots[i] == key  # the hardware holds what the profile says


ops = st.lists(
    st.one_of(
        st.tuples(st.just("get"), st.integers(0, len(KEYS) - 1)),
        st.tuples(st.just("put"), st.integers(0, 20)),
        st.tuples(st.just("evict"), st.integers(0, len(KEYS) - 1)),
        st.tuples(st.just("reset"), st.just(0)),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 4), ops)
async def test_slot_choice_matches_the_reference_lru_model(
    num_slots: int, steps: list[tuple[str, int]]
) -> None:
    hw = MemKeyslotHardware(num_slots)
    hw.fail_program = set(BAD)
    profile = CryptoProfile(CAPS, num_slots, hw, name="model")
    model = LruModel([None] * num_slots)
    held: list[Keyslot] = []
    gets = failed = 0
    with trio.fail_after(10):  # a deadlock guard, not a measurement
        for op, arg in steps:
            if op == "get":
                key = KEYS[arg]
                expected = model.get(key)
                if expected == "wait":
                    await assert_get_blocks(profile, key)
                    continue
                gets += 1
                try:
                    slot = await profile.get_keyslot(key)
                except FuseblkError as err:
                    assert expected == "fail" and err.errno == errno.EIO
                    failed += 1
                else:
                    assert slot is not None and slot.index == expected and slot.key == key
                    held.append(slot)
            elif op == "put" and held:
                slot = held.pop(arg % len(held))
                model.put(slot.index)
                profile.put_keyslot(slot)
            elif op == "evict":
                key = KEYS[arg]
                expected = model.evict(key)
                try:
                    await profile.evict_key(key)
                except FuseblkError as err:
                    assert expected == "busy" and err.errno == errno.EBUSY
                else:
                    assert expected == "ok"
            elif op == "reset":
                model.reset()
                profile.reset()
                hw.slots = [None] * num_slots
            check_same(profile, hw, model)
    counters = profile.counters
    assert counters["hits"] + counters["misses"] == gets
    assert counters["programs"] + counters["program_errors"] == counters["misses"]
    assert counters["program_errors"] == failed
    assert len(hw.programs()) == counters["misses"]
    for slot in held:
        profile.put_keyslot(slot)
    assert sorted(profile.idle_order()) == list(range(num_slots))


async def assert_get_blocks(profile: CryptoProfile, key: BlkCryptoKey) -> None:
    """The get waits (without blocking anyone else) and, cancelled, changes nothing."""
    before = (profile.slot_table(), profile.idle_order(), profile.counters["waits"])
    done = False

    async def get() -> None:
        nonlocal done
        await profile.get_keyslot(key)
        done = True

    async with trio.open_nursery() as nursery:
        nursery.start_soon(get)
        await trio.testing.wait_all_tasks_blocked()
        assert not done
        nursery.cancel_scope.cancel()
    after = (profile.slot_table(), profile.idle_order(), profile.counters["waits"] - 1)
    assert after == before


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(1, 3),
    st.lists(
        st.lists(st.tuples(st.integers(0, len(KEYS) - 1), st.integers(0, 3)), max_size=12),
        min_size=2,
        max_size=8,
    ),
    st.lists(st.integers(0, len(KEYS) - 1), max_size=6),
)
async def test_concurrent_tasks_with_more_keys_than_slots(
    num_slots: int, plans: list[list[tuple[int, int]]], evictions: list[int]
) -> None:
    hw = MemKeyslotHardware(num_slots)
    hw.fail_program = set(BAD)
    profile = CryptoProfile(CAPS, num_slots, hw, name="concurrent")
    outcome = {"ok": 0, "failed": 0, "evicted": 0, "busy": 0}

    async def bio_task(plan: list[tuple[int, int]]) -> None:
        for key_index, pauses in plan:
            key = KEYS[key_index]
            try:
                async with profile.keyslot(key) as slot:
                    assert slot is not None and slot.key == key
                    for _ in range(pauses + 1):
                        # While held, nobody may reprogram this slot under us.
                        assert hw.slots[slot.index] == key
                        assert profile.find_slot(key) == slot.index
                        await trio.lowlevel.checkpoint()
            except FuseblkError as err:
                assert key in BAD and err.errno == errno.EIO
                outcome["failed"] += 1
            else:
                outcome["ok"] += 1

    async def evictor() -> None:
        for key_index in evictions:
            try:
                await profile.evict_key(KEYS[key_index])
            except FuseblkError as err:
                assert err.errno == errno.EBUSY
                outcome["busy"] += 1
            else:
                assert profile.find_slot(KEYS[key_index]) is None
                outcome["evicted"] += 1
            await trio.lowlevel.checkpoint()

    with trio.fail_after(20):  # a deadlock guard, not a measurement
        async with trio.open_nursery() as nursery:
            for plan in plans:
                nursery.start_soon(bio_task, plan)
            nursery.start_soon(evictor)

    assert outcome["ok"] + outcome["failed"] == sum(len(plan) for plan in plans)
    assert outcome["evicted"] + outcome["busy"] == len(evictions)
    assert [row.refs for row in profile.slot_table()] == [0] * num_slots
    assert sorted(profile.idle_order()) == list(range(num_slots))
    counters = profile.counters
    assert counters["hits"] + counters["misses"] == outcome["ok"] + outcome["failed"]
    assert counters["program_errors"] == outcome["failed"]
    assert counters["programs"] + counters["program_errors"] == counters["misses"]
    # A key is never programmed into two slots at once.
    programmed = [row.key_id for row in profile.slot_table() if row.programmed]
    assert len(programmed) == len(set(programmed))
