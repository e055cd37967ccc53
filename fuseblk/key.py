"""Inline-encryption keys (``struct blk_crypto_key``): validated once, named by an identifier.

A key is its configuration (mode, data unit size, DUN width, key type) plus its bytes: the raw
key, or for a hardware-wrapped key the ephemerally-wrapped blob that only its hardware can
unwrap (``blk_crypto_init_key`` takes either the same way). The bytes never leave this object
except to a cipher or to the hardware: ``repr``/``str`` show the identifier, a
16-byte one-way value derived with HKDF-SHA512 the way fscrypt derives its key identifiers, so
tables, logs, images and errors can name a key without revealing it.
"""

from __future__ import annotations

import enum
import hmac
from dataclasses import dataclass, field
from hashlib import sha512

from fuseblk.dun import DUN_MAX_BYTES
from fuseblk.errors import einval
from fuseblk.modes import CryptoMode

KEY_IDENTIFIER_SIZE = 16
MIN_DATA_UNIT_SIZE = 16  # one cipher block: smaller cannot be encrypted by any mode
MAX_DATA_UNIT_SIZE = 1 << 16
MAX_HW_WRAPPED_KEY_SIZE = 128  # BLK_CRYPTO_MAX_HW_WRAPPED_KEY_SIZE
# ``security_strength`` of blk_crypto_modes[]: the shortest hardware-wrapped key of each mode.
SECURITY_STRENGTH = {
    CryptoMode.AES_256_XTS: 32,
    CryptoMode.AES_128_CBC_ESSIV: 16,
    CryptoMode.ADIANTUM: 32,
    CryptoMode.SM4_XTS: 16,
}
_HKDF_INFO = b"fuseblk\x00\x01"  # like fscrypt's "fscrypt\0" + HKDF_CONTEXT_KEY_IDENTIFIER


class KeyType(enum.IntFlag):
    """``enum blk_crypto_key_type``; profiles advertise a bitmask of these."""

    RAW = 1
    HW_WRAPPED = 2


def key_identifier(raw: bytes) -> bytes:
    """HKDF-SHA512(raw, salt=none, info=_HKDF_INFO), 16 bytes: one-way, stable, safe to print."""
    prk = hmac.new(b"\x00" * sha512().digest_size, raw, sha512).digest()
    return hmac.new(prk, _HKDF_INFO + b"\x01", sha512).digest()[:KEY_IDENTIFIER_SIZE]


@dataclass(frozen=True)
class CryptoConfig:
    """``struct blk_crypto_config``: what a key needs from hardware, without the key."""

    mode: CryptoMode
    data_unit_size: int
    dun_bytes: int
    key_type: KeyType = KeyType.RAW


@dataclass(frozen=True, eq=True)
class BlkCryptoKey:
    """A validated key. Equal keys (same bytes and configuration) share keyslots."""

    mode: CryptoMode
    raw: bytes = field(repr=False)
    data_unit_size: int
    dun_bytes: int
    key_type: KeyType = KeyType.RAW
    identifier: bytes = field(init=False, repr=False, compare=False)
    # Derived once: every layer asks for it on every bio (capability checks are the hot path).
    config: CryptoConfig = field(init=False, repr=False, compare=False)
    _hash: int = field(init=False, repr=False, compare=False)  # keyslot lookups hash every bio

    def __post_init__(self) -> None:
        validate_key(self.mode, self.raw, self.data_unit_size, self.dun_bytes, self.key_type)
        object.__setattr__(self, "identifier", key_identifier(self.raw))
        object.__setattr__(
            self,
            "config",
            CryptoConfig(self.mode, self.data_unit_size, self.dun_bytes, self.key_type),
        )
        object.__setattr__(
            self, "_hash", hash((self.mode, self.identifier, self.data_unit_size, self.dun_bytes))
        )

    @classmethod
    def create(
        cls,
        mode: CryptoMode | str,
        raw: bytes,
        data_unit_size: int,
        dun_bytes: int | None = None,
        key_type: KeyType = KeyType.RAW,
    ) -> BlkCryptoKey:
        """``blk_crypto_init_key``; ``dun_bytes`` defaults to the mode's IV size."""
        if isinstance(mode, str):
            mode = CryptoMode.parse(mode)
        if dun_bytes is None:  # only None means "default": 0 is invalid (EINVAL), not defaulted
            dun_bytes = mode.iv_size
        return cls(mode, bytes(raw), data_unit_size, dun_bytes, key_type)

    @property
    def key_id(self) -> str:
        """The identifier in hex: how tables, logs and images name this key."""
        return self.identifier.hex()

    def __repr__(self) -> str:
        wrapped = ", hw_wrapped" if self.key_type == KeyType.HW_WRAPPED else ""
        return (
            f"BlkCryptoKey({self.mode.sysfs_name}, id={self.key_id}, "
            f"dus={self.data_unit_size}, dun_bytes={self.dun_bytes}{wrapped})"
        )

    __str__ = __repr__

    def __hash__(self) -> int:
        return self._hash


def validate_key(
    mode: CryptoMode, raw: bytes, data_unit_size: int, dun_bytes: int, key_type: KeyType
) -> None:
    """The kernel's EINVAL cases, with messages that never include key bytes."""
    if not isinstance(mode, CryptoMode):
        raise einval(f"unknown crypto mode {mode!r}")
    if key_type not in (KeyType.RAW, KeyType.HW_WRAPPED):
        raise einval(f"unknown key type {key_type!r}")
    if key_type == KeyType.RAW and len(raw) != mode.key_size:
        raise einval(f"{mode.sysfs_name} needs a {mode.key_size}-byte key, got {len(raw)} bytes")
    if key_type == KeyType.HW_WRAPPED:
        shortest = SECURITY_STRENGTH[mode]
        if not shortest <= len(raw) <= MAX_HW_WRAPPED_KEY_SIZE:
            raise einval(
                f"a hardware-wrapped {mode.sysfs_name} key is {shortest}.."
                f"{MAX_HW_WRAPPED_KEY_SIZE} bytes, got {len(raw)} bytes"
            )
    if dun_bytes <= 0 or dun_bytes > mode.iv_size or dun_bytes > DUN_MAX_BYTES:
        raise einval(f"dun_bytes must be 1..{mode.iv_size} for {mode.sysfs_name}, got {dun_bytes}")
    if data_unit_size <= 0 or data_unit_size & (data_unit_size - 1):
        raise einval(f"data unit size must be a power of two, got {data_unit_size}")
    if not MIN_DATA_UNIT_SIZE <= data_unit_size <= MAX_DATA_UNIT_SIZE:
        raise einval(
            f"data unit size must be {MIN_DATA_UNIT_SIZE}..{MAX_DATA_UNIT_SIZE}, got {data_unit_size}"
        )
