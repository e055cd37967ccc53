#!/usr/bin/env python3
"""Where one request's time goes inside the daemon: every layer timed alone, top down.

    .venv/bin/python tools/profile_hot_path.py [--size BYTES] [--count N] [--rounds R]
                                               [--profile read|write]

Builds the built-in default setup in a temporary state directory (exactly what ``fuseblk mount``
serves) and, without a kernel or a mount, calls each layer of the path one request (4 KiB unless ``--size``) takes on
``secure`` directly, from the FUSE operation down to the storage and the cipher:

* ``fuse op``     — ``DeviceFiles.read``/``write`` (the FUSE boundary, request count, BlockIO);
* ``block io``    — ``BlockIO.read``/``write`` (clamping, range lock on writes);
* ``secure``      — the default-key device: suspend gate, checks, counters, its target's map;
* ``base``        — the two-target linear device with a context: its split and per-target path;
* ``engine``      — the inline-encryption hardware: keyslot get/put, the cipher, the storage;
* ``engine, no ctx`` — the same bio without a context: range check and storage only;
* ``storage``     — the image file's ``read_into``/``write`` alone;
* ``os.pread``    — the system call alone;
* ``cipher (+slot)`` — the request's data units through the slot's cipher, slot taken and put.

Each layer's own cost is its time minus the time of the layer below it. What the kernel and
pyfuse3 add on top of ``fuse op`` is what ``tools/bench.py``'s floor pays per request (its
1 / IOPS at queue depth 1 minus ``os.pread``). The random offsets lie in the inline part, the
same offsets for every layer in a round. ``--profile`` runs cProfile over the full FUSE op.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from fuseblk.bio import Bio
from fuseblk.config.config_file import build_devices
from fuseblk.config.default_setup import INLINE_PART, default_config
from fuseblk.crypt_context import BioCryptContext
from fuseblk.dm.manager import DeviceManager
from fuseblk.dm.targets.default_key import DefaultKeyTarget
from fuseblk.fuse.block_io import BlockIO
from fuseblk.fuse.ops import DeviceFiles
from fuseblk.hw.engine import InlineEncryptionEngine

Step = Callable[[int], Awaitable[object]]


def layers(
    manager: DeviceManager, ops: DeviceFiles, fh: int, write: bool, size: int
) -> list[tuple[str, Step]]:
    """The path one request takes, top down, each entry a call that serves it at one layer."""
    secure = manager.get("secure")
    base = manager.get("base")
    engine = manager.backends()["inline"]
    assert isinstance(engine, InlineEncryptionEngine)
    target = secure.live.targets[0]  # type: ignore[union-attr]
    assert isinstance(target, DefaultKeyTarget)
    key = target.key
    block_io = BlockIO(secure)
    storage = engine._storage  # noqa: SLF001 — measuring the piece itself
    data_offset = engine._data_offset  # noqa: SLF001
    fd = os.open(storage.reference, os.O_RDWR)
    buf = bytearray(size)
    payload = os.urandom(size)

    def ctx_at(off: int) -> BioCryptContext:
        return BioCryptContext(key, off // 4096)

    if write:
        steps: list[tuple[str, Step]] = [
            ("fuse op", lambda off: ops.write(fh, off, payload)),
            ("block io", lambda off: block_io.write(off, payload)),
            ("secure", lambda off: secure.submit(Bio.write(off, payload))),
            ("base", lambda off: base.submit(Bio.write(off, payload, ctx_at(off)))),
            ("engine", lambda off: engine.submit(Bio.write(off, payload, ctx_at(off)))),
            ("engine, no ctx", lambda off: engine.submit(Bio.write(off, payload))),
            ("storage", _sync(lambda off: storage.write(payload, off + data_offset))),
            ("os.pwrite", _sync(lambda off: os.pwrite(fd, payload, off + data_offset))),
        ]
    else:
        steps = [
            ("fuse op", lambda off: ops.read(fh, off, size)),
            ("block io", lambda off: block_io.read(off, size)),
            ("secure", lambda off: secure.submit(Bio.read(off, buf))),
            ("base", lambda off: base.submit(Bio.read(off, buf, ctx_at(off)))),
            ("engine", lambda off: engine.submit(Bio.read(off, buf, ctx_at(off)))),
            ("engine, no ctx", lambda off: engine.submit(Bio.read(off, buf))),
            ("storage", _sync(lambda off: storage.read_into(memoryview(buf), off + data_offset))),
            ("os.pread", _sync(lambda off: os.preadv(fd, [buf], off + data_offset))),
        ]
    profile = engine.crypto_profile
    assert profile is not None

    async def xts(off: int) -> None:
        slot = profile.get_cached_keyslot(key) or await profile.get_keyslot(key)
        assert slot is not None
        try:
            cipher = slot.cipher
            if write:
                cipher.encrypt(payload, off // 4096)
            else:
                cipher.decrypt_into(memoryview(buf), off // 4096)
        finally:
            profile.put_keyslot(slot)

    steps.append(("cipher (+slot)", xts))
    return steps


def _sync(fn: Callable[[int], object]) -> Step:
    async def step(off: int) -> object:
        return fn(off)

    return step


async def measure(count: int, rounds: int, write: bool, profile_op: bool, size: int) -> None:
    with tempfile.TemporaryDirectory(prefix="fuseblk-profile-") as state:
        manager = await build_devices(default_config(Path(state)))
        try:
            ops = DeviceFiles(manager)
            inode = ops._by_name["secure"].inode  # noqa: SLF001
            info = await ops.open(inode, os.O_RDWR, None)  # type: ignore[arg-type]
            fh = info.fh
            steps = layers(manager, ops, fh, write, size)
            rng = random.Random(1)
            offsets = [rng.randrange(INLINE_PART // size) * size for _ in range(count)]
            for off in offsets[:256]:  # warm: keyslot programmed, pages cached
                await ops.write(fh, off, os.urandom(size))
            if profile_op:
                op = steps[0][1]
                prof = cProfile.Profile()
                prof.enable()
                for off in offsets:
                    await op(off)
                prof.disable()
                pstats.Stats(prof).sort_stats("tottime").print_stats(25)
                return
            results: dict[str, list[float]] = {name: [] for name, _ in steps}
            for _ in range(rounds):
                for name, step in steps:
                    start = time.perf_counter()
                    for off in offsets:
                        await step(off)
                    results[name].append((time.perf_counter() - start) / count * 1e6)
            what = "write" if write else "read"
            print(f"{size // 1024} KiB {what}: median of {rounds} rounds of {count}")
            print(f"{'layer':<20} {'µs/request':>11} {'own µs':>8}")
            medians = [(name, statistics.median(times)) for name, times in results.items()]
            chain = medians[:-1]  # the cipher is a piece of the engine, not a layer below storage
            for i, (name, us) in enumerate(chain):
                below = chain[i + 1][1] if i + 1 < len(chain) else 0.0
                print(f"{name:<20} {us:>11.1f} {us - below:>8.1f}")
            name, us = medians[-1]
            print(f"{name:<20} {us:>11.1f}")
            await ops.release(fh)
        finally:
            await manager.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=int, default=4096, help="bytes per request (default 4096)")
    parser.add_argument("--profile", choices=("read", "write"), help="cProfile the FUSE op")
    args = parser.parse_args()
    if args.profile:
        trio.run(measure, args.count, 1, args.profile == "write", True, args.size)
        return
    for write in (False, True):
        trio.run(measure, args.count, args.rounds, write, False, args.size)


if __name__ == "__main__":
    main()
