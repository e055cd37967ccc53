"""Reusable helpers for device-mapper tests: RAM disks with emulated inline encryption,
image-backed managers, keys, a manual clock, and read/write shorthands.

``MemDisk`` is a :class:`fuseblk.device.Backend` over a bytearray. With capabilities it acts
as inline-encryption hardware (a keyslot profile, or a 0-slot "direct" one); a context it cannot
handle is refused with EIO, since blk-crypto above must have fallen back first. It records how
many context bios it served natively, so tests can tell which path served each piece.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from memdev import MemKeyslotHardware

from fuseblk import SECTOR_SIZE
from fuseblk.bio import Bio, BioOp
from fuseblk.blkcrypto.block_layer import BlockLayer, supports_natively
from fuseblk.blkcrypto.keyslot_manager import CryptoProfile
from fuseblk.capabilities import CryptoCapabilities, dus_mask
from fuseblk.ciphers import get_cipher
from fuseblk.crypt_context import BioCryptContext
from fuseblk.device import BlockDevice
from fuseblk.dm.manager import DeviceManager
from fuseblk.dm.mapped_device import MappedDevice
from fuseblk.dm.targets.base import TargetArgError
from fuseblk.errors import FuseblkError
from fuseblk.hw.factory import create_backend
from fuseblk.hw.profiles import load_profile
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


def make_key(
    seed: int, mode: CryptoMode = XTS, dus: int = 4096, dun_bytes: int | None = 8
) -> BlkCryptoKey:
    raw = bytes((seed * 31 + i * 7 + 3) % 256 for i in range(mode.key_size))
    return BlkCryptoKey.create(mode, raw, dus, dun_bytes)


def ciphertext(key: BlkCryptoKey, data: bytes, dun: int) -> bytes:
    """What any correct path (hardware or fallback) must store for ``data`` at ``dun``."""
    return bytes(get_cipher(key).encrypt(data, dun))


class MemDisk:
    """A RAM disk; ``caps`` makes it inline-encryption hardware with ``num_slots`` keyslots."""

    block_size = SECTOR_SIZE
    fallback_per_target = False

    def __init__(
        self, name: str, size: int = MiB, caps: CryptoCapabilities | None = None, num_slots: int = 4
    ) -> None:
        self.name = name
        self.path = f"/memdisk/{name}"  # no file: a path nothing else resolves to
        self.size = size
        self.data = bytearray(size)
        self.counters = Counters()
        self.crypto_profile = (
            CryptoProfile(caps, num_slots, MemKeyslotHardware(num_slots), name=name)
            if caps is not None
            else None
        )
        self.seen: list[Bio] = []
        self.hold: trio.Event | None = None  # when set to an unset Event, bios wait on it
        self.open_count = 0
        self.closed = False

    def open(self) -> None:
        self.open_count += 1

    def release(self) -> None:
        self.open_count -= 1

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
        self.seen.append(bio)
        self.counters.add("bios")
        await trio.lowlevel.checkpoint()
        if self.hold is not None:
            await self.hold.wait()
        if bio.op is BioOp.FLUSH:
            self.counters.add("flushes")
            return
        if bio.end > self.size:
            raise FuseblkError(errno.EIO, f"{self.name}: beyond end")
        if bio.op is BioOp.DISCARD:
            self.data[bio.offset : bio.end] = bytes(bio.length)
            return
        assert bio.buf is not None
        ctx = bio.crypt_ctx
        cipher = None
        if ctx is not None:
            profile = self.crypto_profile
            if profile is None or not profile.supports(ctx.key.config):
                raise FuseblkError(
                    errno.EIO, f"{self.name}: unsupported context reached the hardware"
                )
            self.counters.add("inline_bios")
            self.counters.add("inline_bytes", bio.length)
            slot = await profile.get_keyslot(ctx.key)
            try:
                cipher = slot.cipher if slot is not None else get_cipher(ctx.key)
            finally:
                profile.put_keyslot(slot)
        if bio.op is BioOp.WRITE:
            data = cipher.encrypt(bio.buf, ctx.dun_int) if cipher and ctx else bio.buf
            self.data[bio.offset : bio.end] = data
        else:
            bio.buf[:] = self.data[bio.offset : bio.end]
            if cipher is not None and ctx is not None:
                cipher.decrypt_into(bio.buf, ctx.dun_int)


class ManualClock:
    """A clock tests move by hand (seconds), for flakey's up/down intervals."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class DeviceEnv:
    """What a target's constructor sees of a table load, over devices by the name tables use:
    parsing and mapping tests need no manager. Its block layer (and fallback) is its own."""

    def __init__(
        self,
        devices: Mapping[str, BlockDevice],
        device_name: str = "test",
        block_layer: BlockLayer | None = None,
    ) -> None:
        self.devices = dict(devices)
        self.device_name = device_name
        self.block_layer = block_layer if block_layer is not None else BlockLayer()
        self.clock = time.monotonic

    def get_device(self, ref: str) -> BlockDevice:
        try:
            return self.devices[ref]
        except KeyError:
            raise TargetArgError("device", "a known device", ref) from None


@pytest.fixture
async def manager() -> AsyncIterator[DeviceManager]:
    """An empty manager, closed (devices removed, images detached) even when the test fails."""
    dm = DeviceManager()
    try:
        yield dm
    finally:
        await dm.close()


def manager_over(*disks: BlockDevice, clock: ManualClock | None = None) -> DeviceManager:
    dm = DeviceManager(clock=clock)
    for disk in disks:
        dm.add_device(disk)
    return dm


async def make_image(tmp_path: Path, name: str, size: int = 4 * MiB, hardware: str = "ufs") -> Path:
    """A sparse backend image with a hardware profile from backends/ (``ufs``, ``emmc``, ``none``...)."""
    path = tmp_path / f"{name}.img"
    await create_backend(path, size, load_profile(hardware)).close()
    return path


@asynccontextmanager
async def image_manager(
    tmp_path: Path, images: dict[str, tuple[int, str]], clock: ManualClock | None = None
) -> AsyncIterator[DeviceManager]:
    """A manager with backends ``name -> (size, hardware profile)`` over fresh images in tmp_path,
    closed (images detached and unlocked) even when the test fails."""
    dm = DeviceManager(clock=clock)
    try:
        for name, (size, hardware) in images.items():
            dm.add_backend(name, await make_image(tmp_path, name, size, hardware))
        yield dm
    finally:
        await dm.close()


async def submit(dev: MappedDevice, bio: Bio) -> None:
    """Submit as a layer above a mapped device does: through its manager's block layer, which
    prepares a bio with a context (inline, or the fallback on the device's behalf). A bio
    without one goes straight to ``dev.submit``, as the FUSE layer sends it."""
    await dev.block_layer.submit_bio(dev, bio)


async def write(
    dev: MappedDevice, offset: int, data: bytes, ctx: BioCryptContext | None = None
) -> None:
    await submit(dev, Bio.write(offset, data, ctx))


async def read(
    dev: MappedDevice, offset: int, length: int, ctx: BioCryptContext | None = None
) -> bytes:
    buf = bytearray(length)
    await submit(dev, Bio.read(offset, buf, ctx))
    return bytes(buf)


def pattern(length: int, seed: int = 0) -> bytes:
    """Distinct, reproducible bytes (so misplaced sectors show)."""
    return bytes(((i // 512) * 131 + seed * 17 + i) % 251 for i in range(length))


def random_bytes(length: int) -> bytes:
    return os.urandom(length)
