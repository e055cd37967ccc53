"""The software fallback (block/blk-crypto-fallback.c): encryption the device below cannot do.

When a bio carries an encryption context its device does not support natively, the fallback
does the crypto in software and sends the device a plain bio: a WRITE is encrypted into a
bounce buffer (the caller's buffer is never touched), a READ is decrypted in place after it
completed, and not at all if it failed. The ciphertext is exactly what inline hardware would
have written, because both use :func:`fuseblk.ciphers.get_cipher`.

Like the kernel's, the fallback is a "device" with its own keyslots (100 by default, at most
:data:`MAX_NUM_SLOTS`), each holding an expanded cipher; it supports every mode and data unit
size, DUNs up to 32 bytes, and raw keys only (a hardware-wrapped key is useless without its
hardware). The kernel has one per system; here each device manager owns one (through its
:class:`~fuseblk.blkcrypto.block_layer.BlockLayer`), so two managers in a process share nothing.
"""

from __future__ import annotations

import errno
from typing import Protocol

from fuseblk.bio import Bio, BioOp
from fuseblk.blkcrypto.keyslot_manager import CryptoProfile
from fuseblk.capabilities import ALL_DATA_UNIT_SIZES, CryptoCapabilities
from fuseblk.ciphers import DataUnitCipher, get_cipher
from fuseblk.dun import DUN_MAX_BYTES
from fuseblk.errors import FuseblkError
from fuseblk.key import BlkCryptoKey, KeyType
from fuseblk.modes import ALL_MODES
from fuseblk.stats import Counters

DEFAULT_NUM_SLOTS = 100  # the kernel's blk_crypto_fallback.num_keyslots default
# Each slot may hold an expanded key: the count is bounded like any count that allocates.
MAX_NUM_SLOTS = 65536

FALLBACK_CAPS = CryptoCapabilities(
    {mode: ALL_DATA_UNIT_SIZES for mode in ALL_MODES}, DUN_MAX_BYTES, KeyType.RAW
)


class PlainBioSink(Protocol):
    """Where the fallback sends the bio once the crypto is its own business: a device, or one
    target of a mapped device (``fallback=target``). It never sees the context."""

    @property
    def name(self) -> str: ...

    async def submit(self, bio: Bio) -> None: ...


class _SoftwareKeyslots:
    """The fallback's keyslot "hardware" (``blk_crypto_fallback_keyslot_program``): programming
    a slot is expanding the key; the slot's cipher is all there is to forget on eviction."""

    async def program_key(self, key: BlkCryptoKey, slot: int) -> DataUnitCipher:
        return get_cipher(key)

    async def evict_key(self, key: BlkCryptoKey, slot: int | None) -> None:
        return None


class CryptoFallback:
    """``blk_crypto_fallback_bio_prep`` plus completion, as one awaitable submit."""

    def __init__(self, num_slots: int = DEFAULT_NUM_SLOTS, enabled: bool = True) -> None:
        if not 1 <= num_slots <= MAX_NUM_SLOTS:
            # Unlike a device, the fallback needs its slots: they hold the expanded ciphers.
            raise FuseblkError(
                errno.EINVAL,
                f"the crypto fallback takes 1 to {MAX_NUM_SLOTS} keyslots, got {num_slots}",
            )
        self.enabled = enabled
        self.profile = CryptoProfile(
            FALLBACK_CAPS, num_slots, ops=_SoftwareKeyslots(), name="blk-crypto-fallback"
        )
        self.counters = Counters()

    def supports(self, key: BlkCryptoKey) -> bool:
        return self.enabled and self.profile.supports(key.config)

    async def submit(self, dev: PlainBioSink, bio: Bio) -> None:
        """Perform ``bio`` on ``dev`` with its encryption done here; ``dev`` never sees the context."""
        ctx = bio.crypt_ctx
        if ctx is None or not bio.op.has_data:
            # FLUSH and DISCARD carry no data: nothing to en/decrypt.
            await dev.submit(bio.with_ctx(None) if ctx is not None else bio)
            return
        self._check_usable(dev, ctx.key)
        ctx.check_aligned(0, bio.length)
        assert bio.buf is not None
        units = bio.length // ctx.key.data_unit_size
        if bio.op is BioOp.WRITE:
            # The slot is held for the crypto only, not across the I/O (as in the kernel): slow
            # devices must not pin fallback slots. One cipher call covers the whole bio.
            async with self.profile.keyslot(ctx.key) as slot:
                assert slot is not None
                bounce = slot.cipher.encrypt(bio.buf, ctx.dun_int)
            self.counters.add("encrypt_units", units)
            await dev.submit(bio.with_buf(bounce).with_ctx(None))
        else:
            # If the read fails the error propagates and the buffer is left as the device left
            # it: ciphertext or garbage is never "decrypted" into something plausible.
            await dev.submit(bio.with_ctx(None))
            async with self.profile.keyslot(ctx.key) as slot:
                assert slot is not None
                slot.cipher.decrypt_into(bio.buf, ctx.dun_int)
            self.counters.add("decrypt_units", units)
        self.counters.add("bios")
        self.counters.add("bytes", bio.length)

    def _check_usable(self, dev: PlainBioSink, key: BlkCryptoKey) -> None:
        if not self.enabled:
            raise FuseblkError(
                errno.EOPNOTSUPP,
                f"{dev.name}: key {key.key_id} ({key.mode.sysfs_name}) is not supported by the "
                f"device and the crypto fallback is disabled",
            )
        if key.key_type != KeyType.RAW:
            # blk_crypto_fallback_bio_prep: the fallback's profile lists raw keys only, so the
            # bio ends with BLK_STS_NOTSUPP, without a log line (blk_crypto_start_using_key is
            # where the kernel says "no support for wrapped keys", when a table is loaded).
            raise FuseblkError(
                errno.EOPNOTSUPP,
                f"{dev.name}: key {key.key_id} is hardware-wrapped: the crypto fallback needs a raw key",
            )

    async def evict_key(self, key: BlkCryptoKey) -> None:
        """``blk_crypto_fallback_evict_key``: drop the key's expanded cipher (EBUSY while in use)."""
        await self.profile.evict_key(key)
