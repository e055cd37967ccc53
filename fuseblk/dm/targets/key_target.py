"""What default-key and inlinecrypt share: one blk-crypto key attached to the bios a target maps.

Both tables read ``<cipher> <hexkey> <iv_offset> <device> <offset> [<#opt_params> <opt_params>]``,
take the same options (``allow_discards``, ``sector_size:N``, ``iv_large_sectors``, and a
key-type option each spells its own way), compute ``DUN = (iv_offset + sector_in_target) >>
log2(sector_size / 512)`` and size the key's DUN from the target's largest one, start using the
key below when the table loads (``blk_crypto_start_using_key``) and evict it when the table goes.
What differs is declared by each subclass: its cipher names, its key-type option, its DUN-width
rule for a target whose largest DUN is 0, and how it maps a bio (default-key passes a context
from above through; inlinecrypt refuses one).
"""

from __future__ import annotations

import errno
import logging
from typing import TYPE_CHECKING, ClassVar

from fuseblk import SECTOR_SHIFT
from fuseblk.dm.targets.base import Target, TargetEnv
from fuseblk.dm.targets.cipher_spec import (
    CipherSpec,
    check_iv_range,
    check_whole_units,
    describe_key,
    format_optional,
    largest_dun,
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
_MAX_OPT_PARAMS = 4  # default_key_ctr_optional and inlinecrypt_ctr_optional alike


class KeyTarget(Target):
    """A target whose table names a key it attaches to every data bio it sends down."""

    supported: ClassVar[str]  # the ciphers and key sizes it takes, for errors
    options_help: ClassVar[str]  # the optional parameters it takes, for errors

    def __init__(self, env: TargetEnv, begin: int, length: int, args: list[str]) -> None:
        super().__init__(env, begin, length, args)
        self._block_layer: BlockLayer = env.block_layer  # evicts the key when the table goes
        cipher_text, key_text, iv_offset_text, self.dev_ref, offset_text = positional(
            args, _POSITIONAL
        )
        self.spec = self.parse_cipher(cipher_text)
        self.iv_offset = parse_sector(iv_offset_text, "iv_offset")
        self.opts = parse_inline_crypt_options(
            args[len(_POSITIONAL) :],
            _MAX_OPT_PARAMS,
            self.key_type_option,
            self.options_help,
            self.name,
        )
        self.allow_discards = self.opts.allow_discards
        self.sector_size = self.opts.sector_size
        raw = parse_key(key_text, self.spec, self.opts.key_type, self.supported)
        check_iv_range(self.iv_offset, iv_offset_text, length)
        check_whole_units(self.iv_offset, iv_offset_text, self.sector_size, length)
        self._unit_shift = self.sector_size.bit_length() - 1 - SECTOR_SHIFT
        self.dev, self.offset = get_device_at(env, self.dev_ref, offset_text, length)
        dun_bytes = self.dun_bytes_for(
            dun_bytes_needed(largest_dun(self.iv_offset, length, self.sector_size)), length
        )
        self.key = BlkCryptoKey.create(
            self.spec.mode, raw, self.sector_size, dun_bytes, self.opts.key_type
        )
        start_using_key(env, self.dev, self.key)
        self.io_granularity = self.sector_size

    # -- what a subclass declares ---------------------------------------------------------------

    @staticmethod
    def parse_cipher(text: str) -> CipherSpec:
        """The ``<cipher>`` field: the mode and raw key size it names."""
        raise NotImplementedError

    @staticmethod
    def key_type_option(opt: str) -> KeyType | None:
        """The key type an optional parameter selects; None: not a key-type option."""
        raise NotImplementedError

    def dun_bytes_for(self, needed: int, length: int) -> int:
        """The key's DUN width, given the bytes the largest DUN needs (0 when it is 0)."""
        raise NotImplementedError

    def table_params(self) -> list[str]:
        """The optional parameters of the table line, the key type named the target's way."""
        raise NotImplementedError

    # -- shared -----------------------------------------------------------------------------------

    def table_args(self, show_keys: bool = False) -> str:
        """The key shows as ``-`` unless ``--showkeys``."""
        key = self.key.raw.hex() if show_keys else "-"
        params = self.table_params()
        return (
            f"{self.spec.text} {key} {self.iv_offset} {self.dev.name} {self.offset >> SECTOR_SHIFT}"
            + format_optional(params)
        )

    def status(self) -> str:
        """Android and upstream print nothing here. The key's configuration (never its bytes)
        is shown because ``dm evict-key`` must name it exactly, DUN width and key type included."""
        return describe_key(self.key)

    def devices(self) -> list[BlockDevice]:
        return [self.dev]

    def attached_keys(self) -> list[BlkCryptoKey]:
        return [self.key]

    def dun_of(self, offset: int) -> int:
        """The DUN of the data unit at byte ``offset`` of the target."""
        return (self.iv_offset + (offset >> SECTOR_SHIFT)) >> self._unit_shift

    async def destroy(self) -> None:
        """The destructor: evict the key below so no keyslot keeps it after the table goes.

        The kernel's targets evict from the device's profile only. Here a mapped device below
        passes the eviction to every device it ever reached, and the fallback is asked too,
        because the devices below may have sent some of our bios there (evict from every device
        the key touched). A key still in use (EBUSY) is logged and left: the table is going
        anyway.
        """
        try:
            await self._block_layer.evict_key(self.key, [self.dev])
        except FuseblkError as exc:
            if exc.errno != errno.EBUSY:
                raise
            log.warning(
                "%s: key %s still in use (%s): not evicted", self.name, self.key.key_id, exc.message
            )
