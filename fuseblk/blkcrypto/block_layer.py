"""The block layer as inline encryption sees it: ``blk_crypto_bio_prep`` before every submit.

Every layer that sends a bio to a device goes through :meth:`BlockLayer.submit_bio`, so the
choice between inline encryption and the software fallback is made in exactly one place: a
context the device supports natively goes down with the bio; any other is handled by the
fallback, and the device receives plain data. A device that sets ``fallback_per_target`` (a
mapped device whose table mixes capable and incapable devices) takes every context and falls
back itself, piece by piece, through the same fallback.

The kernel has one block layer and one fallback per system. Here the device manager owns a
:class:`BlockLayer` and passes it down (to its mapped devices, and to targets through the table
environment), so the fallback's size and switch are the manager's configuration and two
managers in one process share no keyslots and no counters.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Iterable

from fuseblk.bio import Bio
from fuseblk.blkcrypto.fallback import CryptoFallback
from fuseblk.device import BlockDevice
from fuseblk.errors import FuseblkError
from fuseblk.key import BlkCryptoKey, CryptoConfig, KeyType

log = logging.getLogger(__name__)


def supports_natively(dev: BlockDevice, config: CryptoConfig) -> bool:
    """``blk_crypto_config_supported_natively``: the device's own profile accepts ``config``."""
    profile = dev.crypto_profile
    return profile is not None and profile.supports(config)


class BlockLayer:
    """Submitting bios and evicting keys, with the software fallback behind both."""

    def __init__(self, fallback: CryptoFallback | None = None) -> None:
        self.fallback = fallback if fallback is not None else CryptoFallback()

    async def submit_bio(self, dev: BlockDevice, bio: Bio) -> None:
        """Send ``bio`` to ``dev``, falling back to software crypto if ``dev`` cannot do it.

        A misaligned bio fails with EINVAL before anything is submitted. A context that reaches
        ``dev.submit`` is one its profile supports, or any context if it falls back per target.
        """
        ctx = bio.crypt_ctx
        if ctx is None:
            await dev.submit(bio)
            return
        key = ctx.key
        if bio.length % key.data_unit_size and bio.op.has_data:
            ctx.check_aligned(0, bio.length)  # raises
        if dev.fallback_per_target:
            await dev.submit(bio)
            return
        profile = dev.crypto_profile
        if profile is not None and profile.caps.supports(key.config):
            await dev.submit(bio)
            return
        # The fallback serves this bio on dev's behalf (blk_crypto_bio_prep on dev's queue), so
        # dev's counters say so: in a stack like default-key over a mapped device, the device
        # is where one sees which path served it.
        counters = dev.counters
        counters["fallback_bios"] += 1
        counters["fallback_bytes"] += bio.length
        await self.fallback.submit(dev, bio)

    def start_using_key(self, dev: BlockDevice, key: BlkCryptoKey) -> None:
        """``blk_crypto_start_using_key``: whether bios with ``key`` can be served on ``dev``.

        Targets that attach a key ask this once, when their table is loaded, so that a key no
        path can serve is refused then rather than failing every bio. Natively supported is
        always fine; a hardware-wrapped key without native support is EOPNOTSUPP (the fallback
        takes raw keys only: a wrapped key is useless without its hardware); any other key
        can go through the fallback, which supports every mode.

        A disabled fallback (``--no-fallback``) is not refused here, on purpose: the kernel
        without the fallback compiled in answers ENOPKG, but fuseblk's switch turns the fallback
        off at run time, and stacks whose devices each serve part of a table natively (a
        ``fallback=target`` device over mixed hardware) must still load; their bios that need
        the fallback fail with EOPNOTSUPP.
        """
        if supports_natively(dev, key.config):
            return
        if key.key_type != KeyType.RAW:
            log.warning("%s: no support for wrapped keys", dev.name)
            raise FuseblkError(errno.EOPNOTSUPP, f"{dev.name}: no support for wrapped keys")

    async def evict_key(self, key: BlkCryptoKey, devices: Iterable[BlockDevice]) -> None:
        """``blk_crypto_evict_key`` on each of ``devices`` (each forwards to what lies below it)
        and on the fallback, which holds the key if any of them could not take it.

        Every place is tried even after a failure (``dm_keyslot_evict`` does the same); the
        first error (EBUSY for a key in use) is raised at the end.
        """
        first: FuseblkError | None = None
        for dev in devices:
            try:
                await dev.evict_key(key)
            except FuseblkError as err:
                first = first or err
        try:
            await self.fallback.evict_key(key)
        except FuseblkError as err:
            first = first or err
        if first is not None:
            raise first
