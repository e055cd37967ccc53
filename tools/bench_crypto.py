#!/usr/bin/env python3
"""Throughput of the per-data-unit ciphers (``fuseblk.ciphers.get_cipher``), in MB/s.

For AES-256-XTS at 4096- and 512-byte data units over 1 MiB buffers it prints, from the same
run: the ceiling (one ``cryptography`` AES-XTS call over the whole buffer, i.e. what OpenSSL
does with a single tweak sequence), the naive loop (one ``Cipher`` per data unit), and
fuseblk's path, with the ratios. Then a line per other mode, and the small-request sizes that
decide the per-unit/bulk crossover. Each figure is the median of ``--runs`` timings.

    .venv/bin/python tools/bench_crypto.py [--runs 15] [--size 1048576]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from fuseblk.ciphers import get_cipher
from fuseblk.dun import dun_iv
from fuseblk.key import BlkCryptoKey
from fuseblk.modes import CryptoMode


def mb_per_s(fn: Callable[[], object], nbytes: int, runs: int) -> float:
    fn()  # warm up: key tables, scratch buffers
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return nbytes / statistics.median(times) / 1e6


def naive_xts(raw: bytes, data: bytes, dun: int, dus: int, encrypt: bool) -> bytearray:
    """One cryptography XTS Cipher per data unit: the obvious implementation."""
    alg = algorithms.AES(raw)
    out = bytearray(len(data))
    for i in range(0, len(data), dus):
        c = Cipher(alg, modes.XTS(dun_iv(dun + i // dus, 16)))
        ctx = c.encryptor() if encrypt else c.decryptor()
        out[i : i + dus] = ctx.update(data[i : i + dus])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--size", type=int, default=1 << 20)
    args = parser.parse_args()
    size, runs = args.size, args.runs
    data = os.urandom(size)
    raw = os.urandom(64)
    dun = 123456

    def ceiling_enc() -> bytes:
        return Cipher(algorithms.AES(raw), modes.XTS(dun_iv(dun, 16))).encryptor().update(data)

    def ceiling_dec() -> bytes:
        return Cipher(algorithms.AES(raw), modes.XTS(dun_iv(dun, 16))).decryptor().update(data)

    ceil_e = mb_per_s(ceiling_enc, size, runs)
    ceil_d = mb_per_s(ceiling_dec, size, runs)
    print(f"buffer {size} bytes, median of {runs} runs, MB/s")
    print(f"ceiling  AES-256-XTS one call over the buffer   enc {ceil_e:8.0f}   dec {ceil_d:8.0f}")
    for dus in (4096, 512):
        cipher = get_cipher(BlkCryptoKey.create(CryptoMode.AES_256_XTS, raw, dus))
        naive_e = mb_per_s(lambda d=dus: naive_xts(raw, data, dun, d, True), size, runs)
        naive_d = mb_per_s(lambda d=dus: naive_xts(raw, data, dun, d, False), size, runs)
        ours_e = mb_per_s(lambda c=cipher: c.encrypt(data, dun), size, runs)
        ours_d = mb_per_s(lambda c=cipher: c.decrypt(data, dun), size, runs)
        print(
            f"dus {dus:5d} naive one Cipher per unit         enc {naive_e:8.0f}   dec {naive_d:8.0f}"
            f"   ({naive_e / ceil_e:.3f} / {naive_d / ceil_d:.3f} of ceiling)"
        )
        print(
            f"dus {dus:5d} fuseblk get_cipher                enc {ours_e:8.0f}   dec {ours_d:8.0f}"
            f"   ({ours_e / ceil_e:.3f} / {ours_d / ceil_d:.3f} of ceiling,"
            f" {ours_e / naive_e:.1f}x / {ours_d / naive_d:.1f}x naive)"
        )
    print("other modes (fuseblk get_cipher):")
    for mode in (CryptoMode.SM4_XTS, CryptoMode.AES_128_CBC_ESSIV, CryptoMode.ADIANTUM):
        for dus in (4096, 512):
            cipher = get_cipher(BlkCryptoKey.create(mode, os.urandom(mode.key_size), dus))
            enc = mb_per_s(lambda c=cipher: c.encrypt(data, dun), size, max(3, runs // 3))
            dec = mb_per_s(lambda c=cipher: c.decrypt(data, dun), size, max(3, runs // 3))
            print(f"{mode.sysfs_name:18s} dus {dus:5d}             enc {enc:8.0f}   dec {dec:8.0f}")
    print("AES-256-XTS small requests, dus 4096 (per-unit vs bulk crossover):")
    cipher = get_cipher(BlkCryptoKey.create(CryptoMode.AES_256_XTS, raw, 4096))
    for units in (1, 2, 4, 8, 16, 32):
        piece = data[: 4096 * units]
        ours = mb_per_s(lambda p=piece: cipher.encrypt(p, dun), len(piece), runs * 10)
        naive = mb_per_s(lambda p=piece: naive_xts(raw, p, dun, 4096, True), len(piece), runs * 10)
        print(f"  {units:3d} units   fuseblk {ours:8.0f}   naive {naive:8.0f}")


if __name__ == "__main__":
    main()
