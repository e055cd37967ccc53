"""The software fallback: bounce-buffer writes, decrypt-after-read, its own keyslots."""

from __future__ import annotations

import errno
import os

import pytest
import trio
from device_helpers import MemDevice, make_key
from dm_helpers import manager_over

from fuseblk.bio import Bio
from fuseblk.blkcrypto.fallback import DEFAULT_NUM_SLOTS, MAX_NUM_SLOTS, CryptoFallback
from fuseblk.ciphers import get_cipher
from fuseblk.crypt_context import BioCryptContext
from fuseblk.dm.manager import DeviceManager
from fuseblk.errors import FuseblkError
from fuseblk.key import BlkCryptoKey, KeyType
from fuseblk.modes import CryptoMode

KEY = make_key(1, dus=512, dun_bytes=16)


class FillsThenFailsDevice(MemDevice):
    """A read that transfers the data and then reports an error (a late media error)."""

    async def submit(self, bio: Bio) -> None:
        assert bio.buf is not None
        bio.buf[:] = self.data[bio.offset : bio.end]
        raise FuseblkError(errno.EIO, "late media error")


async def test_write_stores_exactly_the_ciphertext_of_the_keys_cipher() -> None:
    dev, fallback = MemDevice(noise=True), CryptoFallback()
    plain = os.urandom(8 * 512)
    dun = (1 << 64) - 3  # the DUN carries into the second limb inside this bio
    await fallback.submit(dev, Bio.write(4096, plain, BioCryptContext.at(KEY, dun)))
    assert dev.data[4096 : 4096 + len(plain)] == get_cipher(KEY).encrypt(plain, dun)


async def test_write_never_modifies_the_callers_buffer() -> None:
    dev, fallback = MemDevice(noise=True), CryptoFallback()
    plain = bytearray(os.urandom(4096))
    before = bytes(plain)
    await fallback.submit(dev, Bio.write(0, plain, BioCryptContext.at(KEY, 5)))
    assert plain == before
    assert dev.bios[0].buf is not None and dev.bios[0].buf.obj is not plain


async def test_the_device_below_never_sees_the_context() -> None:
    dev, fallback = MemDevice(noise=True), CryptoFallback()
    ctx = BioCryptContext.at(KEY, 0)
    await fallback.submit(dev, Bio.write(0, bytes(1024), ctx))
    await fallback.submit(dev, Bio.read(0, bytearray(1024), ctx))
    assert [b.crypt_ctx for b in dev.bios] == [None, None]


async def test_read_decrypts_in_place_after_the_io() -> None:
    dev, fallback = MemDevice(noise=True), CryptoFallback()
    plain = os.urandom(3 * 512)
    dev.data[512 : 512 + len(plain)] = get_cipher(KEY).encrypt(plain, 77)
    buf = bytearray(len(plain))
    await fallback.submit(dev, Bio.read(512, buf, BioCryptContext.at(KEY, 77)))
    assert buf == plain


async def test_failed_read_propagates_and_leaves_the_buffer_undecrypted() -> None:
    dev, fallback = FillsThenFailsDevice(), CryptoFallback()
    buf = bytearray(1024)
    with pytest.raises(FuseblkError) as err:
        await fallback.submit(dev, Bio.read(0, buf, BioCryptContext.at(KEY, 0)))
    assert err.value.errno == errno.EIO
    assert buf == dev.data[:1024]  # what the device transferred, not its decryption
    assert fallback.counters["decrypt_units"] == 0


async def test_read_that_fails_before_transfer_leaves_the_buffer_alone() -> None:
    dev, fallback = MemDevice(noise=True), CryptoFallback()
    dev.fail_next = errno.EIO
    buf = bytearray(b"\xaa" * 512)
    with pytest.raises(FuseblkError):
        await fallback.submit(dev, Bio.read(0, buf, BioCryptContext.at(KEY, 0)))
    assert buf == b"\xaa" * 512


