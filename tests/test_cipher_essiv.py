"""AES-128-CBC-ESSIV against an independent construction from AES-CBC and hashlib SHA-256."""

from __future__ import annotations

import hashlib
import os

from cipher_helpers import openssl_cbc_essiv
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from fuseblk.ciphers import get_cipher
from fuseblk.key import BlkCryptoKey


def _key(raw: bytes, dus: int) -> BlkCryptoKey:
    return BlkCryptoKey.create("AES-128-CBC-ESSIV", raw, dus)


def test_known_answer_first_block_is_aes_of_essiv_iv_for_zero_plaintext() -> None:
    # P = 0, DUN = 0: C_0 = AES_K(IV) with IV = AES_{SHA-256(K)}(0^16)
    raw = bytes(range(16))
    iv = (
        Cipher(algorithms.AES(hashlib.sha256(raw).digest()), modes.ECB())
        .encryptor()
        .update(bytes(16))
    )
    expected = Cipher(algorithms.AES(raw), modes.ECB()).encryptor().update(iv)
    assert get_cipher(_key(raw, 512)).encrypt(bytes(512), 0)[:16] == expected


@settings(max_examples=60, deadline=None)
@given(
    raw=st.binary(min_size=16, max_size=16),
    dus_log=st.integers(4, 13),
    units=st.integers(1, 70),
    dun=st.one_of(
        st.integers(0, 1 << 32),
        st.integers((1 << 64) - 40, (1 << 64) + 40),
        st.integers((1 << 128) - 70, (1 << 128) - 1),
    ),
)
def test_matches_independent_cbc_essiv(raw: bytes, dus_log: int, units: int, dun: int) -> None:
    dus = 1 << dus_log
    data = os.urandom(dus * units)
    cipher = get_cipher(_key(raw, dus))
    ct = cipher.encrypt(data, dun)
    assert ct == openssl_cbc_essiv(raw, data, dun, dus)
    assert cipher.decrypt(ct, dun) == data


def test_one_key_serves_interleaved_requests_independently() -> None:
    # the encryptor keeps a CBC context between calls: its state must never leak into output
    raw = os.urandom(16)
    cipher = get_cipher(_key(raw, 512))
    a, b = os.urandom(512 * 3), os.urandom(512 * 200)
    for data, dun in [(a, 1), (b, 50), (a, 1), (b[:512], 2)]:
        assert cipher.encrypt(data, dun) == openssl_cbc_essiv(raw, data, dun, 512)


def test_dun_carries_across_2_pow_64_within_one_request() -> None:
    raw = os.urandom(16)
    data = os.urandom(512 * 8)
    start = (1 << 64) - 4
    assert get_cipher(_key(raw, 512)).encrypt(data, start) == openssl_cbc_essiv(
        raw, data, start, 512
    )
