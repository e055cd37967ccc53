"""Hardware-wrapped keys in tables: default-key's ``wrappedkey_v0``, inlinecrypt's
``keytype:hw-wrapped``, and ``blk_crypto_start_using_key`` refusing what no path can serve."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from device_helpers import MemDevice
from dm_helpers import DeviceEnv

from fuseblk.bio import Bio
from fuseblk.blkcrypto.block_layer import BlockLayer
from fuseblk.capabilities import CryptoCapabilities, dus_mask
from fuseblk.dm.manager import DeviceManager
from fuseblk.dm.targets.base import TargetArgError
from fuseblk.dm.targets.default_key import DefaultKeyTarget
from fuseblk.errors import FuseblkError, TableError
from fuseblk.hw.factory import create_backend
from fuseblk.hw.profiles import load_profile
from fuseblk.key import BlkCryptoKey, KeyType
from fuseblk.modes import CryptoMode

XTS = CryptoMode.AES_256_XTS
BLOB = bytes(range(200, 248))  # a 48-byte "ephemerally-wrapped" key: only its size is checked here
BLOB_HEX = BLOB.hex()
RAW_HEX = bytes(range(64)).hex()
SIZE = 1 << 20

WRAPPED_ONLY = """\
name = "wrapped-only"
description = "Qualcomm ICE with hardware key management: wrapped keys only"
kind = "keyslots"
keyslots = 16
max_dun_bytes = 8
key_types = ["hw_wrapped"]

