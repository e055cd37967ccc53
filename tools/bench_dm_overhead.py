"""What device-mapper costs per bio: a null device direct, then through mapped devices.

    .venv/bin/python tools/bench_dm_overhead.py [--count N] [--rounds R]

The device below does nothing (no copy, no checkpoint), so the numbers are dm core's own cost:
the suspend gate, the range check, the table lookup, the split, the target's remap and
``BlockLayer.submit_bio``. Cases: direct; one linear target (the hot path, no split); a bio
inside one target of a 4-target table; a bio split across two targets; two stacked linears;
a bio with a context the device passes through; a write mirrored to two raid1 legs. Each figure is the median of ``R`` rounds of
``N`` bios (one round's mean moves by several percent with whatever else the machine runs).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Awaitable, Callable

import trio

from fuseblk.bio import Bio
from fuseblk.blkcrypto.keyslot_manager import CryptoProfile
from fuseblk.capabilities import CryptoCapabilities
from fuseblk.crypt_context import BioCryptContext
from fuseblk.device import BlockDevice
from fuseblk.dm.manager import DeviceManager
from fuseblk.key import BlkCryptoKey
from fuseblk.stats import Counters

SubmitBio = Callable[[BlockDevice, Bio], Awaitable[None]]


class NullDevice:
    """Accepts every bio and does nothing: measures the layers above it."""

    fallback_per_target = False

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.size = size
        self.crypto_profile = CryptoProfile(CryptoCapabilities.everything(), 0, name=name)
        self.counters = Counters()

    async def submit(self, bio: Bio) -> None:
        return None


async def timed(
    submit_bio: SubmitBio, dev: BlockDevice, make: Callable[[int], Bio], count: int
) -> float:
    for i in range(min(count, 1000)):
        await submit_bio(dev, make(i))
    start = time.perf_counter()
    for i in range(count):
        await submit_bio(dev, make(i))
    return (time.perf_counter() - start) / count * 1e6


async def main(count: int, rounds: int) -> None:
    null = NullDevice("null", 1 << 30)
    dm = DeviceManager()
    dm.add_device(null)
    dm.add_device(NullDevice("null2", 1 << 30))
    one = await dm.create("one", "0 2097152 linear null 0")
    four = await dm.create(
        "four", "".join(f"{i * 524288} 524288 linear null {i * 524288}\n" for i in range(4))
    )
    await dm.create("lower", "0 2097152 linear null 0")
    stacked = await dm.create("stacked", "0 2097152 linear lower 0")
    mirror = await dm.create("mirror", "0 2097152 raid1 2 null 0 null2 0 1 nosync")
    buf = bytearray(4096)
    key = BlkCryptoKey.create("AES-256-XTS", os.urandom(64), 4096, 8)
    cases: list[tuple[str, BlockDevice, Callable[[int], Bio]]] = [
        ("direct (null device)", null, lambda i: Bio.write(i % 1000 * 4096, buf)),
        ("1 linear target", one, lambda i: Bio.write(i % 1000 * 4096, buf)),
        ("4 targets, inside one", four, lambda i: Bio.write(524288 * 512 + i % 1000 * 4096, buf)),
        ("4 targets, split in 2", four, lambda i: Bio.write(524288 * 512 - 2048, buf)),
        ("2 stacked linears", stacked, lambda i: Bio.write(i % 1000 * 4096, buf)),
        (
            "1 linear, with context",
            one,
            lambda i: Bio.write(i % 1000 * 4096, buf, BioCryptContext.at(key, i)),
        ),
        ("raid1 of 2 legs, write", mirror, lambda i: Bio.write(i % 1000 * 4096, buf)),
    ]
    base = None
    for name, dev, make in cases:
        us = statistics.median(
            [await timed(dm.block_layer.submit_bio, dev, make, count) for _ in range(rounds)]
        )
        base = base if base is not None else us
        print(f"{name:26} {us:7.2f} us/bio  (+{us - base:5.2f})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20000, help="bios per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per case (median shown)")
    args = parser.parse_args()
    trio.run(main, args.count, args.rounds)
