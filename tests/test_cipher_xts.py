"""AES-256-XTS and SM4-XTS per data unit: published vectors, and bulk path == per-unit path."""

from __future__ import annotations

import os

import cryptography_vectors
import pytest
from cipher_helpers import openssl_xts
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from fuseblk.ciphers import get_cipher
from fuseblk.ciphers.gf128 import mul_alpha_int
from fuseblk.ciphers.xts import XtsCipher
from fuseblk.dun import dun_iv
from fuseblk.key import BlkCryptoKey


def _nist_vectors(direction: str) -> list[dict[str, str]]:
    """NIST CAVS XTSGenAES256 with data-unit-sequence-number tweaks, whole-block lengths only."""
    path = os.path.join("ciphers", "AES", "XTS", "tweak-dataunitseqno", "XTSGenAES256.rsp")
    vectors: list[dict[str, str]] = []
    section = ""
    current: dict[str, str] = {}
    with cryptography_vectors.open_vector_file(path, "r") as f:
        for line in f:
            line = line.strip()
            if line.startswith("["):
                section = line.strip("[]")
            elif " = " in line:
                name, value = line.split(" = ", 1)
                if name == "COUNT":
                    current = {"section": section}
                    vectors.append(current)
                current[name] = value
    return [
        v
        for v in vectors
        if v["section"] == direction and int(v["DataUnitLen"]) % 128 == 0 and "PT" in v
    ]


def _bulk_aes(raw: bytes, dus: int, via_xts: bool = False) -> XtsCipher:
    """An AES-XTS cipher forced onto a bulk path: vectorised tweaks around one ECB pass, or
    around one OpenSSL XTS pass with tweaks α^k (``via_xts``)."""
    if via_xts:
        return XtsCipher(algorithms.AES, raw, dus, native_xts=True, per_unit_max_units=0)
    return XtsCipher(algorithms.AES, raw, dus, native_xts=False)


BULK_PATHS = pytest.mark.parametrize("via_xts", [False, True], ids=["ecb-pass", "xts-pass"])


