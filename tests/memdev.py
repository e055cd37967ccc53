"""In-memory test doubles for the blk-crypto layers: a block device and keyslot "hardware".

``MemDevice`` is a :class:`fuseblk.device.BlockDevice` over a bytearray. With a crypto profile
it behaves as inline-encryption hardware (a bio with a context gets a keyslot and is en/decrypted
with the slot's cipher); a bio with a context it cannot handle is refused with EIO, because the
layer above should have fallen back first. ``MemKeyslotHardware`` is a :class:`KeyslotOps` that
remembers which key each slot holds and can be told to fail or to block.
"""

from __future__ import annotations

import errno
import os

import trio

from fuseblk import SECTOR_SIZE
from fuseblk.bio import Bio, BioOp
from fuseblk.blkcrypto.block_layer import supports_natively
from fuseblk.blkcrypto.keyslot_manager import CryptoProfile
from fuseblk.ciphers import DataUnitCipher, get_cipher
from fuseblk.errors import FuseblkError
from fuseblk.key import BlkCryptoKey
from fuseblk.modes import CryptoMode
from fuseblk.stats import Counters


def make_key(
    seed: int, mode: CryptoMode = CryptoMode.AES_256_XTS, dus: int = 512, **kw: int
) -> BlkCryptoKey:
    """A distinct valid key per seed (deterministic, so failures reproduce)."""
    raw = bytes((seed * 7 + i * 13 + 1) % 256 for i in range(mode.key_size))
    return BlkCryptoKey.create(mode, raw, dus, **kw)


class MemKeyslotHardware:
    """Keyslots of an imaginary controller: ``slots[i]`` is the key the hardware holds in slot i."""

    def __init__(self, num_slots: int) -> None:
        self.slots: list[BlkCryptoKey | None] = [None] * num_slots
        self.calls: list[tuple[str, str, int | None]] = []  # (op, key_id, slot)
        self.fail_program: set[BlkCryptoKey] = set()
        self.fail_evict: set[BlkCryptoKey] = set()
        self.gate: trio.Event | None = None  # when set to an unset Event, program_key waits on it
        self.programming = 0  # programs in progress right now

    async def program_key(self, key: BlkCryptoKey, slot: int) -> DataUnitCipher:
        self.calls.append(("program", key.key_id, slot))
        self.programming += 1
        try:
            if self.gate is not None:
                await self.gate.wait()
            await trio.lowlevel.checkpoint()
            if key in self.fail_program:
                self.slots[slot] = None
                raise FuseblkError(
                    errno.EIO, f"keyslot {slot}: programming key {key.key_id} failed"
                )
            self.slots[slot] = key
            return get_cipher(key)
        finally:
            self.programming -= 1

    async def evict_key(self, key: BlkCryptoKey, slot: int | None) -> None:
        self.calls.append(("evict", key.key_id, slot))
        await trio.lowlevel.checkpoint()
        if key in self.fail_evict:
            raise FuseblkError(errno.EIO, f"evicting key {key.key_id} failed")
        if slot is not None:
            self.slots[slot] = None

    def programs(self) -> list[tuple[str, int | None]]:
        return [(key_id, slot) for op, key_id, slot in self.calls if op == "program"]


class MemDevice:
    """A RAM block device; ``fail_next`` makes the next data bio fail with that errno."""

    block_size = SECTOR_SIZE
    fallback_per_target = False

    def __init__(
        self, size: int = 1 << 20, profile: CryptoProfile | None = None, name: str = "mem0"
    ) -> None:
        self.name = name
        self.size = size
        self.crypto_profile = profile
        self.counters = Counters()
        self.data = bytearray(os.urandom(size))  # not zeroes: a read that does nothing shows
        self.bios: list[Bio] = []
        self.fail_next: int | None = None
        self.open_count = 0

    def open(self) -> None:
        self.open_count += 1

    def release(self) -> None:
        self.open_count -= 1

    async def evict_key(self, key: BlkCryptoKey) -> None:
        if self.crypto_profile is not None and supports_natively(self, key.config):
            await self.crypto_profile.evict_key(key)

    async def submit(self, bio: Bio) -> None:
        self.bios.append(bio)
        await trio.lowlevel.checkpoint()
        if bio.op in (BioOp.FLUSH, BioOp.DISCARD):
            return
        if bio.end > self.size:
            raise FuseblkError(errno.EIO, f"{self.name}: I/O beyond the end")
        if self.fail_next is not None:
            err, self.fail_next = self.fail_next, None
            raise FuseblkError(err, f"{self.name}: injected failure")
        assert bio.buf is not None
        ctx = bio.crypt_ctx
        if ctx is not None and not supports_natively(self, ctx.key.config):
            raise FuseblkError(errno.EIO, f"{self.name}: got a bio with an unsupported context")
        if bio.op is BioOp.WRITE:
            data: bytes | bytearray | memoryview = bio.buf
            if ctx is not None:
                assert self.crypto_profile is not None
                async with self.crypto_profile.keyslot(ctx.key) as slot:
                    assert slot is not None
                    data = slot.cipher.encrypt(bio.buf, ctx.dun_int)
            self.data[bio.offset : bio.end] = data
        else:
            bio.buf[:] = self.data[bio.offset : bio.end]
            if ctx is not None:
                assert self.crypto_profile is not None
                async with self.crypto_profile.keyslot(ctx.key) as slot:
                    assert slot is not None
                    slot.cipher.decrypt_into(bio.buf, ctx.dun_int)