[modes]
"AES-256-XTS" = [512, 4096]
"""

TABLES = {
    "default-key": f"default-key aes-xts-plain64 {BLOB_HEX} 0 disk 0 1 wrappedkey_v0",
    "inlinecrypt": f"inlinecrypt aes-xts-plain64 {BLOB_HEX} 0 disk 0 1 keytype:hw-wrapped",
}


def wrapped_caps(key_types: KeyType = KeyType.HW_WRAPPED) -> CryptoCapabilities:
    return CryptoCapabilities({XTS: dus_mask(512, 4096)}, 8, key_types)


async def manager_with(tmp_path: Path, hardware: str) -> DeviceManager:
    """A manager with one backend ``disk`` of ``hardware``: a profile name, or ``wrapped-only``."""
    profile = hardware
    if hardware == "wrapped-only":
        path = tmp_path / "wrapped-only.toml"
        path.write_text(WRAPPED_ONLY)
        profile = str(path)
    dm = DeviceManager()
    dm.add_device(create_backend(tmp_path / "disk.img", SIZE, load_profile(profile), name="disk"))
    return dm


# ---- blk_crypto_start_using_key ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("caps", "key_type", "refused"),
    [
        (wrapped_caps(), KeyType.HW_WRAPPED, False),  # natively supported
        (wrapped_caps(KeyType.RAW), KeyType.HW_WRAPPED, True),  # raw-only hardware
        (None, KeyType.HW_WRAPPED, True),  # no inline encryption: the fallback takes raw only
        (wrapped_caps(), KeyType.RAW, False),  # wrapped-only hardware: the fallback takes it
        (None, KeyType.RAW, False),  # the fallback
    ],
)
def test_start_using_key_refuses_only_a_wrapped_key_without_native_support(
    caps: CryptoCapabilities | None, key_type: KeyType, refused: bool
) -> None:
    dev = MemDevice(caps=caps)
    raw = BLOB if key_type == KeyType.HW_WRAPPED else bytes(64)
    key = BlkCryptoKey.create(XTS, raw, 4096, 8, key_type)
    if not refused:
        BlockLayer().start_using_key(dev, key)
        return
    with pytest.raises(FuseblkError) as info:
        BlockLayer().start_using_key(dev, key)
    assert info.value.errno == errno.EOPNOTSUPP
    assert info.value.message == "mem0: no support for wrapped keys"


# ---- default-key wrappedkey_v0 ---------------------------------------------------------------------


def default_key(table: str, caps: CryptoCapabilities | None = None) -> DefaultKeyTarget:
    env = DeviceEnv({"mem": MemDevice(size=SIZE, caps=caps)})
    return DefaultKeyTarget(env, 0, SIZE // 2, table.split())


@pytest.mark.parametrize("size", [32, 48, 64, 128])
def test_wrappedkey_v0_takes_an_ephemeral_blob_of_32_to_128_bytes(size: int) -> None:
    blob = os.urandom(size)
    target = default_key(f"aes-xts-plain64 {blob.hex()} 0 mem 0 1 wrappedkey_v0", wrapped_caps())
    assert target.key.key_type == KeyType.HW_WRAPPED
    assert target.key.raw == blob
    assert target.key.mode is XTS


@pytest.mark.parametrize("size", [0, 16, 31, 129, 200])
def test_wrappedkey_v0_refuses_a_blob_outside_32_to_128_bytes(size: int) -> None:
    with pytest.raises(TargetArgError) as info:
        default_key(f"aes-xts-plain64 {'ab' * size or '-'} 0 mem 0 1 wrappedkey_v0", wrapped_caps())
    assert info.value.field == "key"
    assert info.value.errno is None


def test_wrappedkey_v0_with_adiantum_parses_but_no_hardware_takes_it() -> None:
    """Android accepts either cipher with a wrapped key; only AES-256-XTS hardware exists."""
    with pytest.raises(TargetArgError) as info:
        default_key(
            f"xchacha12,aes-adiantum-plain64 {'ab' * 32} 0 mem 0 1 wrappedkey_v0", wrapped_caps()
        )
    assert info.value.errno == errno.EOPNOTSUPP


def test_wrappedkey_v0_table_and_status_hide_the_blob() -> None:
    target = default_key(
        f"aes-xts-plain64 {BLOB_HEX} 8 mem 0 4 wrappedkey_v0 sector_size:4096 iv_large_sectors "
        "allow_discards",
        wrapped_caps(),
    )
    assert target.table_args() == (
        "aes-xts-plain64 - 8 mem0 0 4 allow_discards sector_size:4096 iv_large_sectors wrappedkey_v0"
    )
    assert target.table_args(show_keys=True).split()[1] == BLOB_HEX
    assert target.status().endswith(" key_type=hw-wrapped")
    assert BLOB_HEX not in target.status()


# ---- table loads refused: EOPNOTSUPP, nothing lost, the live table as it was -----------------------


@pytest.mark.parametrize("target", sorted(TABLES))
@pytest.mark.parametrize("hardware", ["ufs", "none"])
async def test_a_wrapped_key_over_raw_only_hardware_or_the_fallback_is_refused(
    tmp_path: Path, target: str, hardware: str
) -> None:
    dm = await manager_with(tmp_path, hardware)
    try:
        with pytest.raises(TableError) as info:
            await dm.create("vault", f"0 2048 {TABLES[target]}")
        assert info.value.errno == errno.EOPNOTSUPP
        assert "Error starting to use blk-crypto" in info.value.message
        assert "no support for wrapped keys" in info.value.message
        assert "\n" not in info.value.message
        assert BLOB_HEX not in info.value.message
        assert "vault" not in dm.names()
    finally:
        await dm.close()


@pytest.mark.parametrize("target", sorted(TABLES))
async def test_a_refused_reload_leaves_the_live_table_and_its_data(
    tmp_path: Path, target: str
) -> None:
    dm = await manager_with(tmp_path, "ufs")
    try:
        live = f"0 2048 default-key aes-xts-plain64 {RAW_HEX} 0 disk 0"
        dev = await dm.create("vault", live)
        data = os.urandom(8192)
        await dev.submit(Bio.write(4096, data))
        with pytest.raises(TableError) as info:
            await dm.load("vault", f"0 2048 {TABLES[target]}")
        assert info.value.errno == errno.EOPNOTSUPP
        assert dm.info("vault")["tables"] == ["LIVE"]
        assert dm.table("vault", show_keys=True) == live + "\n"
        back = bytearray(len(data))
        await dev.submit(Bio.read(4096, back))
        assert back == data
    finally:
        await dm.close()


@pytest.mark.parametrize("target", sorted(TABLES))
async def test_a_wrapped_key_loads_over_wrapped_key_hardware_and_stacks_over_it(
    tmp_path: Path, target: str
) -> None:
    dm = await manager_with(tmp_path, "wrapped-only")
    try:
        await dm.create("base", "0 2048 linear disk 0")
        await dm.create("vault", f"0 2048 {TABLES[target].replace(' disk ', ' base ')}")
        assert BLOB_HEX not in dm.table("vault") and BLOB_HEX not in dm.status("vault")
        assert BLOB_HEX in dm.table("vault", show_keys=True)
    finally:
        await dm.close()


async def test_a_raw_key_over_wrapped_only_hardware_goes_through_the_fallback(
    tmp_path: Path,
) -> None:
    dm = await manager_with(tmp_path, "wrapped-only")
    try:
        dev = await dm.create("vault", f"0 2048 default-key aes-xts-plain64 {RAW_HEX} 0 disk 0")
        data = os.urandom(4096)
        await dev.submit(Bio.write(0, data))
        back = bytearray(4096)
        await dev.submit(Bio.read(0, back))
        assert back == data
        assert dm.block_layer.fallback.counters.get("bios", 0) == 2
    finally:
        await dm.close()


async def test_a_stack_over_raw_and_wrapped_hardware_offers_no_wrapped_keys(tmp_path: Path) -> None:
    """The mapped device's profile is the intersection: a wrapped key is refused above it."""
    dm = await manager_with(tmp_path, "wrapped-only")
    try:
        dm.add_device(
            create_backend(tmp_path / "raw.img", SIZE, load_profile("ufs"), name="rawdisk")
        )
        await dm.create("base", "0 1024 linear disk 0\n1024 1024 linear rawdisk 0")
        with pytest.raises(TableError) as info:
            await dm.create("vault", f"0 2048 {TABLES['inlinecrypt'].replace(' disk ', ' base ')}")
        assert info.value.errno == errno.EOPNOTSUPP
    finally:
        await dm.close()