async def test_roundtrip_through_the_fallback_returns_the_plaintext() -> None:
    dev, fallback = MemDevice(noise=True), CryptoFallback()
    plain = os.urandom(64 * 1024)
    ctx = BioCryptContext.at(KEY, 1234)
    await fallback.submit(dev, Bio.write(8192, plain, ctx))
    buf = bytearray(len(plain))
    await fallback.submit(dev, Bio.read(8192, buf, ctx))
    assert buf == plain and dev.data[8192 : 8192 + len(plain)] != plain


async def test_disabled_fallback_is_eopnotsupp_naming_the_key() -> None:
    dev, fallback = MemDevice(noise=True), CryptoFallback(enabled=False)
    for bio in (Bio.write(0, bytes(512)), Bio.read(0, bytearray(512))):
        with pytest.raises(FuseblkError) as err:
            await fallback.submit(dev, bio.with_ctx(BioCryptContext.at(KEY, 0)))
        assert err.value.errno == errno.EOPNOTSUPP and KEY.key_id in str(err.value)
    assert dev.bios == []


async def test_hardware_wrapped_key_is_eopnotsupp() -> None:
    wrapped = BlkCryptoKey.create(
        CryptoMode.AES_256_XTS, os.urandom(100), 4096, key_type=KeyType.HW_WRAPPED
    )
    dev, fallback = MemDevice(noise=True), CryptoFallback()
    with pytest.raises(FuseblkError) as err:
        await fallback.submit(dev, Bio.write(0, bytes(4096), BioCryptContext.at(wrapped, 0)))
    assert err.value.errno == errno.EOPNOTSUPP and wrapped.key_id in str(err.value)
    assert wrapped.raw.hex() not in str(err.value)


async def test_misaligned_bio_is_einval_and_not_submitted() -> None:
    dev, fallback = MemDevice(noise=True), CryptoFallback()
    key4k = make_key(2, dus=4096, dun_bytes=16)
    with pytest.raises(FuseblkError) as err:
        await fallback.submit(dev, Bio.write(0, bytes(512), BioCryptContext.at(key4k, 0)))
    assert err.value.errno == errno.EINVAL and dev.bios == []


async def test_flush_and_discard_pass_through_without_the_context() -> None:
    dev, fallback = MemDevice(noise=True), CryptoFallback(enabled=False)
    ctx = BioCryptContext.at(KEY, 0)
    await fallback.submit(dev, Bio.flush().with_ctx(ctx))
    await fallback.submit(dev, Bio.discard(0, 4096).with_ctx(ctx))
    assert [(b.op.value, b.crypt_ctx) for b in dev.bios] == [("flush", None), ("discard", None)]


async def test_a_large_bio_programs_its_key_once() -> None:
    dev, fallback = MemDevice(size=2 << 20, noise=True), CryptoFallback()
    plain = os.urandom(1 << 20)
    await fallback.submit(dev, Bio.write(0, plain, BioCryptContext.at(KEY, 0)))
    assert fallback.profile.counters["programs"] == 1
    assert fallback.counters["encrypt_units"] == (1 << 20) // 512


async def test_counters_count_bios_bytes_and_units() -> None:
    dev, fallback = MemDevice(noise=True), CryptoFallback()
    key4k = make_key(3, dus=4096, dun_bytes=16)
    await fallback.submit(dev, Bio.write(0, bytes(8192), BioCryptContext.at(key4k, 0)))
    await fallback.submit(dev, Bio.read(0, bytearray(4096), BioCryptContext.at(key4k, 0)))
    assert fallback.counters.snapshot() == {
        "bios": 2,
        "bytes": 12288,
        "decrypt_units": 1,
        "encrypt_units": 2,
    }


async def test_evict_key_drops_the_cached_key() -> None:
    dev, fallback = MemDevice(noise=True), CryptoFallback()
    await fallback.submit(dev, Bio.write(0, bytes(512), BioCryptContext.at(KEY, 0)))
    assert fallback.profile.find_slot(KEY) is not None
    await fallback.evict_key(KEY)
    assert fallback.profile.find_slot(KEY) is None
    await fallback.evict_key(KEY)  # already gone: still fine


