"""blk_crypto_bio_prep: a context goes inline when the device supports it, else to the fallback;
eviction reaches the devices and the fallback."""

from __future__ import annotations

import errno
import os

import pytest
from device_helpers import MemDevice, MemKeyslotHardware, make_key

from fuseblk.bio import Bio
from fuseblk.blkcrypto.block_layer import BlockLayer
from fuseblk.blkcrypto.fallback import CryptoFallback
from fuseblk.blkcrypto.keyslot_manager import CryptoProfile
from fuseblk.capabilities import CryptoCapabilities, dus_mask
from fuseblk.ciphers import get_cipher
from fuseblk.crypt_context import BioCryptContext
from fuseblk.errors import FuseblkError
from fuseblk.key import KeyType
from fuseblk.modes import CryptoMode

XTS_4K = CryptoCapabilities({CryptoMode.AES_256_XTS: dus_mask(4096)}, 8, KeyType.RAW)
KEY = make_key(1, dus=4096, dun_bytes=8)


def inline_device() -> MemDevice:
    return MemDevice(
        "ufs0", profile=CryptoProfile(XTS_4K, 2, MemKeyslotHardware(2), name="ufs"), noise=True
    )


class PerTargetDevice(MemDevice):
    """Stands in for a mapped device with ``fallback=target``: it takes every context itself."""

    fallback_per_target = True

    async def submit(self, bio: Bio) -> None:
        self.bios.append(bio)


async def test_bio_without_context_goes_straight_to_the_device() -> None:
    blk, dev = BlockLayer(), MemDevice(noise=True)
    await blk.submit_bio(dev, Bio.write(0, b"x" * 512))
    assert dev.data[:512] == b"x" * 512
    assert blk.fallback.counters.snapshot() == {}


async def test_supported_context_goes_to_the_device_with_its_context() -> None:
    blk, dev = BlockLayer(), inline_device()
    ctx = BioCryptContext.at(KEY, 3)
    plain = os.urandom(8192)
    await blk.submit_bio(dev, Bio.write(0, plain, ctx))
    assert dev.bios[0].crypt_ctx == ctx
    assert dev.data[:8192] == get_cipher(KEY).encrypt(plain, 3)
    assert blk.fallback.counters["bios"] == 0


async def test_unsupported_context_is_encrypted_by_the_fallback() -> None:
    blk = BlockLayer()
    for dev in (MemDevice(noise=True), inline_device()):
        key = (
            make_key(2, dus=512, dun_bytes=16) if dev.crypto_profile else KEY
        )  # 512-byte units: not inline
        ctx = BioCryptContext.at(key, 9)
        plain = os.urandom(4096)
        await blk.submit_bio(dev, Bio.write(0, plain, ctx))
        assert dev.bios[-1].crypt_ctx is None
        assert dev.data[:4096] == get_cipher(key).encrypt(plain, 9)
    assert blk.fallback.counters["bios"] == 2


async def test_ciphertext_is_identical_inline_and_through_the_fallback() -> None:
    blk = BlockLayer()
    inline, legacy = inline_device(), MemDevice(noise=True)
    ctx = BioCryptContext.at(KEY, (1 << 64) - 1)
    plain = os.urandom(3 * 4096)
    for dev in (inline, legacy):
        await blk.submit_bio(dev, Bio.write(4096, plain, ctx))
    assert inline.data[4096 : 4 * 4096] == legacy.data[4096 : 4 * 4096]
    legacy.data[:] = inline.data
    buf = bytearray(len(plain))
    await blk.submit_bio(legacy, Bio.read(4096, buf, ctx))
    assert buf == plain


async def test_misaligned_bio_is_einval_before_anything_is_submitted() -> None:
    blk, dev = BlockLayer(), inline_device()
    with pytest.raises(FuseblkError) as err:
        await blk.submit_bio(dev, Bio.write(0, bytes(4096 + 512), BioCryptContext.at(KEY, 0)))
    assert err.value.errno == errno.EINVAL and dev.bios == []


async def test_unsupported_with_fallback_disabled_is_eopnotsupp() -> None:
    blk, dev = BlockLayer(CryptoFallback(enabled=False)), MemDevice(noise=True)
    with pytest.raises(FuseblkError) as err:
        await blk.submit_bio(dev, Bio.read(0, bytearray(4096), BioCryptContext.at(KEY, 0)))
    assert err.value.errno == errno.EOPNOTSUPP and dev.bios == []


async def test_device_that_falls_back_per_target_receives_the_context() -> None:
    blk, dev = BlockLayer(), PerTargetDevice()
    ctx = BioCryptContext.at(KEY, 0)
    await blk.submit_bio(dev, Bio.write(0, bytes(4096), ctx))
    assert dev.bios[0].crypt_ctx == ctx and blk.fallback.counters["bios"] == 0


async def test_flush_with_a_context_reaches_the_device() -> None:
    blk, dev = BlockLayer(), MemDevice(noise=True)
    await blk.submit_bio(dev, Bio.flush().with_ctx(BioCryptContext.at(KEY, 0)))
    assert [b.op.value for b in dev.bios] == ["flush"]


async def test_evict_key_reaches_every_device_and_the_fallback() -> None:
    blk, inline, legacy = BlockLayer(), inline_device(), MemDevice(noise=True)
    ctx = BioCryptContext.at(KEY, 0)
    for dev in (inline, legacy):
        await blk.submit_bio(dev, Bio.write(0, bytes(4096), ctx))
    assert inline.crypto_profile is not None and inline.crypto_profile.find_slot(KEY) is not None
    assert blk.fallback.profile.find_slot(KEY) is not None
    await blk.evict_key(KEY, [inline, legacy])
    assert inline.crypto_profile.find_slot(KEY) is None
    assert blk.fallback.profile.find_slot(KEY) is None


async def test_evict_key_in_use_is_ebusy_after_every_other_place_was_evicted() -> None:
    blk, inline = BlockLayer(), inline_device()
    await blk.submit_bio(inline, Bio.write(0, bytes(4096), BioCryptContext.at(KEY, 0)))
    await blk.fallback.submit(
        MemDevice(noise=True), Bio.write(0, bytes(4096), BioCryptContext.at(KEY, 0))
    )
    assert inline.crypto_profile is not None
    async with inline.crypto_profile.keyslot(KEY):
        with pytest.raises(FuseblkError) as err:
            await blk.evict_key(KEY, [inline])
    assert err.value.errno == errno.EBUSY
    assert blk.fallback.profile.find_slot(KEY) is None


async def test_a_key_served_inline_falls_back_once_the_profile_stops_supporting_it() -> None:
    blk, dev = BlockLayer(), inline_device()
    ctx = BioCryptContext.at(KEY, 0)
    await blk.submit_bio(dev, Bio.write(0, os.urandom(4096), ctx))
    assert dev.bios[-1].crypt_ctx == ctx
    profile = dev.crypto_profile
    assert profile is not None
    profile.caps = CryptoCapabilities({CryptoMode.AES_256_XTS: dus_mask(512)}, 8, KeyType.RAW)
    await blk.submit_bio(dev, Bio.write(4096, os.urandom(4096), ctx))
    assert dev.bios[-1].crypt_ctx is None
    assert blk.fallback.counters["bios"] == 1
