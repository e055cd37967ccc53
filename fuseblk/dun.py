"""Data unit numbers: 256-bit counters held as four little-endian 64-bit limbs.

The kernel keeps ``u64 bc_dun[4]`` with ``dun[0]`` least significant; advancing carries from
limb to limb and the top limb wraps. We hold the same value as a tuple of four ints so the
representation matches the kernel's, and convert to a Python int where arithmetic is easier.
"""

from __future__ import annotations

DUN_LIMBS = 4
DUN_BITS = 64 * DUN_LIMBS
DUN_MAX_BYTES = DUN_BITS // 8  # 32
_MASK64 = (1 << 64) - 1
_MOD = 1 << DUN_BITS

Dun = tuple[int, int, int, int]


def dun_from_int(value: int) -> Dun:
    """The limbs of ``value`` modulo 2^256 (so negative or huge values wrap like u64 arithmetic)."""
    value %= _MOD
    return (
        value & _MASK64,
        (value >> 64) & _MASK64,
        (value >> 128) & _MASK64,
        (value >> 192) & _MASK64,
    )


def dun_to_int(dun: Dun) -> int:
    return dun[0] | (dun[1] << 64) | (dun[2] << 128) | (dun[3] << 192)


def dun_advance(dun: Dun, units: int) -> Dun:
    """``bio_crypt_dun_increment``: add ``units`` with carry between limbs; the top limb wraps."""
    return dun_from_int(dun_to_int(dun) + units)


def dun_iv(dun: int, iv_size: int) -> bytes:
    """The IV for one data unit: the DUN's little-endian bytes, truncated (or zero-padded) to iv_size."""
    return (dun % _MOD).to_bytes(DUN_MAX_BYTES, "little")[:iv_size]


def dun_bytes_needed(dun: int) -> int:
    """How many bytes the DUN's value needs; compared with a key's ``dun_bytes``."""
    return (dun.bit_length() + 7) // 8
