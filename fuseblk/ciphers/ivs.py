"""The IVs of a run of consecutive data units, as 64-bit lanes, for one-call bulk crypto.

Data unit ``i`` of a request uses DUN ``dun + i``; its IV is that number's little-endian bytes
truncated to the mode's IV size (:func:`fuseblk.dun.dun_iv`), i.e. the DUN modulo
2^(8·iv_size). Lane 0 just counts up; the lanes above change at most once in a run shorter than
2^64 (where lane 0 wraps), so they are filled from two Python ints instead of a carry chain.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

_MASK64 = (1 << 64) - 1


def dun_ivs(dun: int, count: int, iv_size: int) -> npt.NDArray[np.uint64]:
    """(count, iv_size // 8) uint64: row i holds the IV of DUN ``dun + i``, lane 0 lowest."""
    lanes = iv_size // 8
    modulus = 1 << (8 * iv_size)
    start = dun % modulus
    out = np.empty((count, lanes), dtype=np.uint64)
    low = start & _MASK64
    out[:, 0] = np.arange(count, dtype=np.uint64) + np.uint64(low)  # wraps modulo 2^64
    if lanes > 1:
        before = start >> 64
        after = (before + 1) % (modulus >> 64)
        wrap_at = min(count, (1 << 64) - low)
        for lane in range(1, lanes):
            shift = 64 * (lane - 1)
            out[:wrap_at, lane] = (before >> shift) & _MASK64
            out[wrap_at:, lane] = (after >> shift) & _MASK64
    return out
