"""As a user sees them: hardware-wrapped keys made with ``fuseblk key`` and used by a
``wrappedkey_v0`` default-key device and an ``inlinecrypt keytype:hw-wrapped`` device write
AES-256-XTS under the hardware KDF's inline key of the imported raw key, at the right DUNs.

The oracle is independent of fuseblk: NIST SP800-108 counter-mode KDF over OpenSSL's AES-CMAC
(``cryptography``), with the label and context the hardware uses, and OpenSSL's AES-XTS.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.cmac import CMAC
from harness import FuseblkMount, MiB, fuseblk, run
from test_secure_ciphertext import stored, xts_reference

pytestmark = pytest.mark.integration

RAW = bytes(range(7, 39))  # 32 bytes: the hardware key itself
SIZE = 2 * MiB
KDF_LABEL = bytes.fromhex("0000400000000000000020")
INLINE_CONTEXT = b"inline encryption key" + bytes(6) + bytes.fromhex("024300825000000000")


def kdf_inline_key(hw_key: bytes) -> bytes:
    """SP800-108 counter mode, AES-256-CMAC: 64 bytes for the inline-encryption key."""
    out = b""
    for i in range(1, 5):
        mac = CMAC(algorithms.AES(hw_key))
        mac.update(
            i.to_bytes(4, "big") + KDF_LABEL + b"\x00" + INLINE_CONTEXT + (512).to_bytes(4, "big")
        )
        out += mac.finalize()
    return out


def test_the_kdf_oracle_gives_the_published_known_answer() -> None:
    assert kdf_inline_key(bytes(32)).hex() == (
        "cbe5db40215a3d386d61e54ef2f8a7814b00bacf35b316f88e68e89a47abbab4"
        "834c27dac8a91ae1c3304f31b5f2202c14989661bafccc56cf6212d8b1f72691"
    )


def test_wrapped_key_devices_write_xts_under_the_kdf_inline_key_at_their_duns(
    default_setup: FuseblkMount, tmp_path: Path
) -> None:
    m = default_setup
    image = tmp_path / "ice.img"
    fuseblk("image", "create", image, "--size", "64M", "--profile", "ice-wrapped")
    sectors = 16 * MiB // 512
    m.dm("create", "holder", "--table", f"0 {sectors} linear {image} 0")
    raw_file = tmp_path / "raw.key"
    raw_file.write_bytes(RAW)
    lt = m.cli("key", "import", "holder", "--raw-key-file", raw_file).stdout.decode().strip()
    lt_file = tmp_path / "lt.key"
    lt_file.write_text(lt)
    eph = m.cli("key", "prepare", "holder", "--lt-key-file", lt_file).stdout.decode().strip()
    assert RAW.hex() not in lt + eph

    m.dm(
        "create",
        "android",
        "--table",
        f"0 {sectors} default-key aes-xts-plain64 {eph} 0 {image} {sectors} "
        "3 wrappedkey_v0 sector_size:4096 iv_large_sectors",
    )
    m.dm(
        "create",
        "upstream",
        "--table",
        f"0 {sectors} inlinecrypt aes-xts-plain64 {eph} 800 {image} {2 * sectors} "
        "3 keytype:hw-wrapped sector_size:4096 iv_large_sectors",
    )
    for name in ("android", "upstream"):
        table = m.dm("table", name).stdout.decode() + m.dm("status", name).stdout.decode()
        assert eph not in table and lt not in table
    plaintext = os.urandom(SIZE)
    src = tmp_path / "plain.bin"
    src.write_bytes(plaintext)
    for name in ("android", "upstream"):
        run(["dd", f"if={src}", f"of={m.dev(name)}", "bs=1M", "oflag=direct"])
        back = tmp_path / f"{name}.bin"
        run(["dd", f"if={m.dev(name)}", f"of={back}", "bs=1M", f"count={SIZE // MiB}"])
        assert back.read_bytes() == plaintext
    for name in ("upstream", "android", "holder"):
        m.dm("remove", name)
    log = m.log_file.read_bytes()
    m.umount()

    key = kdf_inline_key(RAW)
    android = stored(image, 16 * MiB, SIZE)
    upstream = stored(image, 32 * MiB, SIZE)
    assert android == xts_reference(key, plaintext, first_dun=0)
    assert upstream == xts_reference(key, plaintext, first_dun=100)  # iv_offset 800 sectors
    everything = image.read_bytes() + log
    for secret in (RAW, bytes.fromhex(lt), bytes.fromhex(eph), key):
        assert secret not in everything
        assert secret.hex().encode() not in everything
