"""Adiantum (XChaCha12 + AES-256 + NH + Poly1305), per data unit with tweak = the 32-byte DUN IV.

The HBSH construction of the Adiantum paper (Crowley & Biggers, 2018), as the kernel's
crypto/adiantum.c runs it for blk-crypto. A message is split into the bulk ``L`` (all but the
last 16 bytes) and ``R`` (the last 16 bytes); with ``H(T, L)`` the ε-∆U hash
``Poly1305_{K_T}(bin128(8·|L|) ‖ T) + Poly1305_{K_M}(NH(pad16(L)))`` mod 2^128:

    P_M = P_R + H(T, P_L);  C_M = AES-256_{K_E}(P_M)
    C_L = P_L ^ XChaCha12_K(nonce = C_M ‖ 1 ‖ 0^7);  C_R = C_M − H(T, C_L)

The subkeys are the XChaCha12 keystream under the user key with nonce ``1 ‖ 0^23``:
``K_E (32) ‖ K_T (16) ‖ K_M (16) ‖ K_NH (1072)``. Poly1305 here is the bare polynomial
evaluation (no final ``s`` addition), which is ``cryptography``'s Poly1305 MAC with s = 0.

Every data unit of a request goes through each step together: NH and XChaCha12 are NumPy
over all units, the AES step is one ECB call; only the two Poly1305 calls and a 128-bit
addition remain per unit.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.poly1305 import Poly1305

from fuseblk.ciphers import Buffer, byte_view, register
from fuseblk.ciphers.chacha import key_words, xchacha_keystream
from fuseblk.ciphers.nh import KEY_BYTES as NH_KEY_BYTES
from fuseblk.ciphers.nh import NhKey
from fuseblk.dun import dun_iv
from fuseblk.errors import einval
from fuseblk.key import BlkCryptoKey
from fuseblk.modes import CryptoMode

ROUNDS = 12
BLOCK = 16
KEY_SIZE = 32
TWEAK_SIZE = 32  # blk-crypto's Adiantum IV: the DUN as 32 little-endian bytes
_MOD128 = 1 << 128
_POLY_S = bytes(16)
_P1305 = (1 << 130) - 5
_POLY_CLAMP = 0x0FFFFFFC0FFFFFFC0FFFFFFC0FFFFFFF
_INT_POLY_MAX_BLOCKS = 4  # measured: Python ints win up to here, one Poly1305 call beyond


class AdiantumKeys:
    """The subkeys derived from one 32-byte Adiantum key, and the per-message primitives."""

    def __init__(self, raw: bytes) -> None:
        if len(raw) != KEY_SIZE:
            raise einval(f"Adiantum needs a {KEY_SIZE}-byte key, got {len(raw)} bytes")
        self._stream_key = key_words(raw)
        nonce = np.zeros((1, 24), dtype=np.uint8)
        nonce[0, 0] = 1
        derived = xchacha_keystream(self._stream_key, nonce, 32 + 16 + 16 + NH_KEY_BYTES, ROUNDS)
        derived_bytes = derived.tobytes()
        block_key = derived_bytes[:32]
        self._header_key = derived_bytes[32:48] + _POLY_S
        self._header_r = int.from_bytes(derived_bytes[32:48], "little") & _POLY_CLAMP
        self._message_key = derived_bytes[48:64] + _POLY_S
        self._message_r = int.from_bytes(derived_bytes[48:64], "little") & _POLY_CLAMP
        self._nh = NhKey(derived_bytes[64:])
        self._enc = Cipher(algorithms.AES(block_key), modes.ECB()).encryptor()
        self._dec = Cipher(algorithms.AES(block_key), modes.ECB()).decryptor()

    def crypt(
        self, messages: npt.NDArray[np.uint8], tweaks: list[bytes], encrypt: bool
    ) -> npt.NDArray[np.uint8]:
        """En/decrypt (U, n) messages of equal length n >= 16, message u with ``tweaks[u]``."""
        count, length = messages.shape
        if length < BLOCK:
            raise einval(f"Adiantum needs at least {BLOCK} bytes, got {length}")
        bulk = length - BLOCK
        header = (8 * bulk).to_bytes(16, "little")
        tweak_hashes = self._tweak_hashes(header, tweaks)
        left = messages[:, :bulk]
        right = messages[:, bulk:]
        # first hash step: P_M = P_R + H(T, P_L) (enc) or C_M = C_R + H(T, C_L) (dec)
        h1 = self._message_hashes(left)
        rights = right.tobytes()
        mid_bytes = b"".join(
            ((_le(rights[16 * u : 16 * u + 16]) + tweak_hashes[u] + h1[u]) % _MOD128).to_bytes(
                16, "little"
            )
            for u in range(count)
        )
        # the block cipher on the 16-byte middle: C_M = E(P_M), or P_M = D(C_M) after the stream
        if encrypt:
            c_m = self._enc.update(mid_bytes)
            p_m = mid_bytes
        else:
            c_m = mid_bytes
            p_m = self._dec.update(mid_bytes)
        nonces = np.zeros((count, 24), dtype=np.uint8)
        nonces[:, :16] = np.frombuffer(c_m, dtype=np.uint8).reshape(count, 16)
        nonces[:, 16] = 1
        stream = xchacha_keystream(np.repeat(self._stream_key, count, axis=0), nonces, bulk, ROUNDS)
        out = np.empty_like(messages)
        np.bitwise_xor(left, stream, out=out[:, :bulk])
        # second hash step: C_R = C_M - H(T, C_L) (enc) or P_R = P_M - H(T, P_L) (dec)
        h2 = self._message_hashes(out[:, :bulk])
        final = p_m if not encrypt else c_m
        tails = b"".join(
            ((_le(final[16 * u : 16 * u + 16]) - tweak_hashes[u] - h2[u]) % _MOD128).to_bytes(
                16, "little"
            )
            for u in range(count)
        )
        out[:, bulk:] = np.frombuffer(tails, dtype=np.uint8).reshape(count, BLOCK)
        return out

    def _tweak_hashes(self, header: bytes, tweaks: list[bytes]) -> list[int]:
        """Poly1305_{K_T}(header ‖ T) for each tweak.

        For blk-crypto's 32-byte tweaks that is three full blocks, ``h = c1·r³ + c2·r² + c3·r``
        mod 2^130 − 5 with ``c = block + 2^128``: evaluated directly on Python ints, with the
        header's term shared, it costs a fraction of a Poly1305 call per data unit.
        """
        if any(len(t) != TWEAK_SIZE for t in tweaks):
            return [_poly(self._header_key, header + t) for t in tweaks]
        r = self._header_r
        r2 = r * r % _P1305
        head = (int.from_bytes(header, "little") + _MOD128) * r2 * r % _P1305
        return [
            (
                head
                + (int.from_bytes(t[:16], "little") + _MOD128) * r2
                + (int.from_bytes(t[16:], "little") + _MOD128) * r
            )
            % _P1305
            % _MOD128
            for t in tweaks
        ]

    def _message_hashes(self, left: npt.NDArray[np.uint8]) -> list[int]:
        """Poly1305_{K_M}(NH(L)) per message. NH output is whole 16-byte blocks; when there are
        few (data units up to 2 KiB), ``Σ (c_i + 2^128)·r^(k−i+1)`` on Python ints beats a
        Poly1305 call per unit."""
        nh = self._nh.hash(left)
        count, nbytes = nh.shape
        blocks = nbytes // BLOCK
        if blocks == 0:  # empty bulk (16-byte messages): the empty polynomial is 0
            return [0] * count
        if blocks > _INT_POLY_MAX_BLOCKS:
            return [_poly(self._message_key, nh[u].tobytes()) for u in range(count)]
        r = self._message_r
        powers = [pow(r, blocks - i, _P1305) for i in range(blocks)]
        raw = nh.tobytes()
        return [
            sum(
                (int.from_bytes(raw[o + 16 * i : o + 16 * i + 16], "little") + _MOD128) * p
                for i, p in enumerate(powers)
            )
            % _P1305
            % _MOD128
            for o in range(0, count * nbytes, nbytes)
        ]


def _poly(key: bytes, data: bytes) -> int:
    return int.from_bytes(Poly1305.generate_tag(key, data), "little")


def _le(data: bytes) -> int:
    return int.from_bytes(data, "little")


class Adiantum:
    """blk-crypto Adiantum: each data unit is one Adiantum message, tweak = its DUN IV."""

    def __init__(self, raw: bytes, data_unit_size: int) -> None:
        if data_unit_size < BLOCK:
            raise einval(f"Adiantum data units must be at least {BLOCK} bytes")
        self.data_unit_size = data_unit_size
        self._keys = AdiantumKeys(raw)

    def __repr__(self) -> str:
        return f"Adiantum(dus={self.data_unit_size})"

    def encrypt(self, data: Buffer, dun: int) -> bytearray:
        return self._run(data, dun, True)

    def decrypt(self, data: Buffer, dun: int) -> bytearray:
        return self._run(data, dun, False)

    def decrypt_into(self, buf: memoryview, dun: int) -> None:
        view = byte_view(buf)
        view[:] = self._run(view, dun, False)

    def _run(self, data: Buffer, dun: int, encrypt: bool) -> bytearray:
        src = np.frombuffer(data, dtype=np.uint8)
        dus = self.data_unit_size
        if src.size % dus:
            raise einval(f"{src.size} bytes is not a whole number of {dus}-byte data units")
        units = src.size // dus
        out = bytearray(src.size)
        step = max(1, (256 * 1024) // dus)  # bound the temporaries of one pass
        for first in range(0, units, step):
            n = min(step, units - first)
            tweaks = [dun_iv(dun + first + u, TWEAK_SIZE) for u in range(n)]
            part = src[first * dus : (first + n) * dus].reshape(n, dus)
            out[first * dus : (first + n) * dus] = self._keys.crypt(part, tweaks, encrypt).tobytes()
        return out


@register(CryptoMode.ADIANTUM)
def adiantum(key: BlkCryptoKey) -> Adiantum:
    return Adiantum(key.raw, key.data_unit_size)
