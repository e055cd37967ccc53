"""dm-default-key: attaching (key, DUN) to bios, passing others' contexts through, eviction."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest
from device_helpers import MemDevice, make_key, xts_hardware
from dm_helpers import DeviceEnv, image_manager

from fuseblk.bio import Bio, BioOp
from fuseblk.blkcrypto.block_layer import BlockLayer
from fuseblk.ciphers import get_cipher
from fuseblk.crypt_context import BioCryptContext
from fuseblk.dm.manager import DeviceManager
from fuseblk.dm.targets.base import TargetArgError
from fuseblk.dm.targets.default_key import DefaultKeyTarget
from fuseblk.dm.targets.registry import get_target
from fuseblk.errors import FuseblkError, TableError
from fuseblk.hw.factory import create_backend
from fuseblk.hw.profiles import load_profile
from fuseblk.key import BlkCryptoKey
from fuseblk.modes import CryptoMode

KEY64 = bytes(range(100, 164))
HEX64 = KEY64.hex()
DEV_SIZE = 1 << 20


def default_key(
    table: str,
    mem: MemDevice | None = None,
    length: int = DEV_SIZE // 2,
    block_layer: BlockLayer | None = None,
) -> DefaultKeyTarget:
    env = DeviceEnv({"mem": mem or MemDevice(size=DEV_SIZE, noise=True)}, block_layer=block_layer)
    return DefaultKeyTarget(env, 0, length, table.split())


def test_default_key_is_registered_and_passes_crypto() -> None:
    assert get_target("default-key") is DefaultKeyTarget
    assert DefaultKeyTarget.passes_crypto is True


@pytest.mark.parametrize(
    ("table", "field"),
    [
        ("", "cipher"),
        ("aes-xts-plain64", "key"),
        (f"aes-xts-plain64 {HEX64} 0 mem", "offset"),
        (f"aes-cbc-essiv:sha256 {'00' * 16} 0 mem 0", "cipher"),
        (f"capi:xts(aes)-plain64 {HEX64} 0 mem 0", "cipher"),
        (f"aes-xts-plain {HEX64} 0 mem 0", "cipher"),
        (f"aes-xts-plain64 {'00' * 32} 0 mem 0", "key"),
        (f"xchacha12,aes-adiantum-plain64 {HEX64} 0 mem 0", "key"),
        ("aes-xts-plain64 :64:logon:desc 0 mem 0", "key"),
        (f"aes-xts-plain64 {HEX64} z mem 0", "iv_offset"),
        (f"aes-xts-plain64 {HEX64} 4 mem 0 2 sector_size:4096 iv_large_sectors", "iv_offset"),
        (f"aes-xts-plain64 {HEX64} 0 other 0", "device"),
        (f"aes-xts-plain64 {HEX64} 0 mem 2000", "offset"),
        (f"aes-xts-plain64 {HEX64} 0 mem 0 5 a b c d e", "#opt_params"),
        (f"aes-xts-plain64 {HEX64} 0 mem 0 1 sector_size:4096", "option 'iv_large_sectors'"),
        (
            f"aes-xts-plain64 {HEX64} 0 mem 0 2 sector_size:3000 iv_large_sectors",
            "option 'sector_size:3000'",
        ),
        (f"aes-xts-plain64 {'00' * 16} 0 mem 0 1 wrappedkey_v0", "key"),
        (f"aes-xts-plain64 {HEX64} 0 mem 0 1 same_cpu_crypt", "option 'same_cpu_crypt'"),
    ],
)
def test_every_malformed_table_names_the_field(table: str, field: str) -> None:
    with pytest.raises(TargetArgError) as info:
        default_key(table)
    assert info.value.field == field
    assert HEX64 not in str(info.value)


def test_wrong_cipher_lists_the_supported_ones() -> None:
    with pytest.raises(TargetArgError, match="xchacha12,aes-adiantum-plain64"):
        default_key(f"aes-cbc-essiv:sha256 {'00' * 16} 0 mem 0")


def test_key_is_raw_with_sector_size_data_units() -> None:
    target = default_key(f"aes-xts-plain64 {HEX64} 0 mem 0 2 sector_size:4096 iv_large_sectors")
    # 512 KiB of 4096-byte units: DUNs 0..127 fit in one byte
    assert target.key == BlkCryptoKey.create(CryptoMode.AES_256_XTS, KEY64, 4096, 1)
    assert target.io_granularity == 4096


def test_iv_offset_plus_length_stays_a_u64_sector() -> None:
    length = DEV_SIZE // 2
    last = (1 << 64) - (length >> 9)
    opts = " 2 sector_size:4096 iv_large_sectors"
    target = default_key(f"aes-xts-plain64 {HEX64} {last} mem 0{opts}", length=length)
    assert target.key.dun_bytes == 8  # the largest DUN, (2^64 - 1) >> 3, fits in 8 bytes
    with pytest.raises(TargetArgError) as info:
        default_key(f"aes-xts-plain64 {HEX64} {last + 8} mem 0{opts}", length=length)
    assert info.value.field == "iv_offset"


@pytest.mark.parametrize(
    ("iv_offset", "length", "sector_size", "dun_bytes"),
    [
        (0, 512, 512, 1),  # largest DUN 0: Android would ask for 0 bytes and fail
        (0, 256 * 512, 512, 1),  # largest DUN 255
        (0, 257 * 512, 512, 2),  # largest DUN 256
        (1 << 24, 512, 512, 4),  # the offset counts: largest DUN 2^24
        (8 * ((1 << 18) - 1), 4096, 4096, 3),  # largest DUN 2^18 - 1, as on the 1 GiB secure
        ((1 << 35) - 8, 4096, 4096, 4),  # largest DUN 2^32 - 1: still 32 bits
        (1 << 35, 4096, 4096, 5),  # largest DUN 2^32: no longer fits eMMC's 32-bit DUN
    ],
)
def test_dun_bytes_are_the_fewest_that_hold_the_largest_dun(
    iv_offset: int, length: int, sector_size: int, dun_bytes: int
) -> None:
    opts = f" 2 sector_size:{sector_size} iv_large_sectors" if sector_size != 512 else ""
    target = default_key(f"aes-xts-plain64 {HEX64} {iv_offset} mem 0{opts}", length=length)
    assert target.key.dun_bytes == dun_bytes


def test_status_names_the_key_by_identifier_and_configuration() -> None:
    target = default_key(
        f"aes-xts-plain64 {HEX64} 0 mem 0 2 sector_size:4096 iv_large_sectors", length=1 << 20
    )
    key = target.key
    assert target.status() == (
        f"AES-256-XTS key_id={key.key_id} data_unit_size=4096 dun_bytes={key.dun_bytes}"
    )
    assert HEX64 not in target.status()


def test_table_hides_the_key_unless_asked() -> None:
    target = default_key(
        f"aes-xts-plain64 {HEX64} 8 mem 16 3 iv_large_sectors allow_discards sector_size:4096"
    )
    assert (
        target.table_args()
        == "aes-xts-plain64 - 8 mem0 16 3 allow_discards sector_size:4096 iv_large_sectors"
    )
    assert target.table_args(show_keys=True).split()[1] == HEX64


async def test_bios_get_the_key_and_the_android_dun() -> None:
    mem = MemDevice(size=DEV_SIZE, profile=xts_hardware(), noise=True)
    target = default_key(
        f"aes-xts-plain64 {HEX64} 8 mem 64 2 sector_size:4096 iv_large_sectors", mem
    )
    data = os.urandom(2 * 4096)
    await target.map(Bio.write(3 * 4096, data))
    (sent,) = mem.bios
    assert sent.offset == 64 * 512 + 3 * 4096
    assert sent.crypt_ctx is not None and sent.crypt_ctx.key == target.key
    # dun = (iv_offset + sector_in_target) >> (log2(4096) - 9) = (8 + 24) >> 3
    assert sent.crypt_ctx.dun_int == 4
    cipher = get_cipher(target.key)
    assert bytes(mem.data[sent.offset : sent.offset + len(data)]) == cipher.encrypt(data, 4)
    back = bytearray(len(data))
    await target.map(Bio.read(3 * 4096, back))
    assert back == data


async def test_512_byte_sectors_use_the_sector_number_as_dun() -> None:
    mem = MemDevice(size=DEV_SIZE, profile=xts_hardware(), noise=True)
    target = default_key(f"aes-xts-plain64 {HEX64} 1000 mem 0", mem)
    await target.map(Bio.write(7 * 512, bytes(1024)))
    assert mem.bios[0].crypt_ctx is not None and mem.bios[0].crypt_ctx.dun_int == 1007


async def test_bio_with_a_context_from_above_passes_through_untouched() -> None:
    mem = MemDevice(size=DEV_SIZE, profile=xts_hardware(), noise=True)
    target = default_key(f"aes-xts-plain64 {HEX64} 0 mem 8", mem)
    upper = BioCryptContext.at(make_key(5, dus=512, dun_bytes=8), 12345)
    await target.map(Bio.write(4096, bytes(4096), upper))
    (sent,) = mem.bios
    assert sent.crypt_ctx is upper
    assert sent.offset == 8 * 512 + 4096
    assert bytes(mem.data[sent.offset : sent.offset + 4096]) == get_cipher(upper.key).encrypt(
        bytes(4096), 12345
    )


async def test_device_without_support_gets_plain_bios_from_the_fallback() -> None:
    plain_mem = MemDevice(size=DEV_SIZE, noise=True)
    hw_mem = MemDevice(size=DEV_SIZE, profile=xts_hardware(), noise=True)
    table = f"aes-xts-plain64 {HEX64} 0 mem 0 2 sector_size:4096 iv_large_sectors"
    data = os.urandom(8192)
    for mem in (plain_mem, hw_mem):
        await default_key(table, mem).map(Bio.write(4096, data))
    assert [b.crypt_ctx for b in plain_mem.bios] == [None]
    assert plain_mem.data[4096 : 4096 + 8192] == hw_mem.data[4096 : 4096 + 8192]


async def test_start_not_on_a_data_unit_fails_with_eio() -> None:
    target = default_key(f"aes-xts-plain64 {HEX64} 0 mem 0 2 sector_size:4096 iv_large_sectors")
    with pytest.raises(FuseblkError) as info:
        await target.map(Bio.write(512, bytes(4096)))
    assert info.value.errno == errno.EIO


async def test_discards_need_allow_discards_and_carry_no_context() -> None:
    mem = MemDevice(size=DEV_SIZE, noise=True)
    with pytest.raises(FuseblkError) as info:
        await default_key(f"aes-xts-plain64 {HEX64} 0 mem 0", mem).map(Bio.discard(0, 4096))
    assert info.value.errno == errno.EOPNOTSUPP
    await default_key(f"aes-xts-plain64 {HEX64} 0 mem 2 1 allow_discards", mem).map(
        Bio.discard(0, 4096)
    )
    assert [(b.op, b.offset, b.crypt_ctx) for b in mem.bios] == [(BioOp.DISCARD, 1024, None)]


async def test_destroy_evicts_the_key_from_the_hardware_and_the_fallback() -> None:
    hw = xts_hardware()
    hw_target = default_key(
        f"aes-xts-plain64 {HEX64} 0 mem 0", MemDevice(size=DEV_SIZE, profile=hw, noise=True)
    )
    await hw_target.map(Bio.write(0, bytes(512)))
    assert hw.find_slot(hw_target.key) is not None
    await hw_target.destroy()
    assert hw.find_slot(hw_target.key) is None

    blk = BlockLayer()
    sw_target = default_key(
        f"aes-xts-plain64 {HEX64} 0 mem 0", MemDevice(size=DEV_SIZE, noise=True), block_layer=blk
    )
    await sw_target.map(Bio.write(0, bytes(512)))
    assert blk.fallback.profile.find_slot(sw_target.key) is not None
    await sw_target.destroy()
    assert blk.fallback.profile.find_slot(sw_target.key) is None


async def test_destroy_with_the_key_in_use_logs_and_keeps_going(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hw = xts_hardware()
    target = default_key(
        f"aes-xts-plain64 {HEX64} 0 mem 0", MemDevice(size=DEV_SIZE, profile=hw, noise=True)
    )
    async with hw.keyslot(target.key):
        with caplog.at_level(logging.WARNING):
            await target.destroy()
    assert "still in use" in caplog.text
    assert HEX64 not in caplog.text


# ---- end to end: DeviceManager over image files -------------------------------------------------


async def test_default_setup_stack_encrypts_inline_and_in_the_fallback(
    manager: DeviceManager, tmp_path: Path
) -> None:
    """secure = default-key over base = linear(inline.img) + linear(legacy.img), fallback=target."""
    inline = create_backend(tmp_path / "inline.img", 1 << 20, load_profile("ufs"), name="inline")
    legacy = create_backend(tmp_path / "legacy.img", 1 << 20, load_profile("none"), name="legacy")
    manager.add_device(inline)
    manager.add_device(legacy)
    await manager.create(
        "base", "0 1024 linear inline 0\n1024 1024 linear legacy 0", fallback="target"
    )
    secure_table = (
        f"0 2048 default-key aes-xts-plain64 {HEX64} 0 base 0 2 sector_size:4096 iv_large_sectors"
    )
    secure = await manager.create("secure", secure_table)
    assert secure.block_size == 4096
    assert manager.table("secure") == (
        "0 2048 default-key aes-xts-plain64 - 0 base 0 2 sector_size:4096 iv_large_sectors\n"
    )
    assert HEX64 in manager.table("secure", show_keys=True)

    data = os.urandom(256 * 1024)  # straddles the inline/legacy boundary at 512 KiB
    await secure.submit(Bio.write(384 * 1024, data))
    key = BlkCryptoKey.create(CryptoMode.AES_256_XTS, KEY64, 4096, 1)  # DUNs 0..255
    expected = get_cipher(key).encrypt(data, 384 * 1024 // 4096)
    stored = bytearray(256 * 1024)
    await inline.submit(Bio.read(384 * 1024, memoryview(stored)[: 128 * 1024]))
    await legacy.submit(Bio.read(0, memoryview(stored)[128 * 1024 :]))
    assert stored == expected
    assert inline.crypto_profile is not None and inline.crypto_profile.find_slot(key) is not None
    assert manager.block_layer.fallback.profile.find_slot(key) is not None
    back = bytearray(len(data))
    await secure.submit(Bio.read(384 * 1024, back))
    assert back == data

    await manager.remove("secure")
    assert inline.crypto_profile.find_slot(key) is None
    assert manager.block_layer.fallback.profile.find_slot(key) is None


async def test_malformed_table_names_line_target_and_field(
    manager: DeviceManager, tmp_path: Path
) -> None:
    manager.add_device(
        create_backend(tmp_path / "d.img", 1 << 20, load_profile("ufs"), name="disk")
    )
    with pytest.raises(TableError) as info:
        await manager.create(
            "bad", f"0 2048 default-key aes-xts-plain64 {HEX64} 0 disk 0 1 sector_size:4096"
        )
    assert info.value.errno == errno.EINVAL
    assert info.value.field == "default-key option 'iv_large_sectors'"
    assert HEX64 not in info.value.message


async def test_narrow_dun_hardware_encrypts_inline_when_the_target_is_small_enough(
    tmp_path: Path,
) -> None:
    """eMMC (CQHCI) takes 32-bit DUNs: Android's width lets default-key use it, not the fallback."""
    async with image_manager(tmp_path, {"emmc": (1 << 20, "emmc")}) as dm:
        table = f"0 2048 default-key aes-xts-plain64 {HEX64} 0 emmc 0 2 sector_size:4096 iv_large_sectors"
        secure = await dm.create("secure", table)
        data = os.urandom(64 * 1024)
        await secure.submit(Bio.write(128 * 1024, data))
        key = BlkCryptoKey.create(CryptoMode.AES_256_XTS, KEY64, 4096, 1)
        emmc = dm.backends()["emmc"]
        assert emmc.crypto_profile is not None and emmc.crypto_profile.find_slot(key) is not None
        assert dm.stats("emmc")["backends"]["emmc"].get("inline_bios", 0) >= 1
        assert dm.block_layer.fallback.profile.find_slot(key) is None
        stored = bytearray(len(data))
        await emmc.submit(Bio.read(128 * 1024, stored))
        assert stored == get_cipher(key).encrypt(data, 128 * 1024 // 4096)
        # the last data unit has the largest DUN, 255: still within the key's one byte
        last = os.urandom(4096)
        await secure.submit(Bio.write((1 << 20) - 4096, last))
        back = bytearray(4096)
        await secure.submit(Bio.read((1 << 20) - 4096, back))
        assert back == last
        await emmc.submit(Bio.read((1 << 20) - 4096, back))
        assert back == get_cipher(key).encrypt(last, 255)
