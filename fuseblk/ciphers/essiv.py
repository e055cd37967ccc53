"""AES-128-CBC-ESSIV: CBC per data unit, IV = AES-256_{SHA-256(key)}(DUN as 16 LE bytes).

The kernel's ``blk-crypto`` ESSIV (as fscrypt's v1 policies and dm-crypt's ``essiv:sha256``).
Both halves avoid one ``Cipher`` object per data unit:

- decryption is parallel (``P_i = D(C_i) ^ C_{i-1}``, ``C_{-1}`` = the unit's IV): one ECB
  decryption over the whole buffer, then one vectorised XOR with the ciphertext shifted by a
  block and the IVs in the first-block slots;
- encryption is sequential inside a data unit, so it runs through one long-lived CBC context:
  feeding ``P_0 ^ IV ^ C_prev`` as a unit's first block (``C_prev`` being the context's chaining
  value, the last ciphertext block it produced) makes the context compute exactly
  ``E(P_0 ^ IV)``, after which CBC chaining inside the unit is the context's own.

All IVs of a request come from one ECB call with the ESSIV key.
"""

from __future__ import annotations

import hashlib
import threading

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from fuseblk.ciphers import Buffer, byte_view, register
from fuseblk.ciphers.ivs import dun_ivs
from fuseblk.ciphers.workspace import scratch
from fuseblk.errors import einval
from fuseblk.key import BlkCryptoKey
from fuseblk.modes import CryptoMode

BLOCK = 16
IV_SIZE = 16
# Encrypt block-by-block across all units when there are this many times more units than
# blocks per unit; otherwise unit-by-unit through the chained CBC context (measured crossover).
ACROSS_UNITS_RATIO = 4


class CbcEssiv:
    def __init__(self, raw: bytes, data_unit_size: int) -> None:
        if data_unit_size <= 0 or data_unit_size % BLOCK:
            raise einval(f"CBC data units must be multiples of {BLOCK} bytes, got {data_unit_size}")
        self.data_unit_size = data_unit_size
        self._blocks = data_unit_size // BLOCK
        self._enc = Cipher(algorithms.AES(raw), modes.ECB()).encryptor()
        self._dec = Cipher(algorithms.AES(raw), modes.ECB()).decryptor()
        salt = hashlib.sha256(raw).digest()
        self._essiv = Cipher(algorithms.AES(salt), modes.ECB()).encryptor()
        self._cbc = Cipher(algorithms.AES(raw), modes.CBC(bytes(BLOCK))).encryptor()
        self._chain = 0  # the CBC context's current chaining value, as a little-endian int
        self._lock = threading.Lock()  # the CBC context is stateful

    def __repr__(self) -> str:
        return f"CbcEssiv(dus={self.data_unit_size})"

    def ivs(self, dun: int, units: int) -> bytes:
        """The ESSIV IVs of ``units`` consecutive data units from ``dun``."""
        plain = dun_ivs(dun, units, IV_SIZE).view(np.uint8).reshape(-1)
        out = bytearray(units * BLOCK + BLOCK)
        n = self._essiv.update_into(plain.data, out)
        return bytes(out[:n])

    def encrypt(self, data: Buffer, dun: int) -> bytearray:
        src = byte_view(data)
        units = self._units(len(src))
        if units == 0:
            return bytearray()
        ivs = self.ivs(dun, units)
        if self._blocks * ACROSS_UNITS_RATIO <= units:
            return self._encrypt_across_units(src, units, ivs)
        return self._encrypt_chained(src, units, ivs)

    def _encrypt_chained(self, src: memoryview, units: int, ivs: bytes) -> bytearray:
        dus = self.data_unit_size
        out = bytearray(len(src) + BLOCK)
        # first block of every unit ^ its IV, in one go; the chaining value is folded in below
        firsts = np.frombuffer(src, dtype=np.uint8).reshape(units, dus)[:, :BLOCK]
        heads = (firsts ^ np.frombuffer(ivs, dtype=np.uint8).reshape(units, BLOCK)).tobytes()
        dst = memoryview(out)
        with self._lock:
            chain = self._chain
            for u in range(units):
                off = u * dus
                head = int.from_bytes(heads[u * BLOCK : (u + 1) * BLOCK], "little") ^ chain
                self._cbc.update_into(head.to_bytes(BLOCK, "little"), dst[off:])
                if dus > BLOCK:
                    self._cbc.update_into(src[off + BLOCK : off + dus], dst[off + BLOCK :])
                chain = int.from_bytes(dst[off + dus - BLOCK : off + dus], "little")
            self._chain = chain
        dst.release()
        del out[len(src) :]  # update_into wanted a block of slack at the end
        return out

    def _encrypt_across_units(self, src: memoryview, units: int, ivs: bytes) -> bytearray:
        """Block j of every unit in one ECB call: ``blocks`` calls instead of ``units`` loops."""
        out = bytearray(len(src))
        shape = (units, self._blocks, 2)
        plain = np.frombuffer(src, dtype=np.uint64).reshape(shape)
        cipher = np.frombuffer(out, dtype=np.uint64).reshape(shape)
        x = scratch("essiv.x", units * BLOCK).view(np.uint64).reshape(units, 2)
        y = scratch("essiv.y", units * BLOCK + BLOCK)
        prev = np.frombuffer(ivs, dtype=np.uint64).reshape(units, 2)
        for j in range(self._blocks):
            np.bitwise_xor(plain[:, j], prev, out=x)
            self._enc.update_into(x.view(np.uint8).reshape(-1).data, y.data)
            cipher[:, j] = y[: units * BLOCK].view(np.uint64).reshape(units, 2)
            prev = cipher[:, j]
        return out

    def decrypt(self, data: Buffer, dun: int) -> bytearray:
        src = byte_view(data)
        out = bytearray(len(src))
        self._decrypt(src, memoryview(out), dun)
        return out

    def decrypt_into(self, buf: memoryview, dun: int) -> None:
        view = byte_view(buf)
        self._decrypt(view, view, dun)

    def _units(self, nbytes: int) -> int:
        if nbytes % self.data_unit_size:
            raise einval(
                f"{nbytes} bytes is not a whole number of {self.data_unit_size}-byte data units"
            )
        return nbytes // self.data_unit_size

    def _decrypt(self, src: memoryview, dst: memoryview, dun: int) -> None:
        units = self._units(len(src))
        if units == 0:
            return
        ivs = self.ivs(dun, units)
        nbytes = len(src)
        dec = scratch("essiv.dec", nbytes + BLOCK)
        self._dec.update_into(src, dec.data)
        shape = (units, self._blocks, 2)
        d = dec[:nbytes].view(np.uint64).reshape(shape)
        c = np.frombuffer(src, dtype=np.uint64).reshape(shape)
        p = np.frombuffer(dst, dtype=np.uint64).reshape(shape)
        # in place, dst is src: numpy buffers overlapping operands, and block 0 is done last
        np.bitwise_xor(d[:, 1:], c[:, :-1], out=p[:, 1:])
        np.bitwise_xor(d[:, 0], np.frombuffer(ivs, dtype=np.uint64).reshape(units, 2), out=p[:, 0])


@register(CryptoMode.AES_128_CBC_ESSIV)
def aes_128_cbc_essiv(key: BlkCryptoKey) -> CbcEssiv:
    return CbcEssiv(key.raw, key.data_unit_size)
