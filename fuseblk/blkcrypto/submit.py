"""Submitting a bio to a device: ``blk_crypto_bio_prep`` then ``submit_bio``.

Every layer that sends a bio to the device below goes through :func:`submit_bio`, so the choice
between inline encryption and the software fallback is made in exactly one place: a context the
device supports natively goes down with the bio; any other is handled by the fallback, and the
device receives plain data.
"""

from __future__ import annotations

from typing import Literal

from fuseblk.bio import Bio
from fuseblk.blkcrypto.fallback import get_fallback
from fuseblk.device import BlockDevice
from fuseblk.key import CryptoConfig

CryptoPath = Literal["inline", "fallback", "unsupported"]


def supports_natively(dev: BlockDevice, config: CryptoConfig) -> bool:
    """``blk_crypto_config_supported_natively``: the device's own profile accepts ``config``."""
    profile = dev.crypto_profile
    return profile is not None and profile.supports(config)


async def submit_bio(dev: BlockDevice, bio: Bio) -> None:
    """Send ``bio`` to ``dev``, falling back to software crypto if ``dev`` cannot do it.

    A misaligned bio fails with EINVAL before anything is submitted. A device that sets
    ``fallback_per_target`` (a mapped device whose table mixes capable and incapable devices)
    takes every context and falls back itself, piece by piece.
    """
    ctx = bio.crypt_ctx
    if ctx is None:
        await dev.submit(bio)
        return
    if bio.op.has_data:
        ctx.check_aligned(0, bio.length)
    if getattr(dev, "fallback_per_target", False) or supports_natively(dev, ctx.key.config):
        await dev.submit(bio)
    else:
        # blk_crypto_bio_prep on dev's queue: the fallback serves this bio on dev's behalf, so
        # dev's counters say so (else a stack like default-key over a mapped device shows the
        # fallback only in the global section, and no device says which path served it)
        counters = getattr(dev, "counters", None)
        if counters is not None:
            counters.add("fallback_bios")
            counters.add("fallback_bytes", bio.length)
        await get_fallback().submit(dev, bio)


def describe_path(dev: BlockDevice, config: CryptoConfig) -> CryptoPath:
    """Where a bio with ``config`` would be encrypted on ``dev``: for status and stats output.

    A device that falls back per target reports the whole-device answer: "inline" only if its
    profile supports the configuration everywhere.
    """
    if supports_natively(dev, config):
        return "inline"
    fallback = get_fallback()
    if fallback.enabled and fallback.profile.supports(config):
        return "fallback"
    return "unsupported"
