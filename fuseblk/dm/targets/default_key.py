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
import logging
from typing import TYPE_CHECKING

from fuseblk import SECTOR_SHIFT
from fuseblk.bio import Bio, BioOp
from fuseblk.crypt_context import BioCryptContext
from fuseblk.dm.targets.base import Target, TargetEnv
from fuseblk.dm.targets.cipher_spec import (
    DEFAULT_KEY_SUPPORTED,
    check_iv_range,
    check_whole_units,
    describe_key,
    format_optional,
    largest_dun,
    parse_default_key_cipher,
    parse_inline_crypt_options,
    parse_key,
    positional,
    start_using_key,
)
from fuseblk.dm.targets.ctr_args import get_device_at, parse_sector
from fuseblk.dun import dun_bytes_needed
from fuseblk.errors import FuseblkError
from fuseblk.key import BlkCryptoKey, KeyType

if TYPE_CHECKING:
    from fuseblk.blkcrypto.block_layer import BlockLayer
    from fuseblk.device import BlockDevice

log = logging.getLogger(__name__)

_POSITIONAL = ("cipher", "key", "iv_offset", "device", "offset")
_MAX_OPT_PARAMS = 4  # as default_key_ctr_optional


def _key_type_option(opt: str) -> KeyType | None:
    """Android's one key-type option."""
    return KeyType.HW_WRAPPED if opt == "wrappedkey_v0" else None


class DefaultKeyTarget(Target):
    name = "default-key"
    version = (2, 1, 0)
    passes_crypto = True

    def __init__(self, env: TargetEnv, begin: int, length: int, args: list[str]) -> None:
        super().__init__(env, begin, length, args)
        self._block_layer: BlockLayer = env.block_layer  # evicts the key when the table goes
        cipher_text, key_text, iv_offset_text, self.dev_ref, offset_text = positional(
            args, _POSITIONAL
        )
        self.spec = parse_default_key_cipher(cipher_text)
        self.iv_offset = parse_sector(iv_offset_text, "iv_offset")
        opts = parse_inline_crypt_options(
            args[len(_POSITIONAL) :],
            _MAX_OPT_PARAMS,
            _key_type_option,
            "allow_discards, sector_size:N, iv_large_sectors or wrappedkey_v0",
            self.name,
        )
        self.opts = opts
        self.allow_discards = opts.allow_discards
        self.sector_size = opts.sector_size
        raw = parse_key(key_text, self.spec, opts.key_type, DEFAULT_KEY_SUPPORTED)
        check_iv_range(self.iv_offset, iv_offset_text, length)
        check_whole_units(self.iv_offset, iv_offset_text, self.sector_size, length)
        self._unit_shift = self.sector_size.bit_length() - 1 - SECTOR_SHIFT
        self.dev, self.offset = get_device_at(env, self.dev_ref, offset_text, length)
        max_dun = largest_dun(self.iv_offset, length, self.sector_size)
        self.key = BlkCryptoKey.create(
            self.spec.mode,
            raw,
            self.sector_size,
            max(1, dun_bytes_needed(max_dun)),
            opts.key_type,
        )
        start_using_key(env, self.dev, self.key)
        self.io_granularity = self.sector_size

    def table_args(self, show_keys: bool = False) -> str:
        key = self.key.raw.hex() if show_keys else "-"
        params = self.opts.table_params()
        if self.key.key_type == KeyType.HW_WRAPPED:
            params.append("wrappedkey_v0")
        return (
            f"{self.spec.text} {key} {self.iv_offset} {self.dev.name} {self.offset >> SECTOR_SHIFT}"
            + format_optional(params)
        )

    def status(self) -> str:
        """Android prints nothing here. The key's configuration (never its bytes) is shown
        because ``dm evict-key`` must name it exactly, DUN width and key type included."""
        return describe_key(self.key)

    def devices(self) -> list[BlockDevice]:
        return [self.dev]

    def attached_keys(self) -> list[BlkCryptoKey]:
        return [self.key]

    def dun_of(self, offset: int) -> int:
        """The DUN of the data unit at byte ``offset`` of the target."""
        return (self.iv_offset + (offset >> SECTOR_SHIFT)) >> self._unit_shift

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

    async def destroy(self) -> None:
        """``default_key_dtr``: evict the key below so no keyslot keeps it after the table goes.

        Android evicts from the device's profile only. Here a mapped device below passes the
        eviction to every device it ever reached, and the fallback is asked too, because the
        devices below may have sent some of our bios there (evict from every device the key
        touched). A key still in use (EBUSY) is logged and left: the table is going anyway.
        """
        try:
            await self._block_layer.evict_key(self.key, [self.dev])
        except FuseblkError as exc:
            if exc.errno != errno.EBUSY:
                raise
            log.warning(
                "default-key: key %s still in use (%s): not evicted", self.key.key_id, exc.message
            )
