"""NH, Adiantum's fast ε-almost-∆-universal compression, vectorised over many messages.

As in the Adiantum paper and the kernel's nhpoly1305: the message, zero-padded to 16-byte
units, is cut into 1024-byte chunks; each chunk gives four 64-bit sums (four passes with the key
offset by 16 bytes each), ``Σ (m0 + k0)(m2 + k2) + (m1 + k1)(m3 + k3)`` over its 16-byte units,
with 32-bit additions and 64-bit products and sums, all wrapping. The 32-byte results of the
chunks are what Poly1305 then evaluates (see :mod:`fuseblk.ciphers.adiantum`).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

UNIT_BYTES = 16
CHUNK_BYTES = 1024
PASSES = 4
KEY_WORDS = (CHUNK_BYTES + (PASSES - 1) * UNIT_BYTES) // 4  # 268 words, 1072 bytes
KEY_BYTES = KEY_WORDS * 4


class NhKey:
    def __init__(self, raw: bytes) -> None:
        if len(raw) != KEY_BYTES:
            raise ValueError(f"NH key must be {KEY_BYTES} bytes")
        words = np.frombuffer(raw, dtype="<u4").astype(np.uint32)
        # pass p uses key words [4p, 4p + 256): one (64 units, 4 words) slab per pass
        self._slabs = np.stack([words[4 * p : 4 * p + CHUNK_BYTES // 4] for p in range(PASSES)])
        self._slabs = self._slabs.reshape(PASSES, CHUNK_BYTES // UNIT_BYTES, 4)

    def hash(self, messages: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
        """(U, L) messages to (U, chunks·32) NH outputs; L is padded with zeros to 16 bytes."""
        count, length = messages.shape
        padded_len = -(-length // UNIT_BYTES) * UNIT_BYTES
        if padded_len != length:
            padded = np.zeros((count, padded_len), dtype=np.uint8)
            padded[:, :length] = messages
            messages = padded
        full, rest = divmod(padded_len, CHUNK_BYTES)
        parts = []
        if full:
            m = np.ascontiguousarray(messages[:, : full * CHUNK_BYTES]).view("<u4")
            parts.append(self._chunks(m.reshape(count, full, CHUNK_BYTES // UNIT_BYTES, 4)))
        if rest:
            m = np.ascontiguousarray(messages[:, full * CHUNK_BYTES :]).view("<u4")
            parts.append(self._chunks(m.reshape(count, 1, rest // UNIT_BYTES, 4)))
        if not parts:
            return np.zeros((count, 0), dtype=np.uint8)
        sums = np.concatenate(parts, axis=1)  # (U, chunks, 4) uint64
        return np.ascontiguousarray(sums).view(np.uint8).reshape(count, -1)

    def _chunks(self, m: npt.NDArray[np.uint32]) -> npt.NDArray[np.uint64]:
        """(U, C, n, 4) message words to (U, C, 4) sums, n <= 64 units per chunk."""
        units = m.shape[2]
        out = np.empty(m.shape[:2] + (PASSES,), dtype=np.uint64)
        for p in range(PASSES):
            a = (m + self._slabs[p, :units]).astype(np.uint64)  # 32-bit wrap, then widen
            prod = a[..., 0] * a[..., 2] + a[..., 1] * a[..., 3]
            out[..., p] = prod.sum(axis=2, dtype=np.uint64)
        return out
