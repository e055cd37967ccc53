"""Key eviction through mapped devices: every device ever touched, the fallback too; EBUSY propagates."""

from __future__ import annotations

import errno

import pytest
from device_helpers import XTS, MemDevice, caps, make_key
from dm_helpers import manager_over, pattern, write

from fuseblk.crypt_context import BioCryptContext
from fuseblk.errors import FuseblkError

UFS = caps({XTS: (512, 4096)}, 8)


async def test_evict_walks_the_stack_down_to_the_hardware():
    a, b = MemDevice("a", caps=UFS), MemDevice("b", caps=UFS)
    dm = manager_over(a, b)
    await dm.create("lower", "0 32 striped 2 8 a 0 b 0")
    upper = await dm.create("upper", "0 32 linear lower 0")
    key = make_key(1)
    await write(upper, 0, pattern(16384), BioCryptContext.at(key, 0))
    assert (
        a.crypto_profile.find_slot(key) is not None and b.crypto_profile.find_slot(key) is not None
    )
    await dm.evict_key("upper", key)
    assert a.crypto_profile.find_slot(key) is None and b.crypto_profile.find_slot(key) is None


async def test_evict_through_the_device_profile_forwards_like_the_kernel():
    a = MemDevice("a", caps=UFS)
    dm = manager_over(a)
    md = await dm.create("d", "0 32 linear a 0")
    key = make_key(2)
    await write(md, 0, pattern(4096), BioCryptContext.at(key, 0))
    await md.crypto_profile.evict_key(key)  # the passthrough profile's ops walk the devices
    assert a.crypto_profile.find_slot(key) is None


async def test_evict_reaches_devices_of_tables_that_are_no_longer_live():
    a, b = MemDevice("a", caps=UFS), MemDevice("b", caps=UFS)
    dm = manager_over(a, b)
    md = await dm.create("d", "0 32 linear a 0")
    key = make_key(3)
    await write(md, 0, pattern(4096), BioCryptContext.at(key, 0))
    await dm.load("d", "0 32 linear b 0")
    await dm.resume("d")
    await dm.evict_key("d", key)
    assert a.crypto_profile.find_slot(key) is None  # beyond the kernel: every device ever touched


async def test_evict_also_drops_the_key_from_the_fallback():
    plain = MemDevice("plain")
    dm = manager_over(plain)
    fallback = dm.block_layer.fallback
    md = await dm.create("d", "0 32 linear plain 0")
    key = make_key(4)
    await write(md, 0, pattern(4096), BioCryptContext.at(key, 0))
    assert fallback.profile.find_slot(key) is not None
    await dm.evict_key("d", key)
    assert fallback.profile.find_slot(key) is None


async def test_evicting_a_key_in_use_below_is_ebusy_and_other_devices_are_still_evicted():
    a, b = MemDevice("a", caps=UFS), MemDevice("b", caps=UFS)
    dm = manager_over(a, b)
    md = await dm.create("d", "0 16 linear a 0\n16 16 linear b 0")
    key = make_key(5)
    await write(md, 0, pattern(16384), BioCryptContext.at(key, 0))
    held = await a.crypto_profile.get_keyslot(key)  # a bio in flight on a holds the slot
    with pytest.raises(FuseblkError) as info:
        await dm.evict_key("d", key)
    assert info.value.errno == errno.EBUSY
    assert b.crypto_profile.find_slot(key) is None and a.crypto_profile.find_slot(key) is not None
    a.crypto_profile.put_keyslot(held)
    await dm.evict_key("d", key)
    assert a.crypto_profile.find_slot(key) is None


async def test_evicting_a_key_never_used_succeeds():
    dm = manager_over(MemDevice("a", caps=UFS))
    await dm.create("d", "0 16 linear a 0")
    await dm.evict_key("d", make_key(6))


class ForwardingDisk(MemDevice):
    """A device whose eviction is its own business (as a hardware engine's is)."""

    def __init__(self, name: str) -> None:
        super().__init__(name, caps=UFS)
        self.evicted: list[str] = []

    async def evict_key(self, key) -> None:
        self.evicted.append(key.key_id)
        await super().evict_key(key)


async def test_eviction_reaches_each_device_through_its_own_evict_key():
    disk = ForwardingDisk("a")
    dm = manager_over(disk)
    await dm.create("lower", "0 32 linear a 0")
    await dm.create("upper", "0 32 linear lower 0")
    key = make_key(7)
    await write(dm.get("upper"), 0, pattern(4096), BioCryptContext.at(key, 0))
    await dm.evict_key("upper", key)
    assert disk.evicted == [key.key_id] and disk.crypto_profile.find_slot(key) is None


async def test_raw_key_without_a_dun_width_is_evicted_under_every_width():
    a = MemDevice("a", caps=UFS)
    dm = manager_over(a)
    md = await dm.create("d", "0 32 linear a 0")
    key = make_key(8, dun_bytes=2)
    await write(md, 0, pattern(4096), BioCryptContext.at(key, 0))
    await dm.evict_raw_key("d", XTS, key.raw, 4096, dun_bytes=8)  # another key: nothing
    assert a.crypto_profile.find_slot(key) is not None
    await dm.evict_raw_key("d", XTS, key.raw, 4096)
    assert a.crypto_profile.find_slot(key) is None
