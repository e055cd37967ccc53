"""AES-256-XTS and SM4-XTS (IEEE 1619), one tweak per data unit: IV = DUN, little-endian.

Per data unit, XTS is ``C_j = E_K1(P_j ^ T_j) ^ T_j`` with ``T_j = E_K2(IV) · α^j``. Creating a
``cryptography`` XTS cipher per data unit costs ~15 µs, an order of magnitude more than the AES
work on 4 KiB, so the bulk path instead keeps one ECB context per key half for the life of the
key and handles any number of data units with:

1. one ECB call with K2 over all the IVs (the first tweaks),
2. the α^j multiples of every unit at once, vectorised (:mod:`fuseblk.ciphers.gf128`),
3. XOR, one ECB call with K1 over the whole buffer, XOR.

Requests of a data unit or two go through ``cryptography``'s own XTS instead, which is faster
there (the crossover was measured with tools/bench_crypto.py). OpenSSL has no IEEE SM4-XTS, so
SM4 always takes the bulk path on SM4-ECB. Data units are whole multiples of 16 bytes: no
ciphertext stealing is ever needed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from cryptography.hazmat.primitives.ciphers import (
    BlockCipherAlgorithm,
    Cipher,
    CipherContext,
    algorithms,
    modes,
)

from fuseblk.ciphers import Buffer, register
from fuseblk.ciphers.gf128 import xts_tweaks
from fuseblk.ciphers.ivs import dun_ivs
from fuseblk.ciphers.workspace import CHUNK_BYTES, scratch
from fuseblk.dun import dun_iv
from fuseblk.errors import einval
from fuseblk.key import BlkCryptoKey
from fuseblk.modes import CryptoMode

BLOCK = 16
IV_SIZE = 16
# Up to this many data units, one cryptography XTS call per unit (~3.5 µs each) beats the bulk
# path, whose NumPy calls cost ~20-30 µs whatever the size (measured: crossover 6-12 units).
PER_UNIT_MAX_UNITS = 8


class XtsCipher:
    """XTS over a 128-bit block cipher, for data units of ``data_unit_size`` bytes."""

    def __init__(
        self,
        algorithm: Callable[[bytes], BlockCipherAlgorithm],
        raw: bytes,
        data_unit_size: int,
        native_xts: bool = False,
    ) -> None:
        if data_unit_size <= 0 or data_unit_size % BLOCK:
            raise einval(f"XTS data units must be multiples of {BLOCK} bytes, got {data_unit_size}")
        half = len(raw) // 2
        self.data_unit_size = data_unit_size
        self._blocks = data_unit_size // BLOCK
        k1, k2 = raw[:half], raw[half:]
        self._enc1: CipherContext = Cipher(algorithm(k1), modes.ECB()).encryptor()
        self._dec1: CipherContext = Cipher(algorithm(k1), modes.ECB()).decryptor()
        self._enc2: CipherContext = Cipher(algorithm(k2), modes.ECB()).encryptor()
        # OpenSSL refuses XTS keys whose halves are equal; the kernel allows them outside FIPS
        # mode, and the bulk path handles them, so only distinct halves may use OpenSSL's XTS.
        self._xts_alg = algorithm(raw) if native_xts and k1 != k2 else None

    def __repr__(self) -> str:
        return f"XtsCipher(dus={self.data_unit_size})"

    def encrypt(self, data: Buffer, dun: int) -> bytearray:
        src = _bytes_view(data)
        out = bytearray(len(src))
        self._crypt(src, memoryview(out), dun, encrypt=True)
        return out

    def decrypt(self, data: Buffer, dun: int) -> bytearray:
        src = _bytes_view(data)
        out = bytearray(len(src))
        self._crypt(src, memoryview(out), dun, encrypt=False)
        return out

    def decrypt_into(self, buf: memoryview, dun: int) -> None:
        view = _bytes_view(buf)
        self._crypt(view, view, dun, encrypt=False)

    def per_unit(self, data: Buffer, dun: int, encrypt: bool) -> bytearray:
        """One ``cryptography`` XTS call per data unit: the reference the bulk path must match."""
        if self._xts_alg is None:
            raise einval("no native XTS for this cipher or key")
        src = _bytes_view(data)
        out = bytearray(len(src))
        self._per_unit(src, memoryview(out), dun, encrypt)
        return out

    # -- internals ---------------------------------------------------------------------------

    def _crypt(self, src: memoryview, dst: memoryview, dun: int, encrypt: bool) -> None:
        dus = self.data_unit_size
        if len(src) % dus:
            raise einval(f"{len(src)} bytes is not a whole number of {dus}-byte data units")
        units = len(src) // dus
        if self._xts_alg is not None and units <= PER_UNIT_MAX_UNITS:
            self._per_unit(src, dst, dun, encrypt)
            return
        step = max(1, CHUNK_BYTES // dus)
        for first in range(0, units, step):
            n = min(step, units - first)
            lo, hi = first * dus, (first + n) * dus
            self._bulk(src[lo:hi], dst[lo:hi], dun + first, n, encrypt)

    def _per_unit(self, src: memoryview, dst: memoryview, dun: int, encrypt: bool) -> None:
        assert self._xts_alg is not None
        dus = self.data_unit_size
        for i in range(0, len(src), dus):
            cipher = Cipher(self._xts_alg, modes.XTS(dun_iv(dun + i // dus, IV_SIZE)))
            ctx = cipher.encryptor() if encrypt else cipher.decryptor()
            dst[i : i + dus] = ctx.update(src[i : i + dus])

    def _bulk(self, src: memoryview, dst: memoryview, dun: int, n: int, encrypt: bool) -> None:
        nbytes = len(src)
        ivs = dun_ivs(dun, n, IV_SIZE)
        first = scratch("xts.first", n * BLOCK + BLOCK)
        self._enc2.update_into(ivs.view(np.uint8).reshape(-1).data, first.data)
        first_tweaks = first[: n * BLOCK].view(np.uint64).reshape(n, 2)
        tweaks = xts_tweaks(first_tweaks, self._blocks)
        shape = (n, self._blocks, 2)
        plain = np.frombuffer(src, dtype=np.uint64).reshape(shape)
        pre = scratch("xts.pre", nbytes)
        np.bitwise_xor(plain, tweaks, out=pre.view(np.uint64).reshape(shape))
        post = scratch("xts.post", nbytes + BLOCK)
        ctx = self._enc1 if encrypt else self._dec1
        ctx.update_into(pre.data, post.data)
        result = np.frombuffer(dst, dtype=np.uint64).reshape(shape)
        np.bitwise_xor(post[:nbytes].view(np.uint64).reshape(shape), tweaks, out=result)


def _bytes_view(data: Buffer) -> memoryview:
    view = memoryview(data)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


@register(CryptoMode.AES_256_XTS)
def aes_256_xts(key: BlkCryptoKey) -> XtsCipher:
    return XtsCipher(algorithms.AES, key.raw, key.data_unit_size, native_xts=True)


@register(CryptoMode.SM4_XTS)
def sm4_xts(key: BlkCryptoKey) -> XtsCipher:
    return XtsCipher(algorithms.SM4, key.raw, key.data_unit_size)


# Back-compat name of the first (per-unit) implementation.
AesXts = aes_256_xts
