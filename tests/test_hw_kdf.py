"""The hardware KDF of wrapped keys: NIST SP800-108 counter mode with AES-256-CMAC.

The known answers are the ones xfstests' ``fscrypt-crypt-util --enable-hw-kdf`` and Android's VTS
compute for a 32-byte all-zero key. The second check is an implementation written here from the
standards alone (CMAC from RFC 4493 over raw AES blocks, the KDF loop from SP800-108), sharing
nothing with the module but the constants the issue spells out.
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given
from hypothesis import strategies as st

from fuseblk.ciphers import hw_kdf

INLINE_KEY_OF_ZEROES = bytes.fromhex(
    "cbe5db40215a3d386d61e54ef2f8a7814b00bacf35b316f88e68e89a47abbab4"
    "834c27dac8a91ae1c3304f31b5f2202c14989661bafccc56cf6212d8b1f72691"
)
SW_SECRET_OF_ZEROES = bytes.fromhex(
    "e26fb19b4fb6266fc7c5fc9654efad643cfebc64c097341155195595c28d5ec9"
)


def test_inline_key_of_the_all_zero_key_is_the_known_answer() -> None:
    assert hw_kdf.inline_key(bytes(32)) == INLINE_KEY_OF_ZEROES


def test_software_secret_of_the_all_zero_key_is_the_known_answer() -> None:
    assert hw_kdf.sw_secret(bytes(32)) == SW_SECRET_OF_ZEROES


# --- an independent AES-CMAC (RFC 4493) and SP800-108 counter-mode KDF ----------------------------


def _aes_block(key: bytes, block: bytes) -> bytes:
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return enc.update(block) + enc.finalize()


def _double(block: bytes) -> bytes:
    """Multiplication by x in GF(2^128) as RFC 4493 generates its subkeys."""
    n = int.from_bytes(block, "big") << 1
    if n >> 128:
        n = (n & ((1 << 128) - 1)) ^ 0x87
    return n.to_bytes(16, "big")


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def rfc4493_cmac(key: bytes, message: bytes) -> bytes:
    k1 = _double(_aes_block(key, bytes(16)))
    k2 = _double(k1)
    blocks = [message[i : i + 16] for i in range(0, len(message), 16)] or [b""]
    complete = len(blocks[-1]) == 16
    padded = blocks[-1] if complete else blocks[-1] + b"\x80" + bytes(15 - len(blocks[-1]))
    last = _xor(padded, k1 if complete else k2)
    state = bytes(16)
    for block in [*blocks[:-1], last]:
        state = _aes_block(key, _xor(state, block))
    return state


def counter_mode_kdf(key: bytes, label: bytes, context: bytes, length: int) -> bytes:
    out = b""
    i = 1
    while len(out) < length:
        fixed = label + b"\x00" + context + (length * 8).to_bytes(4, "big")
        out += rfc4493_cmac(key, i.to_bytes(4, "big") + fixed)
        i += 1
    return out[:length]


LABEL = bytes([0, 0, 0x40, 0, 0, 0, 0, 0, 0, 0, 0x20])
INLINE_CONTEXT = b"inline encryption key" + bytes(6) + bytes([2, 0x43, 0, 0x82, 0x50, 0, 0, 0, 0])
SECRET_CONTEXT = b"raw secret" + bytes(9) + bytes([2, 0x17, 0, 0x80, 0x50, 0, 0, 0, 0])


def test_the_independent_kdf_gives_the_known_answers_too() -> None:
    assert counter_mode_kdf(bytes(32), LABEL, INLINE_CONTEXT, 64) == INLINE_KEY_OF_ZEROES
    assert counter_mode_kdf(bytes(32), LABEL, SECRET_CONTEXT, 32) == SW_SECRET_OF_ZEROES


def test_rfc4493_cmac_matches_the_rfc_example_for_an_empty_message() -> None:
    # RFC 4493 section 4, Example 1 (AES-128): checks the test's own CMAC before trusting it.
    key = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")
    assert rfc4493_cmac(key, b"").hex() == "bb1d6929e95937287fa37d129b756746"


@given(st.binary(min_size=32, max_size=32))
def test_the_kdf_equals_the_independent_one_for_any_key(key: bytes) -> None:
    assert hw_kdf.inline_key(key) == counter_mode_kdf(key, LABEL, INLINE_CONTEXT, 64)
    assert hw_kdf.sw_secret(key) == counter_mode_kdf(key, LABEL, SECRET_CONTEXT, 32)


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_the_kdf_takes_only_a_32_byte_key(size: int) -> None:
    with pytest.raises(ValueError):
        hw_kdf.inline_key(bytes(size))
