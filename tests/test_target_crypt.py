"""dm-crypt: table parsing, IV sector math, software encryption with bounce buffers."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest
import trio
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from device_helpers import MemDevice, make_key
from dm_helpers import DeviceEnv
from hypothesis import given, settings
from hypothesis import strategies as st

from fuseblk.bio import Bio, BioOp
from fuseblk.ciphers import get_cipher
from fuseblk.crypt_context import BioCryptContext
from fuseblk.dm.manager import DeviceManager
from fuseblk.dm.targets.base import TargetArgError
from fuseblk.dm.targets.cipher_spec import parse_crypt_cipher
from fuseblk.dm.targets.crypt import CryptTarget, iv_runs
from fuseblk.dm.targets.registry import get_target
from fuseblk.errors import FuseblkError, TableError
from fuseblk.hw.factory import create_backend
from fuseblk.hw.profiles import load_profile

KEY64 = bytes(range(64))
HEX64 = KEY64.hex()
DEV_SIZE = 1 << 20


def crypt(table: str, length: int = DEV_SIZE // 2, mem: MemDevice | None = None) -> CryptTarget:
    env = DeviceEnv({"mem": mem or MemDevice(size=DEV_SIZE, noise=True)})
    return CryptTarget(env, 0, length, table.split())


def xts_oracle(key: bytes, plaintext: bytes, tweak_sector: int) -> bytes:
    """AES-XTS straight from OpenSSL: dm-crypt's plain64 IV is the sector, little-endian."""
    enc = Cipher(algorithms.AES(key), modes.XTS(tweak_sector.to_bytes(16, "little"))).encryptor()
    return enc.update(plaintext) + enc.finalize()


def test_crypt_is_registered_and_does_not_pass_crypto() -> None:
    assert get_target("crypt") is CryptTarget
    assert CryptTarget.passes_crypto is False


@pytest.mark.parametrize(
    ("spec", "mode_name", "iv_bits"),
    [
        ("aes-xts-plain64", "AES-256-XTS", 64),
        ("aes-xts-plain", "AES-256-XTS", 32),
        ("capi:xts(aes)-plain64", "AES-256-XTS", 64),
        ("capi:xts(aes)-plain", "AES-256-XTS", 32),
        ("aes-cbc-essiv:sha256", "AES-128-CBC-ESSIV", 64),
        ("capi:cbc(aes)-essiv:sha256", "AES-128-CBC-ESSIV", 64),
        ("xchacha12,aes-adiantum-plain64", "Adiantum", 64),
        ("capi:adiantum(xchacha12,aes)-plain64", "Adiantum", 64),
        ("aes:1-xts-plain64", "AES-256-XTS", 64),
    ],
)
def test_cipher_specs_map_onto_blk_crypto_modes(spec: str, mode_name: str, iv_bits: int) -> None:
    parsed = parse_crypt_cipher(spec)
    assert (parsed.mode.sysfs_name, parsed.iv_bits, parsed.text) == (mode_name, iv_bits, spec)


