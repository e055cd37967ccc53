"""What `secure` writes is AES-256-XTS ciphertext on inline.img, identical to `fuseblk crypt`'s.

secure = default-key aes-xts-plain64 (the state dir's secure.key) sector_size:4096 iv_large_sectors
over base, and base begins with inline.img at 0: byte b of secure is byte b of inline.img's data
area, encrypted with DUN = b // 4096.
"""

from __future__ import annotations

import json
import os

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from harness import FuseblkMount, MiB, fuseblk, run

pytestmark = pytest.mark.integration

SIZE = 8 * MiB
UNIT = 4096
INLINE_PART = 768 * MiB  # base = inline.img [0, 768 MiB) then legacy.img [0, 256 MiB)


def xts_reference(key: bytes, plaintext: bytes, first_dun: int) -> bytes:
    """OpenSSL's AES-XTS, one data unit at a time, tweak = little-endian DUN: the oracle."""
    out = bytearray()
    for i in range(0, len(plaintext), UNIT):
        tweak = (first_dun + i // UNIT).to_bytes(16, "little")
        enc = Cipher(algorithms.AES(key), modes.XTS(tweak)).encryptor()
        out += enc.update(plaintext[i : i + UNIT]) + enc.finalize()
    return bytes(out)


def data_offset(image: os.PathLike[str]) -> int:
    info = json.loads(fuseblk("image", "inspect", "--json", image).stdout)
    return int(info["header"]["data_offset"])


def stored(image: os.PathLike[str], at: int, size: int) -> bytes:
    """``size`` bytes of the image's data area from byte ``at``: what the hardware stored."""
    with open(image, "rb") as f:
        f.seek(data_offset(image) + at)
        return f.read(size)


def cli_encrypt(key_file: os.PathLike[str], plaintext: bytes) -> bytes:
    """``fuseblk crypt encrypt``'s AES-256-XTS of ``plaintext`` from DUN 0, 4096-byte units."""
    return fuseblk(
        "crypt",
        "encrypt",
        "--mode",
        "AES-256-XTS",
        "--key-file",
        key_file,
        "--data-unit-size",
        str(UNIT),
        "--dun",
        "0",
        input=plaintext,
    ).stdout


def test_dd_to_secure_reads_back_and_lands_as_xts_ciphertext_on_inline_img(
    default_setup: FuseblkMount, tmp_path: os.PathLike[str]
) -> None:
    m = default_setup
    plain_file = os.path.join(tmp_path, "plain.bin")
    plaintext = os.urandom(SIZE)
    with open(plain_file, "wb") as f:
        f.write(plaintext)

    size = m.dev("secure").stat().st_size
    # dd's plain form opens with O_TRUNC, which a device ignores, as a block device does.
    run(["dd", f"if={plain_file}", f"of={m.dev('secure')}", "bs=1M", "oflag=direct"])
    assert m.dev("secure").stat().st_size == size
    back = os.path.join(tmp_path, "back.bin")
    run(["dd", f"if={m.dev('secure')}", f"of={back}", "bs=1M", f"count={SIZE // MiB}"])
    with open(back, "rb") as f:
        assert f.read() == plaintext

    m.umount()  # the daemon flushes every backend before it exits

    on_disk = stored(m.image("inline.img"), 0, SIZE)
    assert on_disk != plaintext
    key = m.key_file.read_bytes()
    assert on_disk == xts_reference(key, plaintext, first_dun=0)
    assert cli_encrypt(m.key_file, plaintext) == on_disk


def test_ciphertext_is_the_same_whether_hardware_or_fallback_encrypted_it(
    default_setup: FuseblkMount, tmp_path: os.PathLike[str]
) -> None:
    """One write across secure's 768 MiB point: inline.img's hardware encrypts the first half,
    the fallback the second (legacy.img has no inline encryption); both are the same XTS."""
    m = default_setup
    half = 2 * MiB
    plaintext = os.urandom(2 * half)
    plain_file = os.path.join(tmp_path, "plain.bin")
    with open(plain_file, "wb") as f:
        f.write(plaintext)
    seek = f"seek={(INLINE_PART - half) // MiB}"
    run(
        [
            "dd",
            f"if={plain_file}",
            f"of={m.dev('secure')}",
            "bs=1M",
            seek,
            "oflag=direct",
            "conv=notrunc,fsync",
        ]
    )
    m.umount()

    key = m.key_file.read_bytes()
    expected = xts_reference(key, plaintext, first_dun=(INLINE_PART - half) // UNIT)
    assert stored(m.image("inline.img"), INLINE_PART - half, half) == expected[:half]
    assert stored(m.image("legacy.img"), 0, half) == expected[half:]


def test_secure_key_is_made_once_and_private(default_setup: FuseblkMount) -> None:
    m = default_setup
    key = m.key_file.read_bytes()
    assert len(key) == 64
    assert m.key_file.stat().st_mode & 0o777 == 0o600
    m.restart()
    assert m.key_file.read_bytes() == key
