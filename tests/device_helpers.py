"""The test kit's devices and keys: one RAM block device, keyslot "hardware", capabilities, keys.

``MemDevice`` is a :class:`fuseblk.device.Backend` over a bytearray, so every layer's tests
stack on the same double. It enforces what any real device does — I/O in whole logical blocks,
nothing beyond the end — and lets a test see and steer what reaches it: every bio is recorded,
failures can be injected, bios can be held, and writes can be made to tear.

With a crypto profile it acts as inline-encryption hardware (keyslots, or a 0-slot "direct"
profile); a context it cannot handle is refused with EIO, because blk-crypto above must have
fallen back first. It counts the context bios it served natively, so tests can tell which path
served each piece. ``MemKeyslotHardware`` is the :class:`KeyslotOps` behind such a profile: it
remembers which key each slot holds and can be told to fail or to block.
"""

from __future__ import annotations

import errno
import os
import threading
from typing import Any

import trio

from fuseblk import SECTOR_SIZE
from fuseblk.bio import Bio, BioOp
from fuseblk.blkcrypto.block_layer import supports_natively
from fuseblk.blkcrypto.keyslot_manager import CryptoProfile
from fuseblk.capabilities import CryptoCapabilities, dus_mask
from fuseblk.ciphers import DataUnitCipher, get_cipher
from fuseblk.device import OpenCounter
from fuseblk.errors import FuseblkError
from fuseblk.key import BlkCryptoKey, KeyType
from fuseblk.modes import CryptoMode
from fuseblk.stats import Counters

MiB = 1 << 20
XTS = CryptoMode.AES_256_XTS


def caps(modes: dict[CryptoMode, tuple[int, ...]], max_dun_bytes: int = 8) -> CryptoCapabilities:
    """Capabilities from ``{mode: (data unit sizes...)}``."""
    return CryptoCapabilities(
        {m: dus_mask(*s) for m, s in modes.items()}, max_dun_bytes, KeyType.RAW
    )


def xts_hardware() -> CryptoProfile:
    """Keyslot hardware (4 slots) for raw AES-256-XTS keys, 512- to 4096-byte units, 8-byte DUNs:
    what a key target's bios go down to inline."""
    caps = CryptoCapabilities({XTS: dus_mask(512, 4096)}, 8, KeyType.RAW)
    return CryptoProfile(caps, 4, MemKeyslotHardware(4), name="memhw")


def make_key(
    seed: int, mode: CryptoMode = XTS, dus: int = 4096, dun_bytes: int | None = 8
) -> BlkCryptoKey:
    """A distinct valid key per seed (deterministic, so failures reproduce). The defaults are
    what a file system asks of UFS hardware; ``dun_bytes=None`` takes the mode's IV size."""
    raw = bytes((seed * 31 + i * 7 + 3) % 256 for i in range(mode.key_size))
    return BlkCryptoKey.create(mode, raw, dus, dun_bytes)


def ciphertext(key: BlkCryptoKey, data: bytes, dun: int) -> bytes:
    """What any correct path (hardware or fallback) must store for ``data`` at ``dun``."""
    return bytes(get_cipher(key).encrypt(data, dun))


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