BAD_TABLES = [
    ("", "cipher"),
    ("aes-xts-plain64", "key"),
    (f"aes-xts-plain64 {HEX64}", "iv_offset"),
    (f"aes-xts-plain64 {HEX64} 0", "device"),
    (f"aes-xts-plain64 {HEX64} 0 mem", "offset"),
    (f"aes-ecb {HEX64} 0 mem 0", "cipher"),
    (f"aes-xts-benbi {HEX64} 0 mem 0", "cipher"),
    (f"aes:2-xts-plain64 {HEX64} 0 mem 0", "cipher"),
    (f"aes-xts {HEX64} 0 mem 0", "cipher"),
    (f"capi:xts(aes) {HEX64} 0 mem 0", "cipher"),
    (f"aes-cbc-essiv {'00' * 16} 0 mem 0", "cipher"),
    (f"aes-xts-plain64 {HEX64[:-1]} 0 mem 0", "key"),
    (f"aes-xts-plain64 {'zz' * 64} 0 mem 0", "key"),
    (f"aes-xts-plain64 {'00' * 32} 0 mem 0", "key"),
    (f"aes-cbc-essiv:sha256 {'00' * 32} 0 mem 0", "key"),
    ("aes-xts-plain64 - 0 mem 0", "key"),
    (f"aes-xts-plain64 {HEX64} -1 mem 0", "iv_offset"),
    (f"aes-xts-plain64 {HEX64} x 0 mem 0", "iv_offset"),
    (f"aes-xts-plain64 {HEX64} {1 << 64} mem 0", "iv_offset"),
    (f"aes-xts-plain64 {HEX64} 1 mem 0 2 sector_size:4096 iv_large_sectors", "iv_offset"),
    (f"aes-xts-plain64 {HEX64} 0 nosuchdev 0", "device"),
    (f"aes-xts-plain64 {HEX64} 0 mem 0x10", "offset"),
    (f"aes-xts-plain64 {HEX64} 0 mem 1025", "offset"),
    (f"aes-xts-plain64 {HEX64} 0 mem 0 x", "#opt_params"),
    (f"aes-xts-plain64 {HEX64} 0 mem 0 2 allow_discards", "#opt_params"),
    (f"aes-xts-plain64 {HEX64} 0 mem 0 1 allow_discards extra", "#opt_params"),
    (f"aes-xts-plain64 {HEX64} 0 mem 0 7 a b c d e f g", "#opt_params"),
    (f"aes-xts-plain64 {HEX64} 0 mem 0 1 sector_size:1000", "option 'sector_size:1000'"),
    (f"aes-xts-plain64 {HEX64} 0 mem 0 1 sector_size:8192", "option 'sector_size:8192'"),
    (f"aes-xts-plain64 {HEX64} 0 mem 0 1 sector_size:256", "option 'sector_size:256'"),
    (f"aes-xts-plain64 {HEX64} 0 mem 0 1 integrity:28:aead", "option 'integrity:28:aead'"),
    (f"aes-xts-plain64 {HEX64} 0 mem 0 1 integrity_key_size:32", "option 'integrity_key_size:32'"),
    (f"aes-xts-plain64 {HEX64} 0 mem 0 1 frobnicate", "option 'frobnicate'"),
]


