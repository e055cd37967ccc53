"""Per-bio cost of a Backend, and the inline-versus-thread crossover behind INLINE_IO_MAX.

    .venv/bin/python tools/bench_backend.py [--count N] [--dir DIR]

Prints microseconds per bio for plain and AES-256-XTS 4 KiB reads and writes (page cache hot),
and for preads of growing size done inline versus through ``trio.to_thread.run_sync``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import trio

from fuseblk.bio import Bio
from fuseblk.crypt_context import BioCryptContext
from fuseblk.hw.backend import Backend
from fuseblk.hw.profiles import load_profile
from fuseblk.key import BlkCryptoKey


async def per_bio(backend: Backend, count: int) -> None:
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
        start = time.perf_counter()
        for i in range(count):
            await backend.submit(make(i))
        micros = (time.perf_counter() - start) / count * 1e6
        print(f"{name:<12} {micros:7.1f} µs/bio  {1e6 / micros:9.0f} IOPS")


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
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--dir", default=None, help="where to put the scratch image")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "bench.img"
        backend = Backend.create(path, 64 << 20, load_profile("ufs"))
        try:
            await per_bio(backend, args.count)
        finally:
            await backend.close()
        await crossover(path, max(args.count // 25, 20))


if __name__ == "__main__":
    trio.run(main)