def _textbook_xts(algorithm, raw: bytes, data: bytes, dun: int, dus: int) -> bytes:  # type: ignore[no-untyped-def]
    """Independent oracle: IEEE 1619 block by block on ECB, tweaks as Python ints."""
    half = len(raw) // 2
    enc1 = Cipher(algorithm(raw[:half]), modes.ECB()).encryptor()
    enc2 = Cipher(algorithm(raw[half:]), modes.ECB()).encryptor()
    out = bytearray()
    for u in range(len(data) // dus):
        t = int.from_bytes(enc2.update(dun_iv(dun + u, 16)), "little")
        for j in range(dus // 16):
            tb = t.to_bytes(16, "little")
            block = data[u * dus + 16 * j : u * dus + 16 * (j + 1)]
            mid = enc1.update(bytes(a ^ b for a, b in zip(block, tb, strict=True)))
            out += bytes(a ^ b for a, b in zip(mid, tb, strict=True))
            t = mul_alpha_int(t)
    return bytes(out)


@BULK_PATHS
@pytest.mark.parametrize("vector", _nist_vectors("ENCRYPT"), ids=lambda v: v["COUNT"])
def test_nist_xts_aes256_encrypt_vectors_match_bulk_path(
    vector: dict[str, str], via_xts: bool
) -> None:
    dus = int(vector["DataUnitLen"]) // 8
    cipher = _bulk_aes(bytes.fromhex(vector["Key"]), dus, via_xts)
    ct = cipher.encrypt(bytes.fromhex(vector["PT"]), int(vector["DataUnitSeqNumber"]))
    assert ct.hex() == vector["CT"]


@BULK_PATHS
@pytest.mark.parametrize("vector", _nist_vectors("DECRYPT"), ids=lambda v: v["COUNT"])
def test_nist_xts_aes256_decrypt_vectors_match_bulk_path(
    vector: dict[str, str], via_xts: bool
) -> None:
    dus = int(vector["DataUnitLen"]) // 8
    cipher = _bulk_aes(bytes.fromhex(vector["Key"]), dus, via_xts)
    pt = cipher.decrypt(bytes.fromhex(vector["CT"]), int(vector["DataUnitSeqNumber"]))
    assert pt.hex() == vector["PT"]


def test_nist_vectors_were_found() -> None:
    assert len(_nist_vectors("ENCRYPT")) >= 200
    assert len(_nist_vectors("DECRYPT")) >= 200


# IEEE Std 1619-2007 Annex B, XTS-AES-256 vector 10: 512-byte data unit, sequence number 0xff.
IEEE_10_KEY = bytes.fromhex(
    "2718281828459045235360287471352662497757247093699959574966967627"
    "3141592653589793238462643383279502884197169399375105820974944592"
)
IEEE_10_PT = bytes(range(256)) * 2
IEEE_10_CT = bytes.fromhex(
    "1c3b3a102f770386e4836c99e370cf9bea00803f5e482357a4ae12d414a3e63b"
    "5d31e276f8fe4a8d66b317f9ac683f44680a86ac35adfc3345befecb4bb188fd"
    "5776926c49a3095eb108fd1098baec70aaa66999a72a82f27d848b21d4a741b0"
    "c5cd4d5fff9dac89aeba122961d03a757123e9870f8acf1000020887891429ca"
    "2a3e7a7d7df7b10355165c8b9a6d0a7de8b062c4500dc4cd120c0f7418dae3d0"
    "b5781c34803fa75421c790dfe1de1834f280d7667b327f6c8cd7557e12ac3a0f"
    "93ec05c52e0493ef31a12d3d9260f79a289d6a379bc70c50841473d1a8cc81ec"
    "583e9645e07b8d9670655ba5bbcfecc6dc3966380ad8fecb17b6ba02469a020a"
    "84e18e8f84252070c13e9f1f289be54fbc481457778f616015e1327a02b140f1"
    "505eb309326d68378f8374595c849d84f4c333ec4423885143cb47bd71c5edae"
    "9be69a2ffeceb1bec9de244fbe15992b11b77c040f12bd8f6a975a44a0f90c29"
    "a9abc3d4d893927284c58754cce294529f8614dcd2aba991925fedc4ae74ffac"
    "6e333b93eb4aff0479da9a410e4450e0dd7ae4c6e2910900575da401fc07059f"
    "645e8b7e9bfdef33943054ff84011493c27b3429eaedb4ed5376441a77ed4385"
    "1ad77f16f541dfd269d50d6a5f14fb0aab1cbb4c1550be97f7ab4066193c4caa"
    "773dad38014bd2092fa755c824bb5e54c4f36ffda9fcea70b9c6e693e148c151"
)


def test_ieee1619_vector_10_through_get_cipher() -> None:
    cipher = get_cipher(BlkCryptoKey.create("AES-256-XTS", IEEE_10_KEY, 512))
    assert cipher.encrypt(IEEE_10_PT, 0xFF) == IEEE_10_CT
    assert cipher.decrypt(IEEE_10_CT, 0xFF) == IEEE_10_PT


@BULK_PATHS
def test_ieee1619_vector_10_as_second_unit_of_a_bulk_request(via_xts: bool) -> None:
    cipher = _bulk_aes(IEEE_10_KEY, 512, via_xts)
    ct = cipher.encrypt(bytes(512) + IEEE_10_PT + bytes(512), 0xFE)
    assert ct[512:1024] == IEEE_10_CT
    assert cipher.decrypt(ct, 0xFE)[512:1024] == IEEE_10_PT


# IEEE Std 1619-2007 Annex B, XTS-AES-128 vectors 2 and 3 (sequence number 0x3333333333): not a
# blk-crypto mode, but the same XTS code with 16-byte key halves.
@BULK_PATHS
@pytest.mark.parametrize(
    ("raw", "ct"),
    [
        (
            bytes([0x11] * 16 + [0x22] * 16),
            "c454185e6a16936e39334038acef838bfb186fff7480adc4289382ecd6d394f0",
        ),
        (
            bytes(range(0xFF, 0xEF, -1)) + bytes([0x22] * 16),
            "af85336b597afc1a900b2eb21ec949d292df4c047e0b21532186a5971a227a89",
        ),
    ],
    ids=["vector-2", "vector-3"],
)
def test_ieee1619_aes128_vectors_on_the_generic_xts(raw: bytes, ct: str, via_xts: bool) -> None:
    cipher = _bulk_aes(raw, 32, via_xts)
    assert cipher.encrypt(bytes([0x44] * 32), 0x3333333333).hex() == ct
    assert cipher.decrypt(bytes.fromhex(ct), 0x3333333333) == bytes([0x44] * 32)


# SM4-XTS with IEEE 1619 tweak arithmetic, as the kernel's xts(sm4) computes it.
# From the kernel's crypto/testmgr.h (sm4_xts_tv_template) ...
SM4_KERNEL_KEY = bytes([0x11] * 16 + [0x22] * 16)
SM4_KERNEL_IV = bytes([0x33] * 5 + [0] * 11)
SM4_KERNEL_CT = bytes.fromhex("a74d726c11196a32be04e001ff29d0c7932f9f3ec29bfcb64dd17f63cbd3ea31")
# ... and OpenSSL's evpciph_sm4.txt "XTSStandard = IEEE" vector, first two (whole) blocks.
SM4_OSSL_KEY = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c000102030405060708090a0b0c0d0e0f")
SM4_OSSL_IV = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")
SM4_OSSL_PT = bytes.fromhex("6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51")
SM4_OSSL_CT = bytes.fromhex("e9538251c71d7b80bbe4483fef497bd1b3db1a3e60408c575d63ff7db39f8326")


@pytest.mark.parametrize(
    ("raw", "iv", "pt", "ct"),
    [
        (SM4_KERNEL_KEY, SM4_KERNEL_IV, bytes([0x44] * 32), SM4_KERNEL_CT),
        (SM4_OSSL_KEY, SM4_OSSL_IV, SM4_OSSL_PT, SM4_OSSL_CT),
    ],
    ids=["kernel-testmgr", "openssl-ieee"],
)
def test_sm4_xts_published_vectors(raw: bytes, iv: bytes, pt: bytes, ct: bytes) -> None:
    # the IV is the DUN's little-endian bytes, so the DUN is the IV read little-endian
    dun = int.from_bytes(iv, "little")
    cipher = get_cipher(BlkCryptoKey.create("SM4-XTS", raw, 32))
    assert cipher.encrypt(pt, dun) == ct
    assert cipher.decrypt(ct, dun) == pt


_DUNS = st.one_of(
    st.integers(0, 1 << 20),
    st.integers((1 << 64) - 40, (1 << 64) + 40),
    st.integers((1 << 128) - 40, (1 << 128) - 1),
    st.integers(0, (1 << 128) - 1),
)


@settings(max_examples=60, deadline=None)
@given(
    raw=st.binary(min_size=64, max_size=64),
    dus_log=st.integers(4, 13),
    units=st.integers(1, 40),
    dun=_DUNS,
    seed=st.binary(min_size=16, max_size=16),
    via_xts=st.booleans(),
)
def test_aes_bulk_paths_equal_openssl_per_unit(
    raw: bytes, dus_log: int, units: int, dun: int, seed: bytes, via_xts: bool
) -> None:
    dus = 1 << dus_log
    data = (seed * (dus * units // 16 + 1))[: dus * units]
    bulk = _bulk_aes(raw, dus, via_xts)
    expected = openssl_xts(raw, data, dun, dus) if raw[:32] != raw[32:] else None
    ct = bulk.encrypt(data, dun)
    if expected is not None:
        assert ct == expected
    assert bulk.decrypt(ct, dun) == data
    buf = bytearray(ct)
    bulk.decrypt_into(memoryview(buf), dun)
    assert buf == data
    assert get_cipher(BlkCryptoKey.create("AES-256-XTS", raw, dus)).encrypt(data, dun) == ct


@settings(max_examples=25, deadline=None)
@given(
    raw=st.binary(min_size=32, max_size=32),
    dus_log=st.integers(4, 10),
    units=st.integers(1, 6),
    dun=_DUNS,
)
def test_sm4_bulk_path_equals_textbook_xts(raw: bytes, dus_log: int, units: int, dun: int) -> None:
    dus = 1 << dus_log
    data = os.urandom(dus * units)
    cipher = get_cipher(BlkCryptoKey.create("SM4-XTS", raw, dus))
    ct = cipher.encrypt(data, dun)
    assert ct == _textbook_xts(algorithms.SM4, raw, data, dun, dus)
    assert cipher.decrypt(ct, dun) == data


def test_dun_carries_across_2_pow_64_within_one_request() -> None:
    raw = os.urandom(64)
    data = os.urandom(4096 * 40)
    start = (1 << 64) - 20
    ct = get_cipher(BlkCryptoKey.create("AES-256-XTS", raw, 4096)).encrypt(data, start)
    assert ct == openssl_xts(raw, data, start, 4096)
    # unit 20 has DUN 2^64: IV 00..00 01 00..00, not 00..00 (no truncation to 64 bits)
    assert ct[20 * 4096 : 21 * 4096] == openssl_xts(raw, data[20 * 4096 : 21 * 4096], 1 << 64, 4096)


def test_equal_key_halves_are_accepted_like_the_kernel_outside_fips() -> None:
    raw = bytes(range(32)) * 2
    data = os.urandom(4096 * 3)
    ct = get_cipher(BlkCryptoKey.create("AES-256-XTS", raw, 4096)).encrypt(data, 9)
    assert ct == _textbook_xts(algorithms.AES, raw, data, 9, 4096)
