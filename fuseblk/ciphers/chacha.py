"""ChaCha with any number of rounds, HChaCha and XChaCha, vectorised over many blocks with NumPy.

Adiantum needs XChaCha12; ``cryptography`` only offers 20-round ChaCha, so the permutation is
written here, over a (16, N) uint32 state: one column of N independent blocks per word. Every
block of every data unit of a request goes through the rounds together, so the Python overhead
is a few hundred array operations per request, not per block. The same code with 20 rounds is
checked against ``cryptography``'s ChaCha20 in the tests.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

U32 = npt.NDArray[np.uint32]

SIGMA = np.frombuffer(b"expand 32-byte k", dtype="<u4").astype(np.uint32)
BLOCK_BYTES = 64


def _rotl(v: U32, r: int, tmp: U32) -> None:
    np.right_shift(v, np.uint32(32 - r), out=tmp)
    np.left_shift(v, np.uint32(r), out=v)
    v |= tmp


def _quarter_rounds(a: U32, b: U32, c: U32, d: U32, tmp: U32) -> None:
    """Four quarter-rounds at once: row i of (a, b, c, d) is one (a, b, c, d) quadruple."""
    a += b
    d ^= a
    _rotl(d, 16, tmp)
    c += d
    b ^= c
    _rotl(b, 12, tmp)
    a += b
    d ^= a
    _rotl(d, 8, tmp)
    c += d
    b ^= c
    _rotl(b, 7, tmp)


def permute(state: U32, rounds: int) -> U32:
    """The ChaCha permutation (no feed-forward) of each column of a (16, N) uint32 state."""
    a, b, c, d = (state[4 * i : 4 * i + 4].copy() for i in range(4))
    tmp = np.empty_like(a)
    for _ in range(rounds // 2):
        _quarter_rounds(a, b, c, d, tmp)  # columns
        # diagonals: rotate rows so that (0,5,10,15), (1,6,11,12), ... line up as columns
        b, c, d = np.roll(b, -1, axis=0), np.roll(c, -2, axis=0), np.roll(d, -3, axis=0)
        _quarter_rounds(a, b, c, d, tmp)
        b, c, d = np.roll(b, 1, axis=0), np.roll(c, 2, axis=0), np.roll(d, 3, axis=0)
    return np.concatenate([a, b, c, d])


def keystream(key: U32, counter_nonce: U32, blocks: int, rounds: int) -> npt.NDArray[np.uint8]:
    """ChaCha keystream of ``blocks`` 64-byte blocks for each of U streams, as (U, blocks·64).

    ``key`` is (U, 8) words; ``counter_nonce`` is (U, 4), the state's words 12..15 for block 0
    (the 64-bit block counter in words 12-13 then advances, as in the original ChaCha).
    """
    streams = key.shape[0]
    state = np.empty((16, streams, blocks), dtype=np.uint32)
    state[0:4] = SIGMA[:, None, None]
    state[4:12] = key.T[:, :, None]
    counter = counter_nonce[:, 0].astype(np.uint64) | (counter_nonce[:, 1].astype(np.uint64) << 32)
    counters: npt.NDArray[np.uint64] = (
        counter[:, None] + np.arange(blocks, dtype=np.uint64)
    ).astype(np.uint64)
    state[12] = counters.astype(np.uint32)
    state[13] = (counters >> np.uint64(32)).astype(np.uint32)
    state[14:16] = counter_nonce[:, 2:4].T[:, :, None]
    flat = state.reshape(16, streams * blocks)
    out = permute(flat, rounds)
    out += flat
    # word w of block (u, b) is out[w, u*blocks + b]: transpose to bytes in stream order
    return np.ascontiguousarray(out.T).view(np.uint8).reshape(streams, blocks * BLOCK_BYTES)


def hchacha(key: U32, nonce: U32, rounds: int) -> U32:
    """HChaCha: (U, 8) keys and (U, 4) 16-byte nonces to (U, 8) subkeys (words 0-3, 12-15)."""
    streams = key.shape[0]
    state = np.empty((16, streams), dtype=np.uint32)
    state[0:4] = SIGMA[:, None]
    state[4:12] = key.T
    state[12:16] = nonce.T
    out = permute(state, rounds)
    return np.ascontiguousarray(np.concatenate([out[0:4], out[12:16]]).T)


def xchacha_keystream(
    key: U32, nonce24: npt.NDArray[np.uint8], nbytes: int, rounds: int
) -> npt.NDArray[np.uint8]:
    """XChaCha keystream, (U, nbytes), for (U, 8) keys and (U, 24) nonces; counter from 0."""
    streams = key.shape[0]
    words = np.ascontiguousarray(nonce24).view("<u4").astype(np.uint32).reshape(streams, 6)
    subkey = hchacha(key, words[:, 0:4], rounds)
    counter_nonce = np.zeros((streams, 4), dtype=np.uint32)
    counter_nonce[:, 2:4] = words[:, 4:6]
    blocks = -(-nbytes // BLOCK_BYTES)
    return keystream(subkey, counter_nonce, blocks, rounds)[:, :nbytes]


def key_words(raw: bytes) -> U32:
    """A 32-byte key as (1, 8) little-endian words."""
    return np.frombuffer(raw, dtype="<u4").astype(np.uint32).reshape(1, 8)
