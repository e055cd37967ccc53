"""The inline-encryption modes blk-crypto knows, with the kernel's sizes and sysfs names.

Mirrors ``blk_crypto_modes[]`` in block/blk-crypto.c: each mode fixes the key size and the IV
size; the IV is formed from the DUN (see :mod:`fuseblk.dun`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from fuseblk.errors import einval


@dataclass(frozen=True)
class ModeInfo:
    sysfs_name: str  # as in /sys/block/*/queue/crypto/modes/
    key_size: int  # bytes of raw key
    iv_size: int  # bytes of IV; the DUN is truncated to this


class CryptoMode(enum.Enum):
    """``enum blk_crypto_mode_num``; the value is the on-disk/wire number (never reorder)."""

    AES_256_XTS = 1
    AES_128_CBC_ESSIV = 2
    ADIANTUM = 3
    SM4_XTS = 4

    @property
    def info(self) -> ModeInfo:
        return _INFO[self]

    @property
    def sysfs_name(self) -> str:
        return _INFO[self].sysfs_name

    @property
    def key_size(self) -> int:
        return _INFO[self].key_size

    @property
    def iv_size(self) -> int:
        return _INFO[self].iv_size

    def __str__(self) -> str:
        return self.sysfs_name

    @classmethod
    def parse(cls, name: str) -> CryptoMode:
        """Look a mode up by its sysfs name (case-insensitive) or enum name; EINVAL otherwise."""
        wanted = name.strip().lower().replace("_", "-")
        for mode, info in _INFO.items():
            if wanted in (info.sysfs_name.lower(), mode.name.lower().replace("_", "-")):
                return mode
        names = ", ".join(i.sysfs_name for i in _INFO.values())
        raise einval(f"unknown crypto mode {name!r} (known: {names})")


_INFO = {
    CryptoMode.AES_256_XTS: ModeInfo("AES-256-XTS", 64, 16),
    CryptoMode.AES_128_CBC_ESSIV: ModeInfo("AES-128-CBC-ESSIV", 16, 16),
    CryptoMode.ADIANTUM: ModeInfo("Adiantum", 32, 32),
    CryptoMode.SM4_XTS: ModeInfo("SM4-XTS", 32, 16),
}

ALL_MODES: tuple[CryptoMode, ...] = tuple(CryptoMode)
