"""AES-256-XTS and SM4-XTS (IEEE 1619), one tweak per data unit: IV = DUN, little-endian.

Per data unit, XTS is ``C_j = E_K1(P_j ^ T_j) ^ T_j`` with ``T_j = E_K2(IV) · α^j``. Creating a
``cryptography`` XTS cipher per data unit costs several µs, more than the AES work on 4 KiB, so
the bulk path handles any number of data units with a fixed number of calls:

1. one ECB call with K2 over all the IVs (the first tweaks),
2. the α^j multiples of every unit at once, vectorised (:mod:`fuseblk.ciphers.gf128`),
3. XOR, one block-cipher pass over the whole buffer, XOR.

For AES the pass in step 3 is OpenSSL's own XTS over the whole buffer (about twice as fast as
its ECB here), with an IV chosen so that its tweak sequence is simply α^k; the vectorised
tweaks are then the difference between ours and that sequence. SM4 (OpenSSL has no IEEE
SM4-XTS) and AES keys with equal halves (OpenSSL refuses them; the kernel accepts them outside
FIPS mode) use ECB contexts kept for the life of the key instead.

Requests of up to ``PER_UNIT_MAX_UNITS`` data units (128 KiB of 4 KiB units) go through
``cryptography``'s XTS one unit at a time, which is faster there (crossover measured with
tools/bench_crypto.py). Data units are whole multiples of 16 bytes: no ciphertext stealing is
ever needed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import (
    BlockCipherAlgorithm,
    Cipher,
    CipherContext,
    algorithms,
    modes,
)

from fuseblk.ciphers import Buffer, byte_view, register
from fuseblk.ciphers.gf128 import xts_tweaks
from fuseblk.ciphers.ivs import dun_ivs
from fuseblk.ciphers.workspace import CHUNK_BYTES, scratch
from fuseblk.errors import einval
from fuseblk.key import BlkCryptoKey
from fuseblk.modes import CryptoMode

BLOCK = 16
IV_SIZE = 16
_IV_MASK = (1 << (8 * IV_SIZE)) - 1  # the IV is the DUN's low 16 bytes (fuseblk.dun.dun_iv)
# Up to this many data units, one cryptography XTS call per unit beats the bulk path, whose
# NumPy calls cost the same whatever the size (tools/bench_crypto.py shows the crossover).
PER_UNIT_MAX_UNITS = 32


class XtsCipher:
    """XTS over a 128-bit block cipher, for data units of ``data_unit_size`` bytes."""

    def __init__(
        self,
        algorithm: Callable[[bytes], BlockCipherAlgorithm],
        raw: bytes,
        data_unit_size: int,
        native_xts: bool = False,
        per_unit_max_units: int = PER_UNIT_MAX_UNITS,
    ) -> None:
        if data_unit_size <= 0 or data_unit_size % BLOCK:
            raise einval(f"XTS data units must be multiples of {BLOCK} bytes, got {data_unit_size}")
        half = len(raw) // 2
        self.data_unit_size = data_unit_size
        self._blocks = data_unit_size // BLOCK
        self._per_unit_max = per_unit_max_units
        k1, k2 = raw[:half], raw[half:]
        self._enc1: CipherContext = Cipher(algorithm(k1), modes.ECB()).encryptor()
        self._dec1: CipherContext = Cipher(algorithm(k1), modes.ECB()).decryptor()
        self._enc2: CipherContext = Cipher(algorithm(k2), modes.ECB()).encryptor()
        # OpenSSL refuses XTS keys whose halves are equal; the kernel allows them outside FIPS
        # mode, and the bulk path handles them, so only distinct halves may use OpenSSL's XTS.
        self._xts_alg = algorithm(raw) if native_xts and k1 != k2 else None
        self._unit_cipher: Cipher[modes.XTS] | None = None
        if self._xts_alg is not None:
            self._unit_cipher = Cipher(self._xts_alg, modes.XTS(bytes(IV_SIZE)))
        # One data unit (a 4 KiB request through a 4 KiB-unit key) takes one context, made
        # here without the frames of the general path.
        self._single = self._unit_cipher if per_unit_max_units >= 1 else None
        # the IV whose first XTS tweak is 1: E_K2(IV) = 1, so the tweak of block k is α^k
        self._long_iv: bytes | None = None
        if self._xts_alg is not None:
            k2_dec = Cipher(algorithm(k2), modes.ECB()).decryptor()
            self._long_iv = k2_dec.update((1).to_bytes(BLOCK, "little")) + k2_dec.finalize()

    def __repr__(self) -> str:
        return f"XtsCipher(dus={self.data_unit_size})"

    def encrypt(self, data: Buffer, dun: int) -> bytearray:
        src = byte_view(data)
        single = self._single
        if single is not None and len(src) == self.data_unit_size:
            single.mode = modes.XTS((dun & _IV_MASK).to_bytes(IV_SIZE, "little"))
            return bytearray(single.encryptor().update(src))
        out = bytearray(len(src))
        self._crypt(src, memoryview(out), dun, encrypt=True)
        return out

    def decrypt(self, data: Buffer, dun: int) -> bytearray:
        src = byte_view(data)
        out = bytearray(len(src))
        self._crypt(src, memoryview(out), dun, encrypt=False)
        return out

    def decrypt_into(self, buf: memoryview, dun: int) -> None:
        view = byte_view(buf)
        single = self._single
        if single is not None and len(view) == self.data_unit_size:
            single.mode = modes.XTS((dun & _IV_MASK).to_bytes(IV_SIZE, "little"))
            view[:] = single.decryptor().update(view)
            return
        self._crypt(view, view, dun, encrypt=False)

    # -- internals ---------------------------------------------------------------------------

    def _crypt(self, src: memoryview, dst: memoryview, dun: int, encrypt: bool) -> None:
        dus = self.data_unit_size
        if len(src) % dus:
            raise einval(f"{len(src)} bytes is not a whole number of {dus}-byte data units")
        units = len(src) // dus
        if self._xts_alg is not None and units <= self._per_unit_max:
            self._per_unit(src, dst, dun, encrypt)
            return
        step = max(1, CHUNK_BYTES // dus)
        for first in range(0, units, step):
            n = min(step, units - first)
            lo, hi = first * dus, (first + n) * dus
            self._bulk(src[lo:hi], dst[lo:hi], dun + first, n, encrypt)

    def _per_unit(self, src: memoryview, dst: memoryview, dun: int, encrypt: bool) -> None:
        # One Cipher for the life of the key, given each unit's tweak as its mode: building a
        # Cipher re-validates the algorithm and the key (ABC instance checks), which costs more
        # than the AES work on a 4 KiB unit. Only the trio thread en/decrypts, so nothing races
        # on ``mode`` between setting it and making the context.
        cipher = self._unit_cipher
        assert cipher is not None
        dus = self.data_unit_size
        for i in range(0, len(src), dus):
            cipher.mode = modes.XTS(((dun + i // dus) & _IV_MASK).to_bytes(IV_SIZE, "little"))
            ctx = cipher.encryptor() if encrypt else cipher.decryptor()
            dst[i : i + dus] = ctx.update(src[i : i + dus])

    def _bulk(self, src: memoryview, dst: memoryview, dun: int, n: int, encrypt: bool) -> None:
        nbytes = len(src)
        ivs = dun_ivs(dun, n, IV_SIZE)
        first = scratch("xts.first", n * BLOCK + BLOCK)
        self._enc2.update_into(ivs.view(np.uint8).reshape(-1).data, first.data)
        first_tweaks = first[: n * BLOCK].view(np.uint64).reshape(n, 2)
        if self._long_iv is not None:
            # One OpenSSL XTS call over the whole buffer, whose own tweaks are α^k (its IV was
            # chosen so that E_K2(IV) = 1), corrected to ours by XORing D = T ^ α^k on both
            # sides: D for unit u, block j is (T_0(u) ^ α^(u·blocks)) · α^j.
            first_tweaks ^= _unit_start_powers(self._blocks)[:n]
        tweaks = xts_tweaks(first_tweaks, self._blocks)
        shape = (n, self._blocks, 2)
        plain = np.frombuffer(src, dtype=np.uint64).reshape(shape)
        pre = scratch("xts.pre", nbytes)
        np.bitwise_xor(plain, tweaks, out=pre.view(np.uint64).reshape(shape))
        post = scratch("xts.post", nbytes + BLOCK)
        if self._long_iv is not None:
            assert self._xts_alg is not None
            cipher = Cipher(self._xts_alg, modes.XTS(self._long_iv))
            ctx = cipher.encryptor() if encrypt else cipher.decryptor()
        else:
            ctx = self._enc1 if encrypt else self._dec1
        ctx.update_into(pre.data, post.data)
        result = np.frombuffer(dst, dtype=np.uint64).reshape(shape)
        np.bitwise_xor(post[:nbytes].view(np.uint64).reshape(shape), tweaks, out=result)


_POWERS: dict[int, npt.NDArray[np.uint64]] = {}


def _unit_start_powers(blocks: int) -> npt.NDArray[np.uint64]:
    """α^(u·blocks) for every unit u of a bulk chunk, as (units, 2) lanes; key-independent."""
    powers = _POWERS.get(blocks)
    if powers is None:
        units = max(1, CHUNK_BYTES // (blocks * BLOCK))
        one = np.array([[1, 0]], dtype=np.uint64)
        powers = xts_tweaks(one, units * blocks)[0, ::blocks].copy()  # off the scratch space
        _POWERS[blocks] = powers
    return powers


@register(CryptoMode.AES_256_XTS)
def aes_256_xts(key: BlkCryptoKey) -> XtsCipher:
    return XtsCipher(algorithms.AES, key.raw, key.data_unit_size, native_xts=True)


@register(CryptoMode.SM4_XTS)
def sm4_xts(key: BlkCryptoKey) -> XtsCipher:
    return XtsCipher(algorithms.SM4, key.raw, key.data_unit_size)
