"""Hardware-wrapped keys in the emulated hardware: blobs, the KDF's keys in keyslots, resets.

The kernel is the reference: blk_crypto_init_key's sizes, the BLKCRYPTO*KEY ioctls' errnos
(block/blk-crypto.c), EBADMSG from a driver for a blob it cannot unwrap, BLK_STS_NOTSUPP from the
software fallback for a wrapped key (block/blk-crypto-fallback.c), and what a bio sees when a
keyslot cannot be programmed (errno_to_blk_status: EIO).
"""

from __future__ import annotations

import errno
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
import trio
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from fuseblk.bio import Bio
from fuseblk.blkcrypto.fallback import CryptoFallback
from fuseblk.blkcrypto.wrapped_keys import WrappedKeyOp
from fuseblk.ciphers.hw_kdf import inline_key, sw_secret
from fuseblk.cli import main
from fuseblk.crypt_context import BioCryptContext
from fuseblk.dm.manager import DeviceManager
from fuseblk.dm.targets import registry
from fuseblk.dm.targets.zero import ZeroTarget
from fuseblk.errors import FuseblkError
from fuseblk.hw.engine import InlineEncryptionEngine
from fuseblk.hw.factory import create_backend, open_backend
from fuseblk.hw.image_format import (
    DATA_OFFSET,
    WRAPPING_SECRET_OFFSET,
    WRAPPING_SECRET_SIZE,
    ImageHeader,
    read_headers,
    write_headers,
)
from fuseblk.hw.profiles import load_profile, parse_profile
from fuseblk.hw.wrapping import BLOB_SIZE, KeyWrapping
from fuseblk.key import BlkCryptoKey, KeyType
from fuseblk.modes import CryptoMode

MiB = 1 << 20
DUS = 4096

DIRECT_WRAPPED = {
    "kind": "direct",
    "max_dun_bytes": 8,
    "key_types": ["hw_wrapped"],
    "modes": {"AES-256-XTS": [512, 4096]},
}


@pytest.fixture
async def ice(tmp_path: Path) -> AsyncIterator[InlineEncryptionEngine]:
    engine = create_backend(tmp_path / "ice.img", 4 * MiB, load_profile("ice-wrapped"))
    try:
        yield engine
    finally:
        await engine.close()


def wrapped_key(eph_blob: bytes, dun_bytes: int = 8) -> BlkCryptoKey:
    return BlkCryptoKey.create(CryptoMode.AES_256_XTS, eph_blob, DUS, dun_bytes, KeyType.HW_WRAPPED)


