"""Reusable helpers for device-mapper tests: image-backed managers, a manual clock, a table
load's view of devices, and read/write shorthands. The RAM devices and keys are in
device_helpers.py."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

from device_helpers import MiB

from fuseblk.bio import Bio
from fuseblk.blkcrypto.block_layer import BlockLayer
from fuseblk.crypt_context import BioCryptContext
from fuseblk.device import BlockDevice
from fuseblk.dm.manager import DeviceManager
from fuseblk.dm.mapped_device import MappedDevice
from fuseblk.dm.targets.base import TargetArgError
from fuseblk.hw.factory import create_backend
from fuseblk.hw.profiles import load_profile


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
