"""Android's dm-default-key: give every bio without an encryption context one with this key.

Table line: ``default-key <cipher> <hexkey> <iv_offset> <device> <offset> [<#opt_params> <opt_params>]``
with ``aes-xts-plain64`` (AES-256-XTS, 64-byte key) or ``xchacha12,aes-adiantum-plain64``
(Adiantum, 32-byte key); options ``allow_discards``, ``sector_size:N`` (512..4096),
``iv_large_sectors``, which Android requires whenever ``sector_size`` is not 512 (it implements
only the large-sector IV), and ``wrappedkey_v0``: the hex key is then a hardware-wrapped key in
its ephemerally-wrapped form (from the mode's security strength, 32 bytes, to 128 bytes; which
cipher the hardware accepts with it is the hardware's business: all known hardware takes
AES-256-XTS only). A key that neither the device below nor the fallback can use (a wrapped
key where nothing below supports wrapped keys natively) refuses the table with EOPNOTSUPP, as
Android's ``blk_crypto_start_using_key`` call does.

Unlike dm-crypt it encrypts nothing itself: it attaches ``(key, DUN)`` and lets the device below
do the work (inline, or the software fallback when that device cannot), with
``DUN = (iv_offset + sector_in_target) >> log2(sector_size / 512)``. A bio that already carries a
context (an encrypted file's contents, from a layer above) passes through untouched, as
Android's ``bio_should_skip_dm_default_key`` lets fscrypt's contents through.

The key's ``dun_bytes`` is Android's: the fewest bytes that hold the target's largest DUN,
``(iv_offset + length_in_sectors - 1) >> log2(sector_size / 512)``. That is what lets a key
go inline on hardware with narrow DUNs (eMMC's CQHCI takes 32 bits: the ``emmc`` profile) rather
than always falling back. ``fuseblk dm status`` shows the width, which ``dm evict-key`` needs.

Differences from Android, on purpose:

- A target whose largest DUN is 0 (one data unit at ``iv_offset`` 0) gets a 1-byte DUN; Android
  asks for a 0-byte one, which ``blk_crypto_init_key`` refuses, so the table fails to load.
- An ``iv_offset`` that is not a multiple of the sector size is refused when the table loads;
  Android accepts it and then kills every bio.

``dmsetup table`` shows the key as ``-`` (as Android does) unless ``--showkeys``.
"""

from __future__ import annotations

import errno

from fuseblk.bio import Bio, BioOp
from fuseblk.crypt_context import BioCryptContext
from fuseblk.dm.targets.cipher_spec import (
    DEFAULT_KEY_SUPPORTED,
    CipherSpec,
    parse_default_key_cipher,
)
from fuseblk.dm.targets.key_target import KeyTarget
from fuseblk.errors import FuseblkError
from fuseblk.key import KeyType


class DefaultKeyTarget(KeyTarget):
    name = "default-key"
    version = (2, 1, 0)
    passes_crypto = True
    supported = DEFAULT_KEY_SUPPORTED
    options_help = "allow_discards, sector_size:N, iv_large_sectors or wrappedkey_v0"

    @staticmethod
    def parse_cipher(text: str) -> CipherSpec:
        return parse_default_key_cipher(text)

    @staticmethod
    def key_type_option(opt: str) -> KeyType | None:
        """Android's one key-type option."""
        return KeyType.HW_WRAPPED if opt == "wrappedkey_v0" else None

    def dun_bytes_for(self, needed: int, length: int) -> int:
        return max(1, needed)  # see the module: one data unit at DUN 0 gets a 1-byte DUN

    def table_params(self) -> list[str]:
        wrapped = ["wrappedkey_v0"] if self.key.key_type == KeyType.HW_WRAPPED else []
        return [*self.opts.table_params(), *wrapped]

    async def map(self, bio: Bio) -> None:
        op, offset, length, buf, ctx = bio
        if ctx is None and (op is BioOp.READ or op is BioOp.WRITE):
            # the hot path: every data bio from above gets our key
            if offset % self.sector_size:
                # default_key_map's DM_MAPIO_KILL for a bio that does not start on a data unit
                raise FuseblkError(
                    errno.EIO,
                    f"default-key: I/O at {offset} not aligned to sector_size {self.sector_size}",
                )
            ctx = BioCryptContext(self.key, self.dun_of(offset))
            await self.submit_bio(self.dev, Bio(op, self.offset + offset, length, buf, ctx))
            return
        if op is BioOp.FLUSH:
            await self.submit_bio(self.dev, bio)
            return
        lower = bio.remap(self.offset + offset)
        if op is BioOp.DISCARD:
            if not self.allow_discards:
                raise FuseblkError(
                    errno.EOPNOTSUPP, "default-key: discards need the allow_discards option"
                )
            await self.submit_bio(self.dev, lower)
            return
        # a data bio with a context from above: not ours to replace
        await self.submit_bio(self.dev, lower)
        self._count("default_key_passthrough_bios")
