"""dm-inlinecrypt: dm-crypt's table, blk-crypto's encryption (drivers/md/dm-inlinecrypt.c).

Table line: ``inlinecrypt <cipher> <hexkey> <iv_offset> <device> <offset> [<#opt_params>
<opt_params>]`` with ``aes-xts-plain64`` only (AES-256-XTS) and options ``keytype:raw`` (the
default) or ``keytype:hw-wrapped``, ``allow_discards``, ``sector_size:N`` (512..4096, a power of
two) and ``iv_large_sectors``, which must be given with any ``sector_size`` but 512: like
default-key, the target implements only large-sector IVs. A raw key is 64 bytes; a
hardware-wrapped key is an ephemerally-wrapped blob of 32 to 128 bytes.

Like default-key it encrypts nothing itself: every data bio gets ``(key, DUN)`` with
``DUN = (iv_offset + sector_in_target) >> log2(sector_size / 512)`` and goes to the device below,
which encrypts inline or through the software fallback (raw keys only). Unlike default-key it
does not pass crypto through: its device's profile offers nothing above it, so a bio that
reaches it with a context was not prepared by the block layer and is killed (EIO), as upstream's
``WARN_ON_ONCE(bio_has_crypt_ctx(bio))``. The key's DUN width is the fewest bytes that hold the
largest DUN (upstream's rule): a target whose largest DUN is 0 asks for a 0-byte DUN, which
``blk_crypto_init_key`` refuses, so that table does not load. A key no path below can use (a
wrapped key where nothing supports wrapped keys natively) refuses the table with EOPNOTSUPP
("Error starting to use blk-crypto").

Differences from upstream, on purpose:

- An ``iv_offset`` that is not a multiple of the sector size is refused (upstream sets the error
  and then carries on, and kills every bio later).
- Keyring keys (``:64:logon:desc``) are refused: there is no kernel keyring here.
- ``dmsetup table`` shows the key as ``-`` unless ``--showkeys`` (upstream prints it and leaves
  redacting to userspace), and names the key type as an option (``keytype:raw``), so the line
  it prints loads again.
"""

from __future__ import annotations

import errno

from fuseblk import SECTOR_SHIFT
from fuseblk.bio import Bio, BioOp
from fuseblk.crypt_context import BioCryptContext
from fuseblk.dm.targets.base import TargetArgError
from fuseblk.dm.targets.cipher_spec import CipherSpec
from fuseblk.dm.targets.key_target import KeyTarget
from fuseblk.errors import FuseblkError
from fuseblk.key import KeyType
from fuseblk.modes import CryptoMode

_CIPHER = "aes-xts-plain64"
SUPPORTED = "aes-xts-plain64 with a 64-byte raw key or a 32..128-byte hardware-wrapped key"
_KEY_TYPES = {"raw": KeyType.RAW, "hw-wrapped": KeyType.HW_WRAPPED}
_KEY_TYPE_NAMES = {v: k for k, v in _KEY_TYPES.items()}


def _key_type_option(opt: str) -> KeyType | None:
    """``keytype:raw`` or ``keytype:hw-wrapped``; any other ``keytype:`` is "Invalid block key type"."""
    prefix, colon, value = opt.partition(":")
    if prefix != "keytype" or not colon:
        return None
    key_type = _KEY_TYPES.get(value)
    if key_type is None:
        raise TargetArgError(f"option {opt!r}", "keytype:raw or keytype:hw-wrapped")
    return key_type


def parse_inlinecrypt_cipher(text: str) -> CipherSpec:
    """``lookup_cipher``: the one exact name."""
    if text != _CIPHER:
        raise TargetArgError("cipher", SUPPORTED, text)
    return CipherSpec(text, CryptoMode.AES_256_XTS, 64)


class InlineCryptTarget(KeyTarget):
    name = "inlinecrypt"
    version = (1, 0, 0)
    passes_crypto = False  # it consumes the capability itself
    supported = SUPPORTED
    options_help = (
        "keytype:raw, keytype:hw-wrapped, allow_discards, sector_size:N or iv_large_sectors"
    )

    @staticmethod
    def parse_cipher(text: str) -> CipherSpec:
        return parse_inlinecrypt_cipher(text)

    @staticmethod
    def key_type_option(opt: str) -> KeyType | None:
        return _key_type_option(opt)

    def dun_bytes_for(self, needed: int, length: int) -> int:
        if needed == 0:
            raise TargetArgError(
                "length",
                "more than one data unit when iv_offset is 0 (the largest DUN, 0, would need a "
                "0-byte DUN: Error initializing blk-crypto key)",
                str(length >> SECTOR_SHIFT),
            )
        return needed

    def table_params(self) -> list[str]:
        return [f"keytype:{_KEY_TYPE_NAMES[self.key.key_type]}", *self.opts.table_params()]

    async def map(self, bio: Bio) -> None:
        op, offset, length, buf, ctx = bio
        if ctx is not None:
            raise FuseblkError(
                errno.EIO,
                "inlinecrypt: a bio already has an encryption context (the target passes none)",
            )
        if op is BioOp.READ or op is BioOp.WRITE:
            if offset % self.sector_size:
                # inlinecrypt_map's DM_MAPIO_KILL for a bio that does not start on a data unit
                raise FuseblkError(
                    errno.EIO,
                    f"inlinecrypt: I/O at {offset} not aligned to sector_size {self.sector_size}",
                )
            ctx = BioCryptContext(self.key, self.dun_of(offset))
            await self.submit_bio(self.dev, Bio(op, self.offset + offset, length, buf, ctx))
            return
        if op is BioOp.DISCARD and not self.opts.allow_discards:
            raise FuseblkError(
                errno.EOPNOTSUPP, "inlinecrypt: discards need the allow_discards option"
            )
        await self.submit_bio(
            self.dev, bio if op is BioOp.FLUSH else bio.remap(self.offset + offset)
        )
