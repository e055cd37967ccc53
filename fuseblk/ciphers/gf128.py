"""XTS tweak sequences in GF(2^128), computed for many data units at once with NumPy.

XTS (IEEE 1619) encrypts block ``j`` of a data unit with the tweak ``T_j = T_0 · α^j`` where
``T_0 = E_K2(IV)`` and α is the polynomial x modulo x^128 + x^7 + x^2 + x + 1, the 128-bit
value read little-endian. Doing this one block at a time in Python would cost far more than
the AES itself, so :func:`xts_tweaks` produces the whole (units × blocks) table with a fixed
number of whole-array operations. Blocks are taken in groups of ``w`` (32 for every
power-of-two data unit from 512 bytes): block ``w·g + s`` is ``(T_0 · x^(w·g)) · x^s``. The
group bases ``T_0 · x^(w·g)`` are few (a table lookup, multiplying by a constant being linear,
or a few doubling steps), and every ``· x^s`` with s < w <= 57 is one shift by a per-cell
amount plus the reduction of the s bits shifted out of the top, times x^7 + x^2 + x + 1, which
still fits in the low lane.

Tweaks are held as two uint64 lanes, ``[..., 0]`` the low 64 bits and ``[..., 1]`` the high
64 bits, which is the byte layout of the tweak itself on a little-endian machine.
"""

from __future__ import annotations

import sys

import numpy as np
import numpy.typing as npt

from fuseblk.ciphers.workspace import scratch

U64 = npt.NDArray[np.uint64]

if sys.byteorder != "little":  # pragma: no cover - every supported platform is little-endian
    raise ImportError("fuseblk's XTS tweak arithmetic assumes a little-endian machine")

# Shifting by up to 57 bits leaves at most 57 bits to reduce, and their product with
# x^7 + x^2 + x + 1 still fits in the low lane: no carry into the high lane to track.
_MAX_SHIFT_BLOCKS = 57


def _group_width(blocks: int) -> int:
    if blocks <= _MAX_SHIFT_BLOCKS:
        return blocks
    if blocks % 32 == 0:  # every power-of-two data unit from 512 bytes up
        return 32
    return _MAX_SHIFT_BLOCKS


def _times_x(lo: U64, hi: U64, bits: int) -> tuple[U64, U64]:
    """``(lo, hi) · x^bits`` for 0 < bits <= 57, on whole arrays."""
    up = np.uint64(bits)
    back = np.uint64(64 - bits)
    ov = hi >> back
    new_hi = (hi << up) | (lo >> back)
    new_lo = (lo << up) ^ ov ^ (ov << np.uint64(1)) ^ (ov << np.uint64(2)) ^ (ov << np.uint64(7))
    return new_lo, new_hi


def _times_x64(lo: U64, hi: U64) -> tuple[U64, U64]:
    """``(lo, hi) · x^64``: the low lane moves up; hi · x^128 is reduced back in (71 bits)."""
    red_lo = hi ^ (hi << np.uint64(1)) ^ (hi << np.uint64(2)) ^ (hi << np.uint64(7))
    red_hi = (hi >> np.uint64(63)) ^ (hi >> np.uint64(62)) ^ (hi >> np.uint64(57))
    return red_lo, lo ^ red_hi


# The table lookup wins for few units, the doubling steps for many (measured on 4 KiB units:
# equal near 100 units).
_TABLE_MAX_GROUPS = 16
_TABLE_MAX_UNITS = 100
_BASE_TABLES: dict[tuple[int, int], U64] = {}
_MASK128 = (1 << 128) - 1


def _times_x_int(t: int, e: int) -> int:
    """``t · x^e`` on a Python int: shift, then fold the overflow back in until it fits."""
    t <<= e
    while t >> 128:
        ov = t >> 128
        t = (t & _MASK128) ^ ov ^ (ov << 1) ^ (ov << 2) ^ (ov << 7)
    return t


def _base_table(width: int, groups: int) -> U64:
    """(16, 256, groups, 2): byte ``b`` of value ``v`` of T_0, times x^(width·g), as lanes.

    Multiplying by a constant is linear over GF(2), so a base ``T_0 · x^(width·g)`` is the XOR
    of the 16 rows picked by T_0's bytes. Built from the 128 single-bit products.
    """
    table = _BASE_TABLES.get((width, groups))
    if table is not None:
        return table
    bits = np.empty((128, groups, 2), dtype=np.uint64)
    for i in range(128):
        for g in range(groups):
            t = _times_x_int(1 << i, width * g)
            bits[i, g] = (t & ((1 << 64) - 1), t >> 64)
    table = np.zeros((16, 256, groups, 2), dtype=np.uint64)
    for k in range(8):
        lo, hi = 1 << k, 2 << k
        table[:, lo:hi] = table[:, 0 : hi - lo] ^ bits[k::8][:, None]
    _BASE_TABLES[(width, groups)] = table
    return table


