"""Adiantum: the authors' test vectors (tests/vectors/adiantum, with their licence), and the
per-data-unit cipher built on it (tweak = the DUN as 32 little-endian bytes)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from hypothesis import given, settings
from hypothesis import strategies as st

from fuseblk.ciphers import get_cipher
from fuseblk.ciphers.adiantum import AdiantumKeys
from fuseblk.ciphers.chacha import key_words, keystream
from fuseblk.key import BlkCryptoKey

VECTOR_FILE = Path(__file__).parent / "vectors" / "adiantum" / "Adiantum_XChaCha12_32_AES256.json"
VECTORS: list[dict[str, object]] = json.loads(VECTOR_FILE.read_text())


def _case(v: dict[str, object]) -> tuple[bytes, bytes, bytes, bytes]:
    inp = v["input"]
    assert isinstance(inp, dict)
    return (
        bytes.fromhex(inp["key_hex"]),
        bytes.fromhex(inp["tweak_hex"]),
        bytes.fromhex(str(v["plaintext_hex"])),
        bytes.fromhex(str(v["ciphertext_hex"])),
    )


def _row(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8).reshape(1, -1)


@pytest.mark.parametrize("index", range(len(VECTORS)))
def test_authors_vectors_encrypt_and_decrypt(index: int) -> None:
    key, tweak, pt, ct = _case(VECTORS[index])
    keys = AdiantumKeys(key)
    assert keys.crypt(_row(pt), [tweak], encrypt=True).tobytes() == ct
    assert keys.crypt(_row(ct), [tweak], encrypt=False).tobytes() == pt


def _blk_crypto_cases() -> list[tuple[bytes, bytes, bytes, bytes]]:
    """The 32-byte-tweak vectors whose length is a valid data unit size: blk-crypto's shape."""
    cases = [_case(v) for v in VECTORS]
    return [
        c for c in cases if len(c[1]) == 32 and len(c[2]) >= 16 and len(c[2]) & (len(c[2]) - 1) == 0
    ]


def test_blk_crypto_shaped_vectors_exist() -> None:
    assert {len(c[2]) for c in _blk_crypto_cases()} >= {16, 128, 512, 4096}


@pytest.mark.parametrize("index", range(len(_blk_crypto_cases())))
def test_blk_crypto_vectors_through_get_cipher_with_the_dun_as_tweak(index: int) -> None:
    key, tweak, pt, ct = _blk_crypto_cases()[index]
    dun = int.from_bytes(tweak, "little")  # the IV is the DUN's 32 little-endian bytes
    cipher = get_cipher(BlkCryptoKey.create("Adiantum", key, len(pt)))
    assert cipher.encrypt(pt, dun) == ct
    assert cipher.decrypt(ct, dun) == pt


@pytest.mark.parametrize("blocks", [1, 3, 17])
def test_chacha_core_with_20_rounds_matches_openssl_chacha20(blocks: int) -> None:
    key, counter_nonce = os.urandom(32), os.urandom(16)
    words = np.frombuffer(counter_nonce, dtype="<u4").astype(np.uint32).reshape(1, 4)
    ours = keystream(key_words(key), words, blocks, rounds=20).tobytes()
    openssl = Cipher(algorithms.ChaCha20(key, counter_nonce), None).encryptor()
    assert ours == openssl.update(bytes(64 * blocks))


def _adiantum(raw: bytes, dus: int):  # type: ignore[no-untyped-def]
    return get_cipher(BlkCryptoKey.create("Adiantum", raw, dus))


@settings(max_examples=20, deadline=None)
@given(
    raw=st.binary(min_size=32, max_size=32),
    dus_log=st.integers(4, 12),
    units=st.integers(1, 5),
    dun=st.one_of(st.integers(0, 1 << 64), st.integers((1 << 256) - 3, (1 << 256) - 1)),
)
def test_many_units_in_one_call_equal_one_call_per_unit(
    raw: bytes, dus_log: int, units: int, dun: int
) -> None:
    dus = 1 << dus_log
    data = os.urandom(dus * units)
    cipher = _adiantum(raw, dus)
    together = cipher.encrypt(data, dun)
    apart = b"".join(
        cipher.encrypt(data[i : i + dus], dun + i // dus) for i in range(0, len(data), dus)
    )
    assert together == apart
    assert cipher.decrypt(together, dun) == data


def test_dun_carries_across_2_pow_64_within_one_request() -> None:
    cipher = _adiantum(os.urandom(32), 512)
    data = os.urandom(1024)
    ct = cipher.encrypt(data, (1 << 64) - 1)
    assert ct[512:] == cipher.encrypt(data[512:], 1 << 64)
    assert ct[512:] != cipher.encrypt(data[512:], 0)


def test_every_byte_of_a_unit_depends_on_every_other() -> None:
    # a wide-block cipher: flipping one plaintext bit changes the whole data unit
    cipher = _adiantum(os.urandom(32), 4096)
    data = bytearray(os.urandom(4096))
    a = cipher.encrypt(data, 1)
    data[4000] ^= 1
    b = cipher.encrypt(data, 1)
    assert a[:16] != b[:16] and a[-16:] != b[-16:]