def test_iv_offset_plus_length_stays_a_u64_sector() -> None:
    sectors = (DEV_SIZE // 2) >> 9
    last = (1 << 64) - sectors  # the last data unit's IV sector is 2^64 - 1
    target = crypt(f"aes-xts-plain64 {HEX64} {last} mem 0")
    assert target.iv_offset == last
    with pytest.raises(TargetArgError) as info:
        crypt(f"aes-xts-plain64 {HEX64} {last + 1} mem 0")
    assert info.value.field == "iv_offset"


@pytest.mark.parametrize(("table", "field"), BAD_TABLES)
def test_every_malformed_table_names_the_field(table: str, field: str) -> None:
    with pytest.raises(TargetArgError) as info:
        crypt(table)
    assert info.value.field == field
    assert HEX64 not in str(info.value) and HEX64[:-1] not in str(info.value)


def test_length_not_a_multiple_of_sector_size_is_refused() -> None:
    with pytest.raises(TargetArgError) as info:
        crypt(f"aes-xts-plain64 {HEX64} 0 mem 0 1 sector_size:4096", length=4096 + 512)
    assert info.value.field == "option 'sector_size:4096'"


def test_keyring_keys_are_refused_by_name() -> None:
    with pytest.raises(TargetArgError, match="keyring keys are not supported"):
        crypt("aes-xts-plain64 :64:logon:cryptsetup:vol 0 mem 0")


def test_wrong_key_size_says_what_is_supported() -> None:
    with pytest.raises(TargetArgError) as info:
        crypt(f"aes-xts-plain64 {'00' * 32} 0 mem 0")
    message = str(info.value)
    assert "64 bytes" in message and "AES-256-XTS" in message and "AES-128-CBC-ESSIV" in message


def test_table_hides_the_key_unless_asked() -> None:
    target = crypt(
        f"aes-xts-plain64 {HEX64} 8 mem 16 3 allow_discards sector_size:4096 iv_large_sectors"
    )
    assert (
        target.table_args()
        == "aes-xts-plain64 - 8 mem0 16 3 allow_discards sector_size:4096 iv_large_sectors"
    )
    assert target.table_args(show_keys=True) == (
        f"aes-xts-plain64 {HEX64} 8 mem0 16 3 allow_discards sector_size:4096 iv_large_sectors"
    )
    assert HEX64 not in repr(target.key)


async def test_unrecognised_key_message_does_not_echo_the_key() -> None:
    # "dmsetup message DEV 0 key set HEX" rotates dm-crypt's key; fuseblk's crypt has no
    # messages, and the refusal must not repeat the key it was handed
    target = crypt(f"aes-xts-plain64 {HEX64} 0 mem 0")
    with pytest.raises(FuseblkError) as info:
        await target.message(["key", "set", HEX64])
    assert info.value.errno == errno.EINVAL and HEX64[:32] not in info.value.message


def test_performance_hints_are_accepted_and_echoed() -> None:
    target = crypt(f"aes-xts-plain64 {HEX64} 0 mem 0 2 no_read_workqueue same_cpu_crypt")
    assert target.table_args() == "aes-xts-plain64 - 0 mem0 0 2 same_cpu_crypt no_read_workqueue"


def test_sector_size_sets_io_granularity_and_data_unit() -> None:
    target = crypt(f"aes-xts-plain64 {HEX64} 0 mem 0 1 sector_size:4096")
    assert target.io_granularity == 4096
    assert target.key.data_unit_size == 4096


def test_iv_runs_split_where_plain_wraps_at_2_32() -> None:
    first = (1 << 32) - 2
    assert list(iv_runs(first, 1, 5, 32)) == [(0, 2, (1 << 32) - 2), (2, 3, 0)]
    assert list(iv_runs(first, 1, 5, 64)) == [(0, 5, first)]


def test_iv_runs_go_unit_by_unit_when_the_step_is_not_one() -> None:
    assert list(iv_runs(16, 8, 3, 64)) == [(0, 1, 16), (1, 1, 24), (2, 1, 32)]


async def test_write_encrypts_with_plain64_sector_ivs_matching_openssl() -> None:
    mem = MemDevice(size=DEV_SIZE, noise=True)
    target = crypt(f"aes-xts-plain64 {HEX64} 100 mem 64", mem=mem)
    data = os.urandom(3 * 512)
    await target.map(Bio.write(1024, data))
    stored = bytes(mem.data[64 * 512 + 1024 : 64 * 512 + 1024 + len(data)])
    # target offset 1024 is sector 2; iv_offset 100 => IV sectors 102, 103, 104
    expected = b"".join(xts_oracle(KEY64, data[i * 512 : (i + 1) * 512], 102 + i) for i in range(3))
    assert stored == expected


@pytest.mark.parametrize(
    ("options", "expected_ivs"),
    [
        # sector 16 + iv_offset 16 = 32, then +8 per 4096-byte unit (512-byte IV sectors)
        ("1 sector_size:4096", [32, 40]),
        # with iv_large_sectors the IV counts 4096-byte sectors: 32 / 8 = 4, then 5
        ("2 sector_size:4096 iv_large_sectors", [4, 5]),
    ],
)
async def test_sector_size_and_iv_large_sectors_dun_math(
    options: str, expected_ivs: list[int]
) -> None:
    mem = MemDevice(size=DEV_SIZE, noise=True)
    target = crypt(f"aes-xts-plain64 {HEX64} 16 mem 0 {options}", mem=mem)
    data = os.urandom(2 * 4096)
    await target.map(Bio.write(8192, data))
    expected = b"".join(
        xts_oracle(KEY64, data[i * 4096 : (i + 1) * 4096], iv) for i, iv in enumerate(expected_ivs)
    )
    assert bytes(mem.data[8192 : 8192 + len(data)]) == expected
    back = bytearray(len(data))
    await target.map(Bio.read(8192, back))
    assert back == data


@pytest.mark.parametrize(
    ("cipher", "second_iv"), [("aes-xts-plain", 0), ("aes-xts-plain64", 1 << 32)]
)
async def test_plain_wraps_at_2_32_and_plain64_does_not(cipher: str, second_iv: int) -> None:
    mem = MemDevice(size=DEV_SIZE, noise=True)
    target = crypt(f"{cipher} {HEX64} {(1 << 32) - 1} mem 0", mem=mem)
    data = os.urandom(1024)
    await target.map(Bio.write(0, data))
    expected = xts_oracle(KEY64, data[:512], (1 << 32) - 1) + xts_oracle(
        KEY64, data[512:], second_iv
    )
    assert bytes(mem.data[:1024]) == expected
    back = bytearray(1024)
    await target.map(Bio.read(0, back))
    assert back == data


async def test_write_uses_a_bounce_buffer_and_sends_no_context_down() -> None:
    mem = MemDevice(size=DEV_SIZE, noise=True)
    target = crypt(f"aes-xts-plain64 {HEX64} 0 mem 0", mem=mem)
    data = bytearray(os.urandom(4096))
    original = bytes(data)
    await target.map(Bio.write(0, data))
    assert data == original
    assert bytes(mem.data[:4096]) != original
    back = bytearray(4096)
    await target.map(Bio.read(0, back))
    assert back == original
    assert [b.crypt_ctx for b in mem.bios] == [None, None]


async def test_failed_read_is_not_decrypted() -> None:
    mem = MemDevice(size=DEV_SIZE, noise=True)
    target = crypt(f"aes-xts-plain64 {HEX64} 0 mem 0", mem=mem)
    mem.fail_next = errno.EIO
    buf = bytearray(b"\xaa" * 512)
    with pytest.raises(FuseblkError) as info:
        await target.map(Bio.read(0, buf))
    assert info.value.errno == errno.EIO
    assert buf == b"\xaa" * 512


async def test_bio_arriving_with_a_context_fails_with_eio() -> None:
    target = crypt(f"aes-xts-plain64 {HEX64} 0 mem 0")
    ctx = BioCryptContext.at(make_key(3, dus=512, dun_bytes=16), 0)
    with pytest.raises(FuseblkError) as info:
        await target.map(Bio.write(0, bytes(512), ctx))
    assert info.value.errno == errno.EIO


async def test_io_not_aligned_to_sector_size_fails_with_eio() -> None:
    target = crypt(f"aes-xts-plain64 {HEX64} 0 mem 0 1 sector_size:4096")
    with pytest.raises(FuseblkError) as info:
        await target.map(Bio.write(512, bytes(4096)))
    assert info.value.errno == errno.EIO


async def test_discards_need_allow_discards() -> None:
    target = crypt(f"aes-xts-plain64 {HEX64} 0 mem 0")
    with pytest.raises(FuseblkError) as info:
        await target.map(Bio.discard(0, 4096))
    assert info.value.errno == errno.EOPNOTSUPP


async def test_allowed_discards_are_remapped_down() -> None:
    mem = MemDevice(size=DEV_SIZE, noise=True)
    target = crypt(f"aes-xts-plain64 {HEX64} 0 mem 8 1 allow_discards", mem=mem)
    await target.map(Bio.discard(4096, 8192))
    assert [(b.op, b.offset, b.length) for b in mem.bios] == [(BioOp.DISCARD, 8 * 512 + 4096, 8192)]


async def test_flush_reaches_the_device() -> None:
    mem = MemDevice(size=DEV_SIZE, noise=True)
    target = crypt(f"aes-xts-plain64 {HEX64} 0 mem 0", mem=mem)
    await target.map(Bio.flush())
    assert [b.op for b in mem.bios] == [BioOp.FLUSH]


# ---- end to end: DeviceManager over image files -------------------------------------------------


async def test_crypt_device_over_an_image(manager: DeviceManager, tmp_path: Path) -> None:
    disk = create_backend(tmp_path / "disk.img", 2 << 20, load_profile("ufs"), name="disk")
    manager.add_device(disk)
    line = f"0 2048 crypt aes-xts-plain64 {HEX64} 0 disk 2048 2 sector_size:4096 iv_large_sectors"
    vol = await manager.create("vol", line)
    assert vol.crypto_profile is None  # crypt does not pass crypto through
    assert vol.block_size == 4096
    assert manager.table("vol") == line.replace(HEX64, "-") + "\n"
    assert manager.table("vol", show_keys=True) == line + "\n"
    assert manager.status("vol") == "0 2048 crypt\n"

    data = os.urandom(64 * 1024)
    await vol.submit(Bio.write(8192, data))
    stored = bytearray(len(data))
    await disk.submit(Bio.read(1 << 20 | 8192, stored))
    expected = b"".join(
        xts_oracle(KEY64, data[i : i + 4096], 2 + i // 4096) for i in range(0, len(data), 4096)
    )
    assert stored == expected
    assert disk.crypto_profile is not None and disk.crypto_profile.counters["programs"] == 0
    back = bytearray(len(data))
    await vol.submit(Bio.read(8192, back))
    assert back == data


async def test_malformed_table_names_line_target_and_field(
    manager: DeviceManager, tmp_path: Path
) -> None:
    manager.add_device(
        create_backend(tmp_path / "d.img", 1 << 20, load_profile("none"), name="disk")
    )
    with pytest.raises(TableError) as info:
        await manager.create(
            "bad", f"0 1024 linear disk 0\n1024 8 crypt aes-xts-plain64 {HEX64[:-2]} 0 disk 0"
        )
    assert info.value.errno == errno.EINVAL
    assert info.value.message.startswith("line 2: crypt key: expected 64 bytes")
    assert HEX64[:-2] not in info.value.message


@settings(max_examples=60, deadline=None)
@given(
    sector_size=st.sampled_from([512, 1024, 2048, 4096]),
    large=st.booleans(),
    cipher=st.sampled_from(["aes-xts-plain", "aes-xts-plain64"]),
    iv_units=st.integers(0, (1 << 40)),
    first_unit=st.integers(0, 31),
    units=st.integers(1, 8),
)
def test_every_data_unit_uses_the_hand_computed_iv(
    sector_size: int, large: bool, cipher: str, iv_units: int, first_unit: int, units: int
) -> None:
    per_unit = sector_size // 512
    iv_offset = iv_units * per_unit
    opts = [f"sector_size:{sector_size}"] + (["iv_large_sectors"] if large else [])
    mem = MemDevice(size=DEV_SIZE, noise=True)
    target = crypt(f"{cipher} {HEX64} {iv_offset} mem 0 {len(opts)} {' '.join(opts)}", mem=mem)
    data = os.urandom(units * sector_size)
    offset = first_unit * sector_size
    trio.run(target.map, Bio.write(offset, data))
    for i in range(units):
        sector = iv_offset + (offset + i * sector_size) // 512
        iv = sector // per_unit if large else sector
        iv &= 0xFFFFFFFF if cipher == "aes-xts-plain" else (1 << 64) - 1
        unit = slice(offset + i * sector_size, offset + (i + 1) * sector_size)
        assert bytes(mem.data[unit]) == xts_oracle(
            KEY64, data[i * sector_size : (i + 1) * sector_size], iv
        )
    back = bytearray(len(data))
    trio.run(target.map, Bio.read(offset, back))
    assert back == data


async def test_essiv_matches_cbc_with_an_encrypted_sector_iv() -> None:
    """aes-cbc-essiv:sha256: IV = AES-256_{SHA-256(key)}(le64(sector)), then AES-128-CBC."""
    key = bytes(range(16))
    mem = MemDevice(size=DEV_SIZE, noise=True)
    target = crypt(f"aes-cbc-essiv:sha256 {key.hex()} 7 mem 0", mem=mem)
    data = os.urandom(1024)
    await target.map(Bio.write(512, data))
    salt = hashlib.sha256(key).digest()
    expected = b""
    for i, sector in enumerate((8, 9)):  # iv_offset 7 + sector 1, 2
        essiv = (
            Cipher(algorithms.AES(salt), modes.ECB())
            .encryptor()
            .update(sector.to_bytes(16, "little"))
        )
        cbc = Cipher(algorithms.AES(key), modes.CBC(essiv)).encryptor()
        expected += cbc.update(data[i * 512 : (i + 1) * 512]) + cbc.finalize()
    assert bytes(mem.data[512:1536]) == expected
    back = bytearray(1024)
    await target.map(Bio.read(512, back))
    assert back == data


async def test_adiantum_round_trips_and_stores_ciphertext() -> None:
    mem = MemDevice(size=DEV_SIZE, noise=True)
    key = bytes(range(32))
    target = crypt(
        f"capi:adiantum(xchacha12,aes)-plain64 {key.hex()} 0 mem 0 1 sector_size:4096", mem=mem
    )
    data = os.urandom(8192)
    await target.map(Bio.write(4096, data))
    cipher = get_cipher(target.key)
    # 512-byte IV sectors (no iv_large_sectors): the units at 4096 and 8192 have IVs 8 and 16
    expected = cipher.encrypt(data[:4096], 8) + cipher.encrypt(data[4096:], 16)
    assert bytes(mem.data[4096:12288]) == expected
    back = bytearray(8192)
    await target.map(Bio.read(4096, back))
    assert back == data
