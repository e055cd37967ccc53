"""Hardware-wrapped keys as the emulated hardware keeps them: two wrapping secrets and blobs.

Real inline-encryption hardware with wrapped keys (Qualcomm's ICE with its hardware key manager)
never lets a key out in the clear. A key exists outside the hardware only as a *blob*:

* a **long-term** blob, made once by IMPORT (from a raw key) or GENERATE (from a random key),
  wrapped with a secret that lives as long as the hardware; userspace stores it;
* an **ephemeral** blob, made from a long-term blob by PREPARE at each unlock, wrapped with a
  secret the hardware draws at every boot (and, here, at every reset): only these are used for
  I/O, keyslots, dm tables, and DERIVE_SW_SECRET.

This module is that key manager for one engine. The long-term secret is the image's
(:mod:`fuseblk.hw.image_format` keeps it in the header, never shown); the ephemeral secret is
drawn when the engine is made (each attach, so each daemon start) and again by
:meth:`KeyWrapping.new_ephemeral_secret` (a controller reset), and lives in memory only.

A blob is AES-256-GCM (``cryptography``) of the 32-byte hardware key: ``nonce (12) ||
ciphertext (32) || tag (16)``, 60 bytes, within BLK_CRYPTO_MAX_HW_WRAPPED_KEY_SIZE (128). The
associated data names the kind of blob and the image's uuid, so a long-term blob given where an
ephemeral one is expected (or the reverse), a blob of another image, a tampered one, or an
ephemeral one made before the last reset all fail authentication alike: the hardware answers
EBADMSG, as the kernel's drivers do for a key they cannot unwrap. Error messages never quote a
blob.

What the hardware does with the 32-byte key is :mod:`fuseblk.ciphers.hw_kdf`: the inline key a
keyslot is programmed with, and the software secret. An imported raw key of exactly 32 bytes is
the hardware key itself, which is what xfstests and Android's VTS assume when they recompute
ciphertext; a raw key of another size (the ioctl takes 16..64 bytes) is first condensed to 32
bytes with SHA-256 under a fixed label, a choice of this emulation.
"""

from __future__ import annotations

import errno
import hashlib
import os
import uuid as uuid_mod

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fuseblk.ciphers.hw_kdf import HW_KEY_SIZE, inline_key, sw_secret
from fuseblk.errors import FuseblkError

SECRET_SIZE = 32  # AES-256-GCM keys: the long-term and the ephemeral wrapping secret
NONCE_SIZE = 12
TAG_SIZE = 16
BLOB_SIZE = NONCE_SIZE + HW_KEY_SIZE + TAG_SIZE
_AAD = b"fuseblk hw-wrapped key v1\x00"
LONG_TERM = b"long-term"
EPHEMERAL = b"ephemeral"
_IMPORT_LABEL = b"fuseblk hw-wrapped import v1\x00"


def hardware_key_of(raw: bytes) -> bytes:
    """The 32-byte hardware key an imported raw key becomes (see the module docstring)."""
    if len(raw) == HW_KEY_SIZE:
        return bytes(raw)
    return hashlib.sha256(_IMPORT_LABEL + raw).digest()


class KeyWrapping:
    """One engine's key manager: wraps, rewraps and unwraps blobs; derives what the KDF gives."""

    def __init__(self, long_term_secret: bytes, image_uuid: uuid_mod.UUID, name: str) -> None:
        if len(long_term_secret) != SECRET_SIZE:
            raise ValueError(f"the long-term wrapping secret is {SECRET_SIZE} bytes")
        self._name = name
        self._long_term = AESGCM(long_term_secret)
        self._uuid = image_uuid.bytes
        self._ephemeral = AESGCM(os.urandom(SECRET_SIZE))

    def __repr__(self) -> str:
        return f"KeyWrapping({self._name!r})"  # the secrets stay inside

    def new_ephemeral_secret(self) -> None:
        """What a reset or a boot does: every ephemeral blob made so far stops unwrapping."""
        self._ephemeral = AESGCM(os.urandom(SECRET_SIZE))

    # -- the four operations (blk_crypto_ll_ops) --------------------------------------------------

    def import_key(self, raw: bytes) -> bytes:
        """``import_key``: a long-term blob of ``raw`` (the caller checked its size)."""
        return self._wrap(LONG_TERM, hardware_key_of(raw))

    def generate_key(self) -> bytes:
        """``generate_key``: a long-term blob of a key drawn here, never seen by anyone."""
        return self._wrap(LONG_TERM, os.urandom(HW_KEY_SIZE))

    def prepare_key(self, lt_blob: bytes) -> bytes:
        """``prepare_key``: the ephemeral blob of a long-term one; EBADMSG if it does not unwrap."""
        return self._wrap(EPHEMERAL, self._unwrap(LONG_TERM, lt_blob))

    def derive_sw_secret(self, eph_blob: bytes) -> bytes:
        """``derive_sw_secret``: the 32-byte software secret of an ephemeral blob; EBADMSG if it
        does not unwrap."""
        return sw_secret(self._unwrap(EPHEMERAL, eph_blob))

    def inline_key(self, eph_blob: bytes) -> bytes:
        """The 64-byte AES-256-XTS key a keyslot is programmed with for an ephemeral blob;
        EBADMSG if it does not unwrap. Stays in the hardware: only a cipher gets it."""
        return inline_key(self._unwrap(EPHEMERAL, eph_blob))

    # -- blobs -------------------------------------------------------------------------------------

    def _aead(self, kind: bytes) -> AESGCM:
        return self._long_term if kind == LONG_TERM else self._ephemeral

    def _aad(self, kind: bytes) -> bytes:
        return _AAD + kind + b"\x00" + self._uuid

    def _wrap(self, kind: bytes, hw_key: bytes) -> bytes:
        nonce = os.urandom(NONCE_SIZE)
        return nonce + self._aead(kind).encrypt(nonce, hw_key, self._aad(kind))

    def _unwrap(self, kind: bytes, blob: bytes) -> bytes:
        if len(blob) == BLOB_SIZE:
            nonce, sealed = blob[:NONCE_SIZE], blob[NONCE_SIZE:]
            try:
                return self._aead(kind).decrypt(nonce, sealed, self._aad(kind))
            except InvalidTag:
                pass
        other = "long-term" if kind == EPHEMERAL else "ephemeral"
        stale = ", or prepared before its last reset or restart" if kind == EPHEMERAL else ""
        raise FuseblkError(
            errno.EBADMSG,
            f"{self._name}: the hardware does not accept this {kind.decode()} key blob "
            f"({len(blob)} bytes): tampered, of another image, {'an' if other == 'ephemeral' else 'a'} {other} blob{stale}",
        )
