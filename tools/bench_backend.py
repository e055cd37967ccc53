"""Per-bio cost of a backend, and the inline-versus-thread crossover behind INLINE_IO_MAX.

    .venv/bin/python tools/bench_backend.py [--count N] [--rounds R] [--dir DIR]
                                            [--storage file|memory ...] [--profile P ...]

Prints the median over R rounds of the microseconds per bio, for plain and AES-256-XTS 4 KiB
reads and writes through a backend (page cache hot), per storage and hardware profile; then
preads of growing size done inline versus through ``trio.to_thread.run_sync``. Medians, because
the machines are shared: one round disturbed by another process must not decide.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import trio

from fuseblk.bio import Bio
from fuseblk.crypt_context import BioCryptContext
from fuseblk.device import Backend
from fuseblk.hw.factory import create_backend
from fuseblk.hw.profiles import load_profile
from fuseblk.key import BlkCryptoKey


async def per_bio(backend: Backend, label: str, count: int, rounds: int) -> None:
    key = BlkCryptoKey.create("AES-256-XTS", os.urandom(64), 4096, 8)
    buf = bytearray(os.urandom(4096))
    span = backend.size // 4096
    cases: list[tuple[str, Callable[[int], Bio]]] = [
        ("plain write", lambda i: Bio.write(i % span * 4096, buf)),
        ("plain read", lambda i: Bio.read(i % span * 4096, buf)),
        ("xts write", lambda i: Bio.write(i % span * 4096, buf, BioCryptContext.at(key, i))),
        ("xts read", lambda i: Bio.read(i % span * 4096, buf, BioCryptContext.at(key, i))),
    ]
    for name, make in cases:
        for i in range(min(count, span)):  # warm up: allocate blocks, fill the page cache
            await backend.submit(make(i))
        samples = []
        for _ in range(rounds):
            start = time.perf_counter()
            for i in range(count):
                await backend.submit(make(i))
            samples.append((time.perf_counter() - start) / count * 1e6)
        median = statistics.median(samples)
        print(
            f"{label:<16} {name:<12} {median:7.2f} µs/bio  {1e6 / median:9.0f} IOPS"
            f"  (rounds {min(samples):.2f}..{max(samples):.2f})"
        )


async def crossover(path: Path, count: int) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        for size in (4096, 65536, 262144, 1 << 20, 4 << 20):
            buf = bytearray(size)
            start = time.perf_counter()
            for _ in range(count):
                os.preadv(fd, [buf], 0)
            inline = (time.perf_counter() - start) / count * 1e6
            start = time.perf_counter()
            for _ in range(count):
                await trio.to_thread.run_sync(os.preadv, fd, [buf], 0)
            threaded = (time.perf_counter() - start) / count * 1e6
            print(
                f"pread {size >> 10:5} KiB  inline {inline:8.1f} µs  via thread {threaded:8.1f} µs"
            )
    finally:
        os.close(fd)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=5000, help="bios per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--dir", default=None, help="where to put the scratch images")
    parser.add_argument(
        "--storage", action="append", choices=["file", "memory"], help="default: both"
    )
    parser.add_argument("--profile", action="append", help="default: ufs and direct")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for storage in args.storage or ["file", "memory"]:
            for profile in args.profile or ["ufs", "direct"]:
                ref = str(Path(tmp) / f"{profile}.img") if storage == "file" else "memory://"
                backend = create_backend(ref, 64 << 20, load_profile(profile))
                try:
                    await per_bio(backend, f"{storage} {profile}", args.count, args.rounds)
                finally:
                    await backend.close()
        image = Path(tmp) / "crossover.img"
        image.write_bytes(bytes(4 << 20))
        await crossover(image, max(args.count // 25, 20))


if __name__ == "__main__":
    trio.run(main)
