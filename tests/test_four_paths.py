"""One key, one DUN, four ways to encrypt: the bytes on the backend must be identical.

For each mode (AES-256-XTS, Adiantum) and data unit size (4096, 512), the same plaintext at the
same DUN is written through

1. default-key over hardware that supports the key (inline encryption in the backend's keyslot),
2. default-key over hardware without inline encryption (the software fallback),
3. the crypt target (software encryption in the target, dm-crypt's IV = DUN),
4. ``fuseblk crypt encrypt`` (the command line, in a subprocess),

and the stored bytes are compared, and for XTS also against OpenSSL's AES-XTS directly.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import trio
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from fuseblk.bio import Bio
from fuseblk.capabilities import CryptoCapabilities, dus_mask
from fuseblk.device import BlockDevice
from fuseblk.dm.manager import DeviceManager
from fuseblk.hw.factory import create_backend
from fuseblk.hw.profiles import HardwareKind, HardwareProfile
from fuseblk.key import KeyType
from fuseblk.modes import CryptoMode

IMAGE_SIZE = 4 << 20
TARGET_SECTORS = 2048
DUN = (1 << 33) + 5  # beyond 32 bits: a plain (32-bit) IV would differ
DATA = os.urandom(64 * 1024)

CIPHERS = {
    CryptoMode.AES_256_XTS: "aes-xts-plain64",
    CryptoMode.ADIANTUM: "xchacha12,aes-adiantum-plain64",
}
KEYS = {
    CryptoMode.AES_256_XTS: bytes((i * 37 + 11) % 256 for i in range(64)),
    CryptoMode.ADIANTUM: bytes((i * 53 + 7) % 256 for i in range(32)),
}
CASES = [(mode, dus) for mode in CIPHERS for dus in (4096, 512)]


def inline_hardware(mode: CryptoMode) -> HardwareProfile:
    caps = CryptoCapabilities({mode: dus_mask(512, 4096)}, 8, KeyType.RAW)
    return HardwareProfile(HardwareKind.KEYSLOTS, 4, caps, name="inline-test")


def table(target: str, mode: CryptoMode, dus: int, dev: str) -> str:
    shift = dus.bit_length() - 1 - 9
    iv_offset = DUN << shift  # in 512-byte sectors, so that the first data unit has DUN
    opts = f" 2 sector_size:{dus} iv_large_sectors" if dus != 512 else ""
    return (
        f"0 {TARGET_SECTORS} {target} {CIPHERS[mode]} {KEYS[mode].hex()} {iv_offset} {dev} 0{opts}"
    )


async def raw(backend: BlockDevice, length: int) -> bytes:
    buf = bytearray(length)
    await backend.submit(Bio.read(0, buf))
    return bytes(buf)


async def through_device(
    dm: DeviceManager, tmp_path: Path, name: str, hw: HardwareProfile, line: str
) -> bytes:
    """Write DATA at the start of a new mapped device over a new image; the image's bytes."""
    backend = create_backend(tmp_path / f"{name}.img", IMAGE_SIZE, hw, name=f"{name}-img")
    dm.add_device(backend)
    md = await dm.create(name, line.replace("DEV", backend.name))
    await md.submit(Bio.write(0, DATA))
    back = bytearray(len(DATA))
    await md.submit(Bio.read(0, back))
    assert back == DATA
    return await raw(backend, len(DATA))


async def through_cli(mode: CryptoMode, dus: int) -> bytes:
    args = [sys.executable, "-m", "fuseblk", "crypt", "encrypt", "--mode", mode.sysfs_name]
    args += ["--key-hex", KEYS[mode].hex(), "--data-unit-size", str(dus), "--dun", str(DUN)]
    result = await trio.run_process(args, stdin=DATA, capture_stdout=True, capture_stderr=True)
    return bytes(result.stdout)


def openssl_xts(key: bytes, dus: int) -> bytes:
    out = b""
    for i in range(len(DATA) // dus):
        tweak = (DUN + i).to_bytes(16, "little")
        enc = Cipher(algorithms.AES(key), modes.XTS(tweak)).encryptor()
        out += enc.update(DATA[i * dus : (i + 1) * dus]) + enc.finalize()
    return out


@pytest.mark.parametrize(("mode", "dus"), CASES, ids=[f"{m.sysfs_name}-{d}" for m, d in CASES])
async def test_four_paths_store_identical_ciphertext(
    manager: DeviceManager, tmp_path: Path, mode: CryptoMode, dus: int
) -> None:
    hw = inline_hardware(mode)
    inline = await through_device(
        manager, tmp_path, "dk-inline", hw, table("default-key", mode, dus, "DEV")
    )
    profile = manager.backends()["dk-inline-img"].crypto_profile
    assert profile is not None and profile.counters["programs"] >= 1, "inline path not taken"
    assert manager.block_layer.fallback.counters["bios"] == 0

    none = HardwareProfile.none()
    fallback = await through_device(
        manager, tmp_path, "dk-fallback", none, table("default-key", mode, dus, "DEV")
    )
    assert manager.block_layer.fallback.counters["bios"] >= 1, "fallback path not taken"

    crypt = await through_device(manager, tmp_path, "crypt", none, table("crypt", mode, dus, "DEV"))

    assert inline == fallback == crypt
    assert inline != DATA
    if mode is CryptoMode.AES_256_XTS:
        assert inline == openssl_xts(KEYS[mode], dus)


@pytest.mark.parametrize(("mode", "dus"), CASES, ids=[f"{m.sysfs_name}-{d}" for m, d in CASES])
async def test_crypt_encrypt_command_stores_the_same_ciphertext(
    manager: DeviceManager, tmp_path: Path, mode: CryptoMode, dus: int
) -> None:
    crypt = await through_device(
        manager, tmp_path, "crypt", HardwareProfile.none(), table("crypt", mode, dus, "DEV")
    )
    assert await through_cli(mode, dus) == crypt
