"""The key derivation function of hardware-wrapped keys: what the hardware makes of its key.

Every known implementation of hardware-wrapped inline-encryption keys derives the keys it
actually uses from the 32-byte key inside a wrapped blob with NIST SP800-108 in counter mode,
the PRF being AES-256-CMAC keyed by that 32-byte key. xfstests (``fscrypt-crypt-util
--enable-hw-kdf``) and Android's VTS replicate it to check ciphertext, so the emulated hardware
derives exactly the same bytes and a test can recompute them without the hardware.

Output block ``i`` (counting from 1) is::

    CMAC(key, be32(i) || label || 0x00 || context || be32(output length in bits))

with a fixed 11-byte label. Two contexts are used: the 64-byte **inline key** (the AES-256-XTS
key loaded into a keyslot) and the 32-byte **software secret** (``blk_crypto_derive_sw_secret``,
from which fscrypt derives its non-contents keys). Neither ever leaves the hardware except the
software secret, through derive_sw_secret.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import cmac
from cryptography.hazmat.primitives.ciphers import algorithms

HW_KEY_SIZE = 32  # the unwrapped key the KDF is keyed by (AES-256-CMAC)
INLINE_KEY_SIZE = 64  # an AES-256-XTS key
SW_SECRET_SIZE = 32  # BLK_CRYPTO_SW_SECRET_SIZE

LABEL = bytes.fromhex("0000400000000000000020")
INLINE_KEY_CONTEXT = b"inline encryption key" + bytes(6) + bytes.fromhex("024300825000000000")
SW_SECRET_CONTEXT = b"raw secret" + bytes(9) + bytes.fromhex("021700805000000000")


def sp800_108_cmac(key: bytes, context: bytes, length: int) -> bytes:
    """``length`` bytes of SP800-108 counter-mode output, PRF AES-256-CMAC keyed by ``key``."""
    if len(key) != HW_KEY_SIZE:
        raise ValueError(f"the hardware KDF takes a {HW_KEY_SIZE}-byte key, got {len(key)}")
    suffix = LABEL + b"\x00" + context + (8 * length).to_bytes(4, "big")
    out = bytearray()
    counter = 1
    while len(out) < length:
        mac = cmac.CMAC(algorithms.AES(key))
        mac.update(counter.to_bytes(4, "big") + suffix)
        out += mac.finalize()
        counter += 1
    return bytes(out[:length])


def inline_key(hw_key: bytes) -> bytes:
    """The AES-256-XTS key the hardware en/decrypts with for the wrapped key ``hw_key``."""
    return sp800_108_cmac(hw_key, INLINE_KEY_CONTEXT, INLINE_KEY_SIZE)


def sw_secret(hw_key: bytes) -> bytes:
    """The software secret (``derive_sw_secret``) of the wrapped key ``hw_key``."""
    return sp800_108_cmac(hw_key, SW_SECRET_CONTEXT, SW_SECRET_SIZE)