def xts(key: bytes, data: bytes, first_dun: int) -> bytes:
    """AES-256-XTS of whole 4096-byte data units by OpenSSL, unit i under DUN first_dun + i."""
    out = b""
    for i in range(0, len(data), DUS):
        tweak = (first_dun + i // DUS).to_bytes(16, "little")
        enc = Cipher(algorithms.AES(key), modes.XTS(tweak)).encryptor()
        out += enc.update(data[i : i + DUS]) + enc.finalize()
    return out


def stored(image: Path, offset: int, length: int) -> bytes:
    with open(image, "rb") as f:
        f.seek(DATA_OFFSET + offset)
        return f.read(length)


def errno_of(exc: pytest.ExceptionInfo[FuseblkError]) -> int:
    return exc.value.errno


# --- the key itself ----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [32, 60, 128])
def test_a_wrapped_aes_256_xts_key_is_32_to_128_bytes(size: int) -> None:
    assert wrapped_key(bytes(size)).key_type == KeyType.HW_WRAPPED


@pytest.mark.parametrize("size", [0, 16, 31, 129, 200])
def test_a_wrapped_key_of_another_size_is_einval(size: int) -> None:
    with pytest.raises(FuseblkError) as exc:
        wrapped_key(bytes(size))
    assert errno_of(exc) == errno.EINVAL
    assert "32..128" in exc.value.message


def test_a_wrapped_key_names_its_type_but_not_its_blob() -> None:
    blob = os.urandom(60)
    text = repr(wrapped_key(blob))
    assert "hw_wrapped" in text and blob.hex() not in text


# --- the four operations -------------------------------------------------------------------------


@settings(deadline=None, max_examples=25)
@given(raw=st.binary(min_size=32, max_size=32))
def test_import_prepare_derive_gives_the_kdf_secret_of_the_raw_key(raw: bytes) -> None:
    hw = KeyWrapping(os.urandom(32), uuid.uuid4(), "hw")
    lt = hw.import_key(raw)
    eph = hw.prepare_key(lt)
    assert len(lt) == len(eph) == BLOB_SIZE <= 128
    assert raw not in lt and raw not in eph
    assert hw.derive_sw_secret(eph) == sw_secret(raw)
    assert hw.inline_key(eph) == inline_key(raw)


@settings(deadline=None, max_examples=25)
@given(raw=st.binary(min_size=16, max_size=64))
def test_importing_a_raw_key_twice_gives_new_blobs_of_the_same_key(raw: bytes) -> None:
    hw = KeyWrapping(os.urandom(32), uuid.uuid4(), "hw")
    first, second = hw.import_key(raw), hw.import_key(raw)
    assert first != second
    assert hw.derive_sw_secret(hw.prepare_key(first)) == hw.derive_sw_secret(hw.prepare_key(second))


async def test_generated_keys_are_new_each_time_and_prepare(ice: InlineEncryptionEngine) -> None:
    a, b = ice.generate_key(), ice.generate_key()
    secrets = {ice.derive_sw_secret(ice.prepare_key(lt)) for lt in (a, b)}
    assert len(secrets) == 2


async def test_a_long_term_blob_where_an_ephemeral_one_is_expected_is_ebadmsg(
    ice: InlineEncryptionEngine,
) -> None:
    lt = ice.import_key(os.urandom(32))
    with pytest.raises(FuseblkError) as exc:
        ice.derive_sw_secret(lt)
    assert errno_of(exc) == errno.EBADMSG


async def test_an_ephemeral_blob_where_a_long_term_one_is_expected_is_ebadmsg(
    ice: InlineEncryptionEngine,
) -> None:
    eph = ice.prepare_key(ice.import_key(os.urandom(32)))
    with pytest.raises(FuseblkError) as exc:
        ice.prepare_key(eph)
    assert errno_of(exc) == errno.EBADMSG


@pytest.mark.parametrize("where", [0, 11, 12, 43, 59])
async def test_a_tampered_blob_is_ebadmsg(ice: InlineEncryptionEngine, where: int) -> None:
    lt = bytearray(ice.import_key(os.urandom(32)))
    lt[where] ^= 1
    with pytest.raises(FuseblkError) as exc:
        ice.prepare_key(bytes(lt))
    assert errno_of(exc) == errno.EBADMSG


async def test_a_blob_of_another_image_is_ebadmsg(
    ice: InlineEncryptionEngine, tmp_path: Path
) -> None:
    other = create_backend(tmp_path / "other.img", 4 * MiB, load_profile("ice-wrapped"))
    try:
        lt = other.import_key(os.urandom(32))
        with pytest.raises(FuseblkError) as exc:
            ice.prepare_key(lt)
        assert errno_of(exc) == errno.EBADMSG
    finally:
        await other.close()


@pytest.mark.parametrize("profile", ["ufs", "emmc", "direct"])
async def test_hardware_without_wrapped_keys_is_eopnotsupp(tmp_path: Path, profile: str) -> None:
    engine = create_backend(tmp_path / "raw.img", 4 * MiB, load_profile(profile))
    try:
        for call in (
            lambda: engine.import_key(bytes(32)),
            engine.generate_key,
            lambda: engine.prepare_key(bytes(60)),
            lambda: engine.derive_sw_secret(bytes(60)),
        ):
            with pytest.raises(FuseblkError) as exc:
                call()
            assert errno_of(exc) == errno.EOPNOTSUPP
    finally:
        await engine.close()


# --- I/O with wrapped keys -------------------------------------------------------------------------


@pytest.mark.parametrize("profile", ["ice-wrapped", "ufs-wrapped", "direct-wrapped"])
async def test_a_bio_with_a_wrapped_key_is_aes_256_xts_under_the_kdf_inline_key(
    tmp_path: Path, profile: str
) -> None:
    hardware = (
        parse_profile(DIRECT_WRAPPED) if profile == "direct-wrapped" else load_profile(profile)
    )
    image = tmp_path / "hw.img"
    engine = create_backend(image, 4 * MiB, hardware)
    try:
        raw = os.urandom(32)
        key = wrapped_key(engine.prepare_key(engine.import_key(raw)))
        data = os.urandom(3 * DUS)
        await engine.submit(Bio.write(2 * DUS, data, BioCryptContext.at(key, 1000)))
        await engine.flush()
        assert stored(image, 2 * DUS, len(data)) == xts(inline_key(raw), data, 1000)
        back = bytearray(len(data))
        await engine.submit(Bio.read(2 * DUS, back, BioCryptContext.at(key, 1000)))
        assert bytes(back) == data
    finally:
        await engine.close()


@settings(deadline=None, max_examples=20)
@given(
    raw=st.binary(min_size=32, max_size=32),
    units=st.integers(1, 4),
    dun=st.integers(0, 2**64 - 4),
    slot=st.integers(0, 3),
)
def test_any_wrapped_key_encrypts_each_data_unit_at_its_dun(
    raw: bytes, units: int, dun: int, slot: int
) -> None:
    async def write_and_read() -> tuple[bytes, bytes, bytes]:
        engine = create_backend("memory://", MiB, load_profile("ice-wrapped"))
        try:
            key = wrapped_key(engine.prepare_key(engine.import_key(raw)))
            data = os.urandom(units * DUS)
            offset = slot * DUS
            await engine.submit(Bio.write(offset, data, BioCryptContext.at(key, dun)))
            plain = bytearray(len(data))
            await engine.submit(Bio.read(offset, plain))  # what the storage holds
            back = bytearray(len(data))
            await engine.submit(Bio.read(offset, back, BioCryptContext.at(key, dun)))
            return data, bytes(plain), bytes(back)
        finally:
            await engine.close()

    data, ciphertext, back = trio.run(write_and_read)
    assert ciphertext == xts(inline_key(raw), data, dun)
    assert back == data


@pytest.mark.parametrize("profile", ["ice-wrapped", "direct-wrapped"])
async def test_a_bio_whose_blob_does_not_unwrap_fails_with_eio(
    tmp_path: Path, profile: str
) -> None:
    """The driver's EBADMSG goes through errno_to_blk_status, which has no status for it."""
    hardware = (
        parse_profile(DIRECT_WRAPPED) if profile == "direct-wrapped" else load_profile(profile)
    )
    engine = create_backend(tmp_path / "hw.img", 4 * MiB, hardware)
    try:
        lt = engine.import_key(os.urandom(32))
        with pytest.raises(FuseblkError) as exc:
            await engine.submit(Bio.write(0, bytes(DUS), BioCryptContext.at(wrapped_key(lt), 0)))
        assert errno_of(exc) == errno.EIO
        assert "EBADMSG" in exc.value.message
    finally:
        await engine.close()


async def test_the_software_fallback_refuses_a_wrapped_key_with_eopnotsupp(
    ice: InlineEncryptionEngine, tmp_path: Path
) -> None:
    plain = create_backend(tmp_path / "plain.img", 4 * MiB, load_profile("none"))
    try:
        key = wrapped_key(ice.prepare_key(ice.import_key(os.urandom(32))))
        fallback = CryptoFallback()
        assert not fallback.supports(key)
        for bio in (
            Bio.write(0, bytes(DUS), BioCryptContext.at(key, 0)),
            Bio.read(0, bytearray(DUS), BioCryptContext.at(key, 0)),
        ):
            with pytest.raises(FuseblkError) as exc:
                await fallback.submit(plain, bio)
            assert errno_of(exc) == errno.EOPNOTSUPP
        assert plain.counters.snapshot().get("bios", 0) == 0  # nothing reached the device
    finally:
        await plain.close()


async def test_raw_only_hardware_does_not_take_a_wrapped_key_and_wrapped_only_not_a_raw_one(
    ice: InlineEncryptionEngine, tmp_path: Path
) -> None:
    ufs = create_backend(tmp_path / "ufs.img", 4 * MiB, load_profile("ufs"))
    try:
        wrapped = wrapped_key(ice.prepare_key(ice.import_key(os.urandom(32))))
        raw = BlkCryptoKey.create(CryptoMode.AES_256_XTS, os.urandom(64), DUS, 8)
        assert ufs.crypto_profile is not None and ice.crypto_profile is not None
        assert not ufs.crypto_profile.supports(wrapped.config)
        assert not ice.crypto_profile.supports(raw.config)
        assert ice.crypto_profile.supports(wrapped.config)
    finally:
        await ufs.close()


# --- reset and restart ------------------------------------------------------------------------------


async def test_a_reset_invalidates_ephemeral_blobs_but_not_long_term_ones(
    ice: InlineEncryptionEngine,
) -> None:
    raw = os.urandom(32)
    lt = ice.import_key(raw)
    eph = ice.prepare_key(lt)
    await ice.reset()
    with pytest.raises(FuseblkError) as exc:
        ice.derive_sw_secret(eph)
    assert errno_of(exc) == errno.EBADMSG
    fresh = ice.prepare_key(lt)
    assert fresh != eph and ice.derive_sw_secret(fresh) == sw_secret(raw)


async def test_a_reset_with_a_wrapped_key_in_a_slot_reports_ebadmsg_and_its_bios_then_fail(
    ice: InlineEncryptionEngine,
) -> None:
    """As the kernel: keys in use are reprogrammed from the ephemeral blobs they hold, which the
    new ephemeral secret no longer unwraps; the slot ends empty, and so does the key's I/O."""
    lt = ice.import_key(os.urandom(32))
    key = wrapped_key(ice.prepare_key(lt))
    await ice.submit(Bio.write(0, bytes(DUS), BioCryptContext.at(key, 0)))
    assert ice.crypto_profile is not None and ice.crypto_profile.find_slot(key) is not None
    with pytest.raises(FuseblkError) as exc:
        await ice.reset()
    assert errno_of(exc) == errno.EBADMSG and "stale" in exc.value.message
    assert ice.crypto_profile.find_slot(key) is None
    with pytest.raises(FuseblkError) as exc:
        await ice.submit(Bio.read(0, bytearray(DUS), BioCryptContext.at(key, 0)))
    assert errno_of(exc) == errno.EIO
    again = wrapped_key(ice.prepare_key(lt))  # prepared again: the same data reads back
    buf = bytearray(DUS)
    await ice.submit(Bio.read(0, buf, BioCryptContext.at(again, 0)))
    assert bytes(buf) == bytes(DUS)


async def test_reattaching_invalidates_ephemeral_blobs_but_not_long_term_ones(
    tmp_path: Path,
) -> None:
    image = tmp_path / "ice.img"
    raw = os.urandom(32)
    engine = create_backend(image, 4 * MiB, load_profile("ice-wrapped"))
    lt = engine.import_key(raw)
    eph = engine.prepare_key(lt)
    await engine.close()
    engine = open_backend(image)
    try:
        with pytest.raises(FuseblkError) as exc:
            engine.derive_sw_secret(eph)
        assert errno_of(exc) == errno.EBADMSG
        assert engine.derive_sw_secret(engine.prepare_key(lt)) == sw_secret(raw)
    finally:
        await engine.close()


async def test_an_image_without_a_wrapping_secret_gets_one_when_attached(tmp_path: Path) -> None:
    image = tmp_path / "old.img"
    await create_backend(image, 4 * MiB, load_profile("ice-wrapped")).close()
    engine = open_backend(image)  # rewrite it as an image from before wrapped keys
    storage = engine._storage
    header = replace(read_headers(storage).current, wrapping_secret=None)
    write_headers(storage, header)
    engine.abandon()
    with open(image, "rb") as f:
        assert f.read(WRAPPING_SECRET_OFFSET + WRAPPING_SECRET_SIZE)[
            -WRAPPING_SECRET_SIZE:
        ] == bytes(WRAPPING_SECRET_SIZE)
    engine = open_backend(image)
    lt = engine.import_key(bytes(32))
    secret = engine.header.wrapping_secret
    await engine.close()
    assert secret is not None and any(secret)
    engine = open_backend(image)  # and keeps it: its long-term blobs stay valid
    try:
        assert engine.header.wrapping_secret == secret
        assert engine.derive_sw_secret(engine.prepare_key(lt)) == sw_secret(bytes(32))
    finally:
        await engine.close()


# --- secrets stay inside -----------------------------------------------------------------------------


async def test_no_raw_key_blob_or_secret_is_in_the_image_outside_the_wrapping_secret(
    tmp_path: Path,
) -> None:
    image = tmp_path / "ice.img"
    engine = create_backend(image, 4 * MiB, load_profile("ice-wrapped"))
    raw = os.urandom(32)
    lt = engine.import_key(raw)
    eph = engine.prepare_key(lt)
    derived = engine.derive_sw_secret(eph)
    key = wrapped_key(eph)
    await engine.submit(Bio.write(0, bytes(2 * DUS), BioCryptContext.at(key, 0)))
    secret = engine.header.wrapping_secret
    assert secret is not None
    assert repr(engine.header).count(secret.hex()) == 0
    await engine.close()
    data = image.read_bytes()
    for offset in (0, 512 * 1024):  # both header copies hold it, at its field
        field = offset + WRAPPING_SECRET_OFFSET
        assert data[field : field + WRAPPING_SECRET_SIZE] == secret
        data = data[:field] + bytes(WRAPPING_SECRET_SIZE) + data[field + WRAPPING_SECRET_SIZE :]
    for needle in (raw, lt, eph, derived, inline_key(raw), inline_key(raw)[:32], secret):
        assert needle not in data
        assert needle[:16] not in data


def test_every_operation_is_named_after_its_ioctl_or_kernel_function() -> None:
    assert [op.kernel_name for op in WrappedKeyOp] == [
        "BLKCRYPTOIMPORTKEY",
        "BLKCRYPTOGENERATEKEY",
        "BLKCRYPTOPREPAREKEY",
        "blk_crypto_derive_sw_secret",
    ]


# --- profiles and what the image shows -------------------------------------------------------------


def test_the_wrapped_key_profiles_offer_aes_256_xts_with_their_key_types() -> None:
    ice, both = load_profile("ice-wrapped"), load_profile("ufs-wrapped")
    assert ice.caps.key_types == KeyType.HW_WRAPPED
    assert both.caps.key_types == KeyType.RAW | KeyType.HW_WRAPPED
    assert list(ice.caps.modes) == list(both.caps.modes) == [CryptoMode.AES_256_XTS]
    assert "key_types=hw_wrapped" in ice.describe()
    assert "key_types=raw,hw_wrapped" in both.describe()


def test_image_create_with_the_ice_profile_and_inspect_shows_key_types_but_no_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "ice.img"
    assert main(["image", "create", str(image), "--size", "4M", "--profile", "ice-wrapped"]) == 0
    secret = read_headers_of(image).wrapping_secret
    assert secret is not None
    assert main(["image", "inspect", str(image)]) == 0
    assert main(["image", "inspect", str(image), "--json"]) == 0
    out = capsys.readouterr().out
    assert "  Key types:     hw_wrapped" in out
    assert '"key_types": [\n        "hw_wrapped"\n      ]' in out
    assert secret.hex() not in out and secret.hex()[:16] not in out


def read_headers_of(image: Path) -> ImageHeader:
    engine = open_backend(image)
    try:
        return engine.header
    finally:
        engine.abandon()


# --- device-mapper passes the operations down -------------------------------------------------------


class _DevicelessCryptoTarget(ZeroTarget):
    """A target that passes crypto yet has no device below (no shipped target is both)."""

    name = "deviceless-crypto"
    passes_crypto = True


async def test_a_mapped_device_with_no_device_below_is_eopnotsupp(
    manager: DeviceManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dm_exec_wrappedkey_op starts from -EOPNOTSUPP and finds no device to change it."""
    monkeypatch.setitem(
        registry._TARGET_TYPES, _DevicelessCryptoTarget.name, _DevicelessCryptoTarget
    )
    md = await manager.create("hole", "0 8 deviceless-crypto\n")
    assert md.crypto_profile is not None  # it claims every capability, wrapped keys included
    with pytest.raises(FuseblkError) as exc:
        manager.wrapped_key_op("hole", WrappedKeyOp.GENERATE)
    assert errno_of(exc) == errno.EOPNOTSUPP
    assert "no underlying device" in exc.value.message


async def test_an_ephemeral_blob_over_128_bytes_is_einval(
    manager: DeviceManager, tmp_path: Path
) -> None:
    manager.add_device(
        create_backend(tmp_path / "ice.img", MiB, load_profile("ice-wrapped"), name="ice")
    )
    with pytest.raises(FuseblkError) as exc:
        manager.wrapped_key_op("ice", WrappedKeyOp.DERIVE_SW_SECRET, bytes(129))
    assert errno_of(exc) == errno.EINVAL
