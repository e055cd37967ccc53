#!/usr/bin/env python3
"""Throughput of the per-data-unit ciphers (``fuseblk.ciphers.get_cipher``), in MB/s.

For AES-256-XTS at 4096- and 512-byte data units over 1 MiB buffers it prints, from the same
run: the ceiling (one ``cryptography`` AES-XTS call over the whole buffer, i.e. what OpenSSL
does with a single tweak sequence), the naive loop (one ``Cipher`` per data unit), and
fuseblk's path, with the ratios. Then a line per other mode, and the small-request sizes that
decide the per-unit/bulk crossover. Each figure is the median of ``--runs`` timings.

Last, the budget of the 4096-byte path: how many µs per MiB a third of the ceiling allows, and
what the pieces of each possible design cost in the same run. The per-unit design needs at least
one ``cryptography`` call per data unit and a fresh context per tweak (``cryptography`` cannot
change an XTS tweak on a live context); the bulk design needs the AES pass, two XORs and the
tweak table. These are floors: each is measured with its other costs left out.

    .venv/bin/python tools/bench_crypto.py [--runs 15] [--size 1048576]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from fuseblk.ciphers import get_cipher
from fuseblk.ciphers.gf128 import xts_tweaks
from fuseblk.dun import dun_iv
from fuseblk.key import BlkCryptoKey
from fuseblk.modes import CryptoMode


def mb_per_s(fn: Callable[[], object], nbytes: int, runs: int) -> float:
    return nbytes / median_us(fn, runs)  # bytes per µs is MB/s


def median_us(fn: Callable[[], object], runs: int) -> float:
    fn()  # warm up: key tables, scratch buffers
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


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
    budget(raw, data, dun, runs)


def budget(raw: bytes, data: bytes, dun: int, runs: int) -> None:
    """Floors of the two designs for 4096-byte data units, against a third of the ceiling."""
    dus = 4096
    size = len(data)
    units = size // dus
    out = bytearray(size + 16)
    alg = algorithms.AES(raw)
    ceiling = median_us(
        lambda: Cipher(alg, modes.XTS(dun_iv(dun, 16))).encryptor().update(data), runs
    )
    cipher = get_cipher(BlkCryptoKey.create(CryptoMode.AES_256_XTS, raw, dus))
    ours = median_us(lambda: cipher.encrypt(data, dun), runs)

    # per-unit design: the calls alone (one context, its tweak never changed: wrong ciphertext)
    ctx = Cipher(alg, modes.XTS(dun_iv(dun, 16))).encryptor()
    src, dst = memoryview(data), memoryview(out)
    pieces = [(src[i : i + dus], dst[i : i + dus + 16]) for i in range(0, size, dus)]

    def calls_only() -> None:
        for piece_in, piece_out in pieces:
            ctx.update_into(piece_in, piece_out)

    calls = median_us(calls_only, runs)
    ivs = [dun_iv(dun + u, 16) for u in range(units)]

    def contexts_only() -> None:
        for iv in ivs:
            Cipher(alg, modes.XTS(iv)).encryptor()

    contexts = median_us(contexts_only, runs)

    # bulk design: the AES pass and both XORs with the tweaks already there, then the tweaks
    plain = np.frombuffer(data, dtype=np.uint64)
    tweak_table = np.frombuffer(os.urandom(size), dtype=np.uint64)
    pre = np.empty_like(plain)
    post = np.empty(plain.size + 2, dtype=np.uint64)
    result = np.empty_like(plain)

    def aes_and_xors() -> None:
        np.bitwise_xor(plain, tweak_table, out=pre)
        ctx.update_into(pre.view(np.uint8).data, post.view(np.uint8).data)
        np.bitwise_xor(post[: plain.size], tweak_table, out=result)

    bulk_rest = median_us(aes_and_xors, runs)
    first = np.frombuffer(os.urandom(units * 16), dtype=np.uint64).reshape(units, 2)
    tweaks = median_us(lambda: xts_tweaks(first, dus // 16), runs)

    allowed = 3 * ceiling
    print(f"budget, dus 4096, µs per {size} bytes (median of {runs}):")
    print(f"  ceiling, one call                          {ceiling:8.0f}")
    print(f"  a third of the ceiling allows              {allowed:8.0f}")
    print(
        f"  fuseblk get_cipher                         {ours:8.0f}   ({ceiling / ours:.3f} of ceiling)"
    )
    print(f"  per-unit floor: {units} update_into calls    {calls:8.0f}")
    print(f"  per-unit floor: {units} new XTS contexts     {contexts:8.0f}")
    print(f"  per-unit floor, both                       {calls + contexts:8.0f}")
    print(f"  bulk floor: AES pass and two XORs          {bulk_rest:8.0f}")
    print(f"  bulk: tweak table (xts_tweaks)             {tweaks:8.0f}")
    print(f"  bulk floor, both                           {bulk_rest + tweaks:8.0f}")


if __name__ == "__main__":
    main()