async def test_evicting_a_key_in_use_by_the_fallback_is_ebusy() -> None:
    fallback = CryptoFallback()
    async with fallback.profile.keyslot(KEY):
        with pytest.raises(FuseblkError) as err:
            await fallback.evict_key(KEY)
    assert err.value.errno == errno.EBUSY


async def test_more_keys_than_fallback_slots_concurrently() -> None:
    dev, fallback = MemDevice(noise=True), CryptoFallback(num_slots=2)
    keys = [make_key(10 + i, dus=512, dun_bytes=16) for i in range(7)]
    plain = {i: os.urandom(2048) for i in range(len(keys))}

    async def writer_then_reader(i: int) -> None:
        ctx = BioCryptContext.at(keys[i], i * 1000)
        for _ in range(3):
            await fallback.submit(dev, Bio.write(i * 4096, plain[i], ctx))
            buf = bytearray(2048)
            await fallback.submit(dev, Bio.read(i * 4096, buf, ctx))
            assert buf == plain[i]

    with trio.fail_after(30):  # a deadlock guard, not a measurement
        async with trio.open_nursery() as nursery:
            for i in range(len(keys)):
                nursery.start_soon(writer_then_reader, i)
    for i, key in enumerate(keys):
        expected = get_cipher(key).encrypt(plain[i], i * 1000)
        assert dev.data[i * 4096 : i * 4096 + 2048] == expected
    assert fallback.counters["bios"] == 6 * len(keys)
    assert [row.refs for row in fallback.profile.slot_table()] == [0, 0]
    assert fallback.profile.counters["evictions"] > 0  # keys really competed for the slots


def test_device_manager_configures_its_own_fallback() -> None:
    default = DeviceManager().block_layer.fallback
    assert default.profile.num_slots == DEFAULT_NUM_SLOTS and default.enabled
    configured = DeviceManager(fallback_slots=3, fallback_enabled=False).block_layer.fallback
    assert configured is not default
    assert configured.profile.num_slots == 3 and not configured.enabled


async def test_two_managers_have_independent_fallbacks() -> None:
    first, second = manager_over(MemDevice("a")), manager_over(MemDevice("a"))
    for dm in (first, second):
        await dm.create("d", "0 64 linear a 0")
    await first.get("d").block_layer.submit_bio(
        first.get("d"), Bio.write(0, bytes(4096), BioCryptContext.at(KEY, 0))
    )
    one, two = first.block_layer.fallback, second.block_layer.fallback
    assert one.counters["bios"] == 1 and one.profile.find_slot(KEY) is not None
    assert two.counters.snapshot() == {} and two.profile.find_slot(KEY) is None
    assert second.stats()["fallback"] == {"profile": {}}
    await second.evict_key("d", KEY)
    assert one.profile.find_slot(KEY) is not None


def test_fallback_without_keyslots_is_refused() -> None:
    with pytest.raises(FuseblkError) as err:
        CryptoFallback(num_slots=0)
    assert err.value.errno == errno.EINVAL


def test_fallback_slot_count_above_the_maximum_is_einval_in_one_line() -> None:
    CryptoFallback(num_slots=MAX_NUM_SLOTS)
    with pytest.raises(FuseblkError) as err:
        DeviceManager(fallback_slots=MAX_NUM_SLOTS + 1)
    assert err.value.errno == errno.EINVAL
    assert str(MAX_NUM_SLOTS) in err.value.message and "\n" not in err.value.message


def test_fallback_supports_every_mode_and_data_unit_size_with_raw_keys() -> None:
    fallback = CryptoFallback()
    for mode in CryptoMode:
        for dus in (16, 512, 4096, 65536):
            key = BlkCryptoKey.create(mode, bytes(mode.key_size), dus)
            assert fallback.supports(key)
    assert fallback.profile.caps.max_dun_bytes == 32
    assert not CryptoFallback(enabled=False).supports(KEY)