def _bases_by_table(first: U64, width: int, groups: int) -> U64:
    table = _base_table(width, groups)
    n = first.shape[0]
    first_bytes = np.ascontiguousarray(first).view(np.uint8).reshape(n, 16)
    picked = table[np.arange(16), first_bytes]  # (n, 16, groups, 2)
    bases = np.bitwise_xor.reduce(picked, axis=1)  # (n, groups, 2)
    return np.ascontiguousarray(np.moveaxis(bases, 2, 0))[..., None]


def _bases_by_doubling(first: U64, width: int, groups: int) -> U64:
    n = first.shape[0]
    base = np.empty((2, n, groups, 1), dtype=np.uint64)
    base[0, :, 0, 0] = first[:, 0]
    base[1, :, 0, 0] = first[:, 1]
    # bases [m, 2m) are bases [0, m) times x^(width·m)
    done = 1
    while done < groups:
        m = min(done, groups - done)
        lo, hi = base[0, :, :m, 0], base[1, :, :m, 0]
        exponent = width * done
        for _ in range(exponent // 64):
            lo, hi = _times_x64(lo, hi)
        exponent %= 64
        while exponent:
            step = min(exponent, _MAX_SHIFT_BLOCKS)
            lo, hi = _times_x(lo, hi, step)
            exponent -= step
        base[0, :, done : done + m, 0] = lo
        base[1, :, done : done + m, 0] = hi
        done += m
    return base


_SHIFTS: dict[int, tuple[U64, U64]] = {}


def _shift_amounts(width: int, cells: int) -> tuple[U64, U64]:
    """``s`` and ``64 - s`` for every cell, s counting 0..width-1 over and over (cached, grown
    as needed: a prefix of whole periods is again whole periods)."""
    cached = _SHIFTS.get(width)
    if cached is None or cached[0].size < cells:
        s = np.tile(np.arange(width, dtype=np.uint64), cells // width)
        # numpy defines shifts by >= 64 as 0: for s == 0, ``lo >> (64 - s)`` is 0 as it must be
        cached = (s, np.uint64(64) - s)
        _SHIFTS[width] = cached
    return cached[0][:cells], cached[1][:cells]


def xts_tweaks(first: U64, blocks: int) -> U64:
    """All tweaks of ``n`` data units: ``first`` is (n, 2) uint64, the result (n, blocks, 2).

    ``result[u, j]`` is ``first[u] · α^j``. The result lives in this thread's scratch space: it
    is valid until the next call.
    """
    n = first.shape[0]
    width = _group_width(blocks)
    groups = -(-blocks // width)
    if groups == 1:
        base = first.T.reshape(2, n, 1, 1)
    elif groups <= _TABLE_MAX_GROUPS and n < _TABLE_MAX_UNITS:
        base = _bases_by_table(first, width, groups)
    else:
        base = _bases_by_doubling(first, width, groups)
    cells = n * groups * width
    # Every operation below runs over contiguous arrays of all cells. Broadcasting the bases
    # against a (width,) vector of shift amounts instead makes NumPy loop over rows of
    # ``width`` elements: three times slower per shift than copying the bases out once
    # (measured with tools/bench_crypto.py and per operation).
    lanes = scratch("gf128.lanes", 2 * cells * 8).view(np.uint64).reshape(2, cells)
    np.copyto(lanes.reshape(2, n, groups, width), base)
    lo, hi = lanes[0], lanes[1]
    s, back = _shift_amounts(width, cells)
    out = scratch("gf128.out", cells * 16).view(np.uint64).reshape(cells, 2)
    ov = scratch("gf128.ov", cells * 8).view(np.uint64)
    tmp = scratch("gf128.tmp", cells * 8).view(np.uint64)
    red = scratch("gf128.red", cells * 8).view(np.uint64)
    # low lane: (lo << s) ^ ov·(x^7 + x^2 + x + 1), ov being the s bits shifted out of hi
    np.right_shift(hi, back, out=ov)
    np.left_shift(lo, s, out=tmp)
    tmp ^= ov
    for bit in (1, 2, 7):
        np.left_shift(ov, np.uint64(bit), out=red)
        tmp ^= red
    out[:, 0] = tmp
    # high lane: (hi << s) | (lo >> (64 - s))
    np.left_shift(hi, s, out=tmp)
    np.right_shift(lo, back, out=ov)
    tmp |= ov
    out[:, 1] = tmp
    return out.reshape(n, groups * width, 2)[:, :blocks]


def mul_alpha_int(t: int, times: int = 1) -> int:
    """Reference: ``t · α^times`` on a Python int (little-endian tweak value), one step at a time."""
    for _ in range(times):
        carry = t >> 127
        t = ((t << 1) & ((1 << 128) - 1)) ^ (0x87 if carry else 0)
    return t