class MemDevice(OpenCounter):
    """A RAM disk of ``size`` bytes in ``block_size`` blocks.

    Crypto: ``profile`` as given, or ``caps`` makes it hardware with ``num_slots`` keyslots of a
    :class:`MemKeyslotHardware`. ``noise`` starts it with random bytes instead of zeroes, so a
    read that does nothing shows. ``tear_writes`` lands writes half a block at a time with
    checkpoints between, so concurrent writers tear blocks unless the caller serializes them;
    otherwise a write lands at once, as a reader racing it expects.

    Steering: ``fail_next`` fails the next data bio with that errno, ``failing`` every data bio
    until cleared (like the error target); ``hold`` (a trio Event) holds every bio inside the
    event loop, ``gate`` (a threading Event) holds data bios off the loop, for tests that release
    it from another thread, as real slow I/O would wait.
    """

    fallback_per_target = False

    def __init__(
        self,
        name: str = "mem0",
        size: int = MiB,
        block_size: int = SECTOR_SIZE,
        *,
        caps: CryptoCapabilities | None = None,
        num_slots: int = 4,
        profile: CryptoProfile | None = None,
        noise: bool = False,
        tear_writes: bool = False,
    ) -> None:
        if caps is not None and profile is not None:
            raise ValueError("give capabilities or a profile, not both")
        self.name = name
        self.path = f"/memdev/{name}"  # no file: a path nothing else resolves to
        self.size = size
        self.block_size = block_size
        self.data = bytearray(os.urandom(size) if noise else bytes(size))
        self.tear_writes = tear_writes
        self.counters = Counters()
        self.crypto_profile = (
            CryptoProfile(caps, num_slots, MemKeyslotHardware(num_slots), name=name)
            if caps is not None
            else profile
        )
        self.bios: list[Bio] = []
        self.fail_next: int | None = None
        self.failing: int | None = None
        self.hold: trio.Event | None = None
        self.gate: threading.Event | None = None
        self.closed = False

    def extents(self) -> list[tuple[BioOp, int, int]]:
        """What reached the device, as ``(op, offset, length)``."""
        return [(bio.op, bio.offset, bio.length) for bio in self.bios]

    async def flush(self) -> None:
        self.counters.add("flushes")

    async def close(self) -> None:
        self.closed = True

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "counters": self.counters.snapshot()}

    async def evict_key(self, key: BlkCryptoKey) -> None:
        if self.crypto_profile is not None and supports_natively(self, key.config):
            await self.crypto_profile.evict_key(key)

    async def submit(self, bio: Bio) -> None:
        self.bios.append(bio)
        self.counters.add("bios")
        await trio.lowlevel.checkpoint()
        if self.hold is not None:
            await self.hold.wait()
        if bio.op is BioOp.FLUSH:
            self.counters.add("flushes")
            return
        if bio.offset % self.block_size or bio.length % self.block_size:
            raise FuseblkError(
                errno.EINVAL, f"{self.name}: unaligned bio {bio!r} on {self.block_size}-byte blocks"
            )
        if bio.end > self.size:
            raise FuseblkError(errno.EIO, f"{self.name}: bio {bio!r} beyond the end")
        if bio.op is BioOp.DISCARD:
            self.data[bio.offset : bio.end] = bytes(bio.length)
            return
        if self.gate is not None:
            await trio.to_thread.run_sync(self.gate.wait, abandon_on_cancel=True)
        self._inject_failure()
        assert bio.buf is not None
        cipher = await self._inline_cipher(bio)
        ctx = bio.crypt_ctx
        if bio.op is BioOp.WRITE:
            data = cipher.encrypt(bio.buf, ctx.dun_int) if cipher and ctx else bio.buf
            if self.tear_writes:
                await self._write_torn(bio.offset, data)
            else:
                self.data[bio.offset : bio.end] = data
        else:
            bio.buf[:] = self.data[bio.offset : bio.end]
            if cipher is not None and ctx is not None:
                cipher.decrypt_into(bio.buf, ctx.dun_int)

    async def _write_torn(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        step = max(self.block_size // 2, 1)
        for pos in range(0, len(data), step):
            self.data[offset + pos : offset + pos + step] = data[pos : pos + step]
            await trio.lowlevel.checkpoint()

    def _inject_failure(self) -> None:
        err = self.fail_next if self.fail_next is not None else self.failing
        self.fail_next = None
        if err is not None:
            raise FuseblkError(err, f"{self.name}: injected failure")

    async def _inline_cipher(self, bio: Bio) -> DataUnitCipher | None:
        """The keyslot's cipher for a context bio (a direct profile's own), counted as inline."""
        ctx = bio.crypt_ctx
        if ctx is None:
            return None
        profile = self.crypto_profile
        if profile is None or not supports_natively(self, ctx.key.config):
            raise FuseblkError(errno.EIO, f"{self.name}: unsupported context reached the hardware")
        self.counters.add("inline_bios")
        self.counters.add("inline_bytes", bio.length)
        slot = await profile.get_keyslot(ctx.key)
        try:
            return slot.cipher if slot is not None else get_cipher(ctx.key)
        finally:
            profile.put_keyslot(slot)
