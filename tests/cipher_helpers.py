"""Independent oracles for the per-data-unit ciphers: one fresh OpenSSL cipher per data unit.

Deliberately the obvious, slow construction (no shared contexts, no vectorisation), so that it
shares no code or trick with :mod:`fuseblk.ciphers` and a test comparing the two can fail.
"""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from fuseblk.dun import dun_iv


def openssl_xts(raw: bytes, data: bytes, dun: int, dus: int, encrypt: bool = True) -> bytes:
    """AES-256-XTS, one OpenSSL XTS call per data unit, IV = the unit's DUN (16 LE bytes)."""
    out = b""
    for i in range(0, len(data), dus):
        c = Cipher(algorithms.AES(raw), modes.XTS(dun_iv(dun + i // dus, 16)))
        ctx = c.encryptor() if encrypt else c.decryptor()
        out += ctx.update(data[i : i + dus])
    return out


def openssl_cbc_essiv(raw: bytes, data: bytes, dun: int, dus: int) -> bytes:
    """AES-128-CBC-ESSIV encryption: one fresh CBC per data unit, IV = AES-256_{SHA-256(key)}(DUN)."""
    essiv = Cipher(algorithms.AES(hashlib.sha256(raw).digest()), modes.ECB()).encryptor()
    out = b""
    for i in range(0, len(data), dus):
        iv = essiv.update(dun_iv(dun + i // dus, 16))
        out += Cipher(algorithms.AES(raw), modes.CBC(iv)).encryptor().update(data[i : i + dus])
    return out
