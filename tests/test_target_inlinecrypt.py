"""dm-inlinecrypt: upstream's table syntax and checks, the DUN, hidden keys, and the ciphertext."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from cipher_helpers import openssl_xts
from device_helpers import MemDevice, xts_hardware
from dm_helpers import DeviceEnv, image_manager
from hypothesis import given, settings
from hypothesis import strategies as st

from fuseblk.bio import Bio
from fuseblk.crypt_context import BioCryptContext
from fuseblk.dm.targets.base import TargetArgError
from fuseblk.dm.targets.inlinecrypt import InlineCryptTarget
from fuseblk.dm.targets.registry import get_target
from fuseblk.errors import FuseblkError, TableError
from fuseblk.key import BlkCryptoKey, KeyType
from fuseblk.modes import CryptoMode

KEY64 = bytes(range(7, 71))
HEX64 = KEY64.hex()
DEV_SIZE = 1 << 20


def inlinecrypt(
    table: str, mem: MemDevice | None = None, length: int = DEV_SIZE // 2
) -> InlineCryptTarget:
    env = DeviceEnv({"mem": mem or MemDevice(size=DEV_SIZE, noise=True)})
    return InlineCryptTarget(env, 0, length, table.split())


def test_inlinecrypt_is_registered_and_does_not_pass_crypto() -> None:
    assert get_target("inlinecrypt") is InlineCryptTarget
    assert InlineCryptTarget.passes_crypto is False
    assert InlineCryptTarget.version == (1, 0, 0)


@pytest.mark.parametrize(
    ("table", "field"),
    [
        ("", "cipher"),
        ("aes-xts-plain64", "key"),
        (f"aes-xts-plain64 {HEX64} 0 mem", "offset"),
        (f"xchacha12,aes-adiantum-plain64 {'00' * 32} 0 mem 0", "cipher"),
        (f"aes-xts-plain {HEX64} 0 mem 0", "cipher"),
        (f"capi:xts(aes)-plain64 {HEX64} 0 mem 0", "cipher"),
        (f"AES-XTS-PLAIN64 {HEX64} 0 mem 0", "cipher"),
        (f"aes-xts-plain64 {'00' * 32} 0 mem 0", "key"),
        (f"aes-xts-plain64 {HEX64}00 0 mem 0", "key"),
        (f"aes-xts-plain64 {HEX64[:-1]} 0 mem 0", "key"),
        (f"aes-xts-plain64 {'zz' * 64} 0 mem 0", "key"),
        ("aes-xts-plain64 :64:logon:desc 0 mem 0", "key"),
        (f"aes-xts-plain64 {'00' * 31} 0 mem 0 1 keytype:hw-wrapped", "key"),
        (f"aes-xts-plain64 {'00' * 129} 0 mem 0 1 keytype:hw-wrapped", "key"),
        (f"aes-xts-plain64 {HEX64} -1 mem 0", "iv_offset"),
        (f"aes-xts-plain64 {HEX64} z mem 0", "iv_offset"),
        (f"aes-xts-plain64 {HEX64} 4 mem 0 2 sector_size:4096 iv_large_sectors", "iv_offset"),
        (f"aes-xts-plain64 {HEX64} 0 other 0", "device"),
        (f"aes-xts-plain64 {HEX64} 0 mem 2000", "offset"),
        (f"aes-xts-plain64 {HEX64} 0 mem 0 5 a b c d e", "#opt_params"),
        (f"aes-xts-plain64 {HEX64} 0 mem 0 2 allow_discards", "#opt_params"),
        (f"aes-xts-plain64 {HEX64} 0 mem 0 1 sector_size:4096", "option 'iv_large_sectors'"),
        (
            f"aes-xts-plain64 {HEX64} 0 mem 0 2 sector_size:8192 iv_large_sectors",
            "option 'sector_size:8192'",
        ),
        (
            f"aes-xts-plain64 {HEX64} 0 mem 0 2 sector_size:256 iv_large_sectors",
            "option 'sector_size:256'",
        ),
        (f"aes-xts-plain64 {HEX64} 0 mem 0 1 keytype:", "option 'keytype:'"),
        (f"aes-xts-plain64 {HEX64} 0 mem 0 1 keytype:standard", "option 'keytype:standard'"),
        (f"aes-xts-plain64 {HEX64} 0 mem 0 1 wrappedkey_v0", "option 'wrappedkey_v0'"),
        (f"aes-xts-plain64 {HEX64} 0 mem 0 1 same_cpu_crypt", "option 'same_cpu_crypt'"),
    ],
)
def test_every_malformed_table_names_the_field(table: str, field: str) -> None:
    with pytest.raises(TargetArgError) as info:
        inlinecrypt(table)
    assert info.value.field == field
    assert info.value.errno is None  # the table parser's EINVAL
    assert HEX64 not in str(info.value)


def test_length_must_be_whole_data_units() -> None:
    with pytest.raises(TargetArgError) as info:
        inlinecrypt(
            f"aes-xts-plain64 {HEX64} 0 mem 0 2 sector_size:4096 iv_large_sectors", length=6 * 512
        )
    assert info.value.field == "option 'sector_size:4096'"


def test_a_single_data_unit_at_dun_0_needs_a_0_byte_dun_and_is_refused() -> None:
    with pytest.raises(TargetArgError) as info:
        inlinecrypt(f"aes-xts-plain64 {HEX64} 0 mem 0", length=512)
    assert info.value.field == "length"
    assert "Error initializing blk-crypto key" in str(info.value)
    assert inlinecrypt(f"aes-xts-plain64 {HEX64} 1 mem 0", length=512).key.dun_bytes == 1


@pytest.mark.parametrize(
    ("iv_offset", "length", "sector_size", "dun_bytes"),
    [
        (0, 2 * 512, 512, 1),
        (0, 256 * 512, 512, 1),  # largest DUN 255
        (0, 257 * 512, 512, 2),  # largest DUN 256
        (1 << 24, 512, 512, 4),
        ((1 << 35) - 8, 4096, 4096, 4),  # largest DUN 2^32 - 1
        (1 << 35, 4096, 4096, 5),
    ],
)
def test_dun_bytes_are_the_fewest_that_hold_the_largest_dun(
    iv_offset: int, length: int, sector_size: int, dun_bytes: int
) -> None:
    opts = f" 2 sector_size:{sector_size} iv_large_sectors" if sector_size != 512 else ""
    target = inlinecrypt(f"aes-xts-plain64 {HEX64} {iv_offset} mem 0{opts}", length=length)
    assert target.key.dun_bytes == dun_bytes


def test_options_in_any_order_and_the_key_type_defaults_to_raw() -> None:
    target = inlinecrypt(
        f"aes-xts-plain64 {HEX64} 8 mem 16 3 iv_large_sectors allow_discards sector_size:4096"
    )
    assert target.key == BlkCryptoKey.create(CryptoMode.AES_256_XTS, KEY64, 4096, 1)
    assert target.key.key_type == KeyType.RAW
    assert target.io_granularity == 4096


def test_table_hides_the_key_unless_asked_and_reloads_as_printed() -> None:
    table = f"aes-xts-plain64 {HEX64} 8 mem 16 4 iv_large_sectors allow_discards sector_size:4096 keytype:raw"
    target = inlinecrypt(table)
    assert target.table_args() == (
        "aes-xts-plain64 - 8 mem0 16 4 keytype:raw allow_discards sector_size:4096 iv_large_sectors"
    )
    shown = target.table_args(show_keys=True)
    assert shown.split()[1] == HEX64
    again = inlinecrypt(shown.replace(" mem0 ", " mem "))
    assert again.table_args(show_keys=True) == shown


def test_status_names_the_key_by_identifier_never_its_bytes() -> None:
    target = inlinecrypt(f"aes-xts-plain64 {HEX64} 0 mem 0")
    key = target.key
    assert target.status() == (
        f"AES-256-XTS key_id={key.key_id} data_unit_size=512 dun_bytes={key.dun_bytes}"
    )
    assert HEX64 not in target.status()


async def test_bios_get_the_key_and_the_dun_of_their_data_unit() -> None:
    mem = MemDevice(size=DEV_SIZE, profile=xts_hardware(), noise=True)
    target = inlinecrypt(
        f"aes-xts-plain64 {HEX64} 8 mem 64 2 sector_size:4096 iv_large_sectors", mem
    )
    data = os.urandom(2 * 4096)
    await target.map(Bio.write(3 * 4096, data))
    (sent,) = mem.bios
    assert sent.offset == 64 * 512 + 3 * 4096
    assert sent.crypt_ctx is not None and sent.crypt_ctx.key == target.key
    assert sent.crypt_ctx.dun_int == (8 + 3 * 8) >> 3
    assert bytes(mem.data[sent.offset : sent.offset + len(data)]) == openssl_xts(
        KEY64, data, 4, 4096
    )


async def test_a_bio_that_already_has_a_context_is_killed_with_eio() -> None:
    mem = MemDevice(size=DEV_SIZE, profile=xts_hardware())
    target = inlinecrypt(f"aes-xts-plain64 {HEX64} 0 mem 0", mem)
    other = BlkCryptoKey.create(CryptoMode.AES_256_XTS, bytes(64), 512)
    with pytest.raises(FuseblkError) as info:
        await target.map(Bio.write(0, bytes(512), BioCryptContext(other, 0)))
    assert info.value.errno == errno.EIO
    assert mem.bios == []


async def test_start_not_on_a_data_unit_fails_with_eio() -> None:
    target = inlinecrypt(f"aes-xts-plain64 {HEX64} 0 mem 0 2 sector_size:4096 iv_large_sectors")
    with pytest.raises(FuseblkError) as info:
        await target.map(Bio.write(512, bytes(4096)))
    assert info.value.errno == errno.EIO


async def test_discards_need_allow_discards_and_carry_no_context() -> None:
    mem = MemDevice(size=DEV_SIZE)
    with pytest.raises(FuseblkError) as info:
        await inlinecrypt(f"aes-xts-plain64 {HEX64} 0 mem 0", mem).map(Bio.discard(0, 4096))
    assert info.value.errno == errno.EOPNOTSUPP
    await inlinecrypt(f"aes-xts-plain64 {HEX64} 0 mem 8 1 allow_discards", mem).map(
        Bio.discard(0, 4096)
    )
    (sent,) = [b for b in mem.bios if b.length]
    assert sent.offset == 8 * 512 and sent.crypt_ctx is None


# ---- generated bad lines --------------------------------------------------------------------------

_GOOD = ["aes-xts-plain64", HEX64, "0", "mem", "0"]


@settings(max_examples=150, deadline=None)
@given(
    position=st.integers(0, 4),
    junk=st.text(
        alphabet=st.characters(codec="utf-8", exclude_characters=" \t\n\r\x0b\x0c"), min_size=1
    ),
)
def test_a_generated_bad_positional_argument_is_one_line_einval(position: int, junk: str) -> None:
    args = list(_GOOD)
    args[position] = junk
    try:
        inlinecrypt(" ".join(args))
    except TargetArgError as exc:
        assert "\n" not in str(exc)
        assert exc.errno is None
        assert HEX64 not in str(exc)
    except FuseblkError as exc:  # pragma: no cover - a failure of the property
        raise AssertionError(f"not a table error: {exc!r}") from exc


@settings(max_examples=150, deadline=None)
@given(
    options=st.lists(
        st.sampled_from(
            [
                "allow_discards",
                "iv_large_sectors",
                "sector_size:4096",
                "sector_size:1000",
                "sector_size:",
                "keytype:raw",
                "keytype:hw-wrapped",
                "keytype:x",
                "keytype",
                "wrappedkey_v0",
                "7",
            ]
        ),
        max_size=6,
    ),
    count_delta=st.integers(-1, 1),
)
def test_generated_option_lists_load_or_fail_with_one_line(
    options: list[str], count_delta: int
) -> None:
    count = len(options) + count_delta
    line = " ".join([*_GOOD, str(count), *options]) if count >= 0 else " ".join(_GOOD)
    try:
        inlinecrypt(line)
    except TargetArgError as exc:
        assert "\n" not in str(exc) and HEX64 not in str(exc)
        # a wrapped key the device cannot take is EOPNOTSUPP; everything else EINVAL
        assert exc.errno in (None, errno.EOPNOTSUPP)
        assert (exc.errno == errno.EOPNOTSUPP) == (exc.field == "key")
        return
    assert count < 0 or (count <= 4 and count == len(options))


# ---- end to end: DeviceManager over image files ---------------------------------------------------


@pytest.mark.parametrize("hardware", ["ufs", "none"])
async def test_ciphertext_is_aes_256_xts_at_the_dun_inline_and_through_the_fallback(
    tmp_path: Path, hardware: str
) -> None:
    async with image_manager(tmp_path, {"disk": (DEV_SIZE, hardware)}) as dm:
        table = (
            f"0 2048 inlinecrypt aes-xts-plain64 {HEX64} 16 disk 0 3 keytype:raw "
            "sector_size:4096 iv_large_sectors"
        )
        dev = await dm.create("vault", table)
        assert dev.crypto_profile is None  # consumes the capability, offers none above
        assert dev.block_size == 4096
        data = os.urandom(64 * 1024)
        await dev.submit(Bio.write(128 * 1024, data))
        disk = dm.backends()["disk"]
        stored = bytearray(len(data))
        await disk.submit(Bio.read(128 * 1024, stored))
        assert stored == openssl_xts(KEY64, data, (16 + 128 * 1024 // 512) >> 3, 4096)
        back = bytearray(len(data))
        await dev.submit(Bio.read(128 * 1024, back))
        assert back == data
        key = BlkCryptoKey.create(CryptoMode.AES_256_XTS, KEY64, 4096, 2)  # largest DUN 257
        served_by_fallback = dm.block_layer.fallback.profile.find_slot(key) is not None
        assert served_by_fallback == (hardware == "none")
        assert dm.table("vault") == (
            "0 2048 inlinecrypt aes-xts-plain64 - 16 disk 0 "
            "3 keytype:raw sector_size:4096 iv_large_sectors\n"
        )
        assert HEX64 not in dm.status("vault")
        await dm.remove("vault")
        assert dm.block_layer.fallback.profile.find_slot(key) is None


async def test_malformed_table_names_line_target_and_field_with_einval(tmp_path: Path) -> None:
    async with image_manager(tmp_path, {"disk": (DEV_SIZE, "ufs")}) as dm:
        with pytest.raises(TableError) as info:
            await dm.create("bad", f"0 2048 inlinecrypt aes-xts-plain64 {HEX64} 0 disk 0 1 x")
        assert info.value.errno == errno.EINVAL
        assert info.value.field == "inlinecrypt option 'x'"
        assert "\n" not in info.value.message and HEX64 not in info.value.message
        assert "bad" not in dm.names()
