"""What an inline-encryption engine can do, and the two laws device-mapper builds on.

``intersect`` and ``has_capabilities`` are the small pure functions of block/blk-crypto-profile.c
(``blk_crypto_intersect_capabilities``, ``blk_crypto_has_capabilities``); everything that stacks
devices uses them, nothing re-derives them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from fuseblk.dun import DUN_MAX_BYTES
from fuseblk.key import MAX_DATA_UNIT_SIZE, MIN_DATA_UNIT_SIZE, CryptoConfig, KeyType
from fuseblk.modes import ALL_MODES, CryptoMode

ALL_DATA_UNIT_SIZES = sum(
    1 << b for b in range(MIN_DATA_UNIT_SIZE.bit_length() - 1, MAX_DATA_UNIT_SIZE.bit_length())
)


def dus_mask(*sizes: int) -> int:
    """Bitmask with bit i set for each data unit size 2^i."""
    mask = 0
    for size in sizes:
        if size <= 0 or size & (size - 1):
            raise ValueError(f"data unit size {size} is not a power of two")
        mask |= size
    return mask


def dus_list(mask: int) -> list[int]:
    return [1 << b for b in range(mask.bit_length()) if mask >> b & 1]


@dataclass(frozen=True)
class CryptoCapabilities:
    """``modes_supported[]``, ``max_dun_bytes_supported`` and ``key_types_supported``.

    ``modes`` maps a mode to a bitmask of data unit sizes (bit i set: 2^i bytes supported);
    modes with an empty mask are left out so equality is structural.
    """

    modes: Mapping[CryptoMode, int] = field(default_factory=dict)
    max_dun_bytes: int = 0
    key_types: KeyType = KeyType(0)
    # The last configuration found supported: a stack's bios nearly all carry one key, whose
    # config is one object (BlkCryptoKey.config). Capabilities never change (a changed profile
    # gets new ones), so the answer never goes stale.
    _supported: CryptoConfig | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        cleaned = {m: mask for m, mask in self.modes.items() if mask}
        object.__setattr__(self, "modes", MappingProxyType(cleaned))
        if not cleaned:
            object.__setattr__(self, "max_dun_bytes", 0)
            object.__setattr__(self, "key_types", KeyType(0))

    @classmethod
    def nothing(cls) -> CryptoCapabilities:
        return cls()

    @classmethod
    def everything(cls) -> CryptoCapabilities:
        """The starting point of a DM table's profile before intersecting with its devices."""
        return cls(
            {m: ALL_DATA_UNIT_SIZES for m in ALL_MODES},
            DUN_MAX_BYTES,
            KeyType.RAW | KeyType.HW_WRAPPED,
        )

    @property
    def is_empty(self) -> bool:
        return not self.modes

    def supports(self, config: CryptoConfig) -> bool:
        """``__blk_crypto_cfg_supported``: mode, data unit size, DUN width and key type.

        Runs for every bio at every layer, so the last configuration found supported is
        answered by identity, and the others compare plain ints (IntFlag's ``&`` is slow).
        """
        if config is self._supported:
            return True
        if (
            self.modes.get(config.mode, 0) & config.data_unit_size != 0
            and config.dun_bytes <= self.max_dun_bytes
            and int(self.key_types) & int(config.key_type) != 0
        ):
            object.__setattr__(self, "_supported", config)
            return True
        return False

    def describe(self) -> str:
        if self.is_empty:
            return "none"
        parts = [
            f"{m.sysfs_name}:{','.join(map(str, dus_list(mask)))}" for m, mask in self.modes.items()
        ]
        types = ",".join(t.name.lower() for t in KeyType if t in self.key_types and t.name)
        return f"{' '.join(parts)} max_dun_bytes={self.max_dun_bytes} key_types={types}"

    def to_json(self) -> dict[str, object]:
        return {
            "modes": {m.sysfs_name: dus_list(mask) for m, mask in self.modes.items()},
            "max_dun_bytes": self.max_dun_bytes,
            "key_types": [t.name.lower() for t in KeyType if t in self.key_types and t.name],
        }


def intersect(parent: CryptoCapabilities, child: CryptoCapabilities | None) -> CryptoCapabilities:
    """``blk_crypto_intersect_capabilities``; a missing child profile leaves nothing."""
    if child is None:
        return CryptoCapabilities.nothing()
    modes = {m: parent.modes.get(m, 0) & child.modes.get(m, 0) for m in ALL_MODES}
    return CryptoCapabilities(
        modes,
        min(parent.max_dun_bytes, child.max_dun_bytes),
        parent.key_types & child.key_types,
    )


def has_capabilities(new: CryptoCapabilities, old: CryptoCapabilities) -> bool:
    """``blk_crypto_has_capabilities``: ``new`` supports everything ``old`` does."""
    if old.is_empty:
        return True
    return (
        all(old_mask & ~new.modes.get(m, 0) == 0 for m, old_mask in old.modes.items())
        and new.max_dun_bytes >= old.max_dun_bytes
        and old.key_types & ~new.key_types == KeyType(0)
    )
