"""AES-256-XTS and SM4-XTS, one tweak per data unit (IV = DUN, little-endian).

Reference implementation: one ``cryptography`` XTS call per data unit. To be replaced by the
bulk path (see tools/bench_crypto.py).
"""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from fuseblk.ciphers import Buffer, register
from fuseblk.dun import dun_iv
from fuseblk.key import BlkCryptoKey
from fuseblk.modes import CryptoMode


class AesXts:
    def __init__(self, key: BlkCryptoKey) -> None:
        self.data_unit_size = key.data_unit_size
        self._alg = algorithms.AES(key.raw)

    def _run(self, data: Buffer, dun: int, encrypt: bool) -> bytearray:
        dus = self.data_unit_size
        mv = memoryview(data).cast("B")
        out = bytearray(len(mv))
        for i in range(0, len(mv), dus):
            c = Cipher(self._alg, modes.XTS(dun_iv(dun + i // dus, 16)))
            ctx = c.encryptor() if encrypt else c.decryptor()
            out[i : i + dus] = ctx.update(mv[i : i + dus])
        return out

    def encrypt(self, data: Buffer, dun: int) -> bytearray:
        return self._run(data, dun, True)

    def decrypt(self, data: Buffer, dun: int) -> bytearray:
        return self._run(data, dun, False)

    def decrypt_into(self, buf: memoryview, dun: int) -> None:
        buf[:] = self._run(buf, dun, False)


register(CryptoMode.AES_256_XTS)(AesXts)
