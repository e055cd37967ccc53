"""Hardware profiles: what an emulated inline-encryption controller offers, read from TOML.

A profile says which kind of engine the backend image emulates and what it can do:

* ``keyslots`` — a keyslot-based engine (UFS, eMMC CQHCI): keys are programmed into a fixed number
  of slots and each request names a slot;
* ``direct`` — an engine that takes the encryption context with every request and has no slots
  (the kernel models it as a profile with ``num_slots == 0``);
* ``none`` — no inline encryption at all: contexts must be handled above it (software fallback).

Profiles are data, not code: one small TOML file each in the source tree's ``backends/`` folder,
installed to ``<prefix>/share/fuseblk/backends``. A profile can also be given as a file path, and
command-line flags can build one from scratch.

Every number that sizes something is bounded: a ``keyslots`` engine has 1..MAX_KEYSLOTS slots
(each one a keyslot the profile allocates and a row of the image header), DUNs are
1..DUN_MAX_BYTES bytes, and data unit sizes are powers of two a key can have
(MIN_DATA_UNIT_SIZE..MAX_DATA_UNIT_SIZE).
"""

from __future__ import annotations

import enum
import sys
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fuseblk.capabilities import CryptoCapabilities, dus_mask
from fuseblk.dun import DUN_MAX_BYTES
from fuseblk.errors import FuseblkError, einval
from fuseblk.inputfile import read_input_text
from fuseblk.key import MAX_DATA_UNIT_SIZE, MIN_DATA_UNIT_SIZE, KeyType
from fuseblk.modes import CryptoMode
from fuseblk.numbers import parse_int

MAX_KEYSLOTS = 255  # UFSHCI's CFGC and CQHCI's CCAP count fit a byte; so does our header table


class HardwareKind(enum.Enum):
    """The engine's shape; the value is the on-disk number (never reorder)."""

    NONE = 0
    KEYSLOTS = 1
    DIRECT = 2

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> HardwareKind:
        for kind in cls:
            if kind.label == text.strip().lower():
                return kind
        known = ", ".join(k.label for k in cls)
        raise einval(f"unknown hardware kind {text!r} (known: {known})")


@dataclass(frozen=True)
class HardwareProfile:
    """An emulated controller: its kind, keyslot count and capabilities.

    The invariants mirror the kernel's profiles: ``none`` advertises nothing and has no slots,
    ``direct`` has capabilities but no slots, ``keyslots`` has both.
    """

    kind: HardwareKind
    num_slots: int
    caps: CryptoCapabilities
    name: str = field(default="", compare=False)
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.kind is HardwareKind.NONE:
            if self.num_slots or not self.caps.is_empty:
                raise einval("hardware kind 'none' takes no keyslots and no modes")
        elif self.caps.is_empty:
            raise einval(f"hardware kind {self.kind.label!r} needs at least one mode")
        if self.kind is HardwareKind.DIRECT and self.num_slots:
            raise einval("hardware kind 'direct' has no keyslots")
        if self.kind is HardwareKind.KEYSLOTS and not 1 <= self.num_slots <= MAX_KEYSLOTS:
            raise einval(f"keyslot count must be 1..{MAX_KEYSLOTS}, got {self.num_slots}")
        dun = self.caps.max_dun_bytes
        if self.kind is not HardwareKind.NONE and not 1 <= dun <= DUN_MAX_BYTES:
            # a DUN is at most BLK_CRYPTO_MAX_IV_SIZE bytes; 0 would support no key at all
            raise einval(f"max_dun_bytes must be 1..{DUN_MAX_BYTES}, got {dun}")

    @classmethod
    def none(cls) -> HardwareProfile:
        return cls(HardwareKind.NONE, 0, CryptoCapabilities.nothing(), name="none")

    def describe(self) -> str:
        slots = f" {self.num_slots} slots" if self.kind is HardwareKind.KEYSLOTS else ""
        return f"{self.kind.label}{slots}: {self.caps.describe()}"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind.label, "keyslots": self.num_slots, **self.caps.to_json()}


def profile_dirs() -> list[Path]:
    """Where named profiles live: the source tree first (development), then the installed copy."""
    return [
        Path(__file__).resolve().parents[2] / "backends",
        Path(sys.prefix) / "share" / "fuseblk" / "backends",
    ]


def available_profiles() -> dict[str, Path]:
    """Profile name → file, the first directory in :func:`profile_dirs` winning."""
    found: dict[str, Path] = {}
    for directory in profile_dirs():
        if directory.is_dir():
            for path in sorted(directory.glob("*.toml")):
                found.setdefault(path.stem, path)
    return found


def is_profile_path(text: str) -> bool:
    """Whether ``--profile``/``profile =`` names a file rather than an installed profile."""
    return "/" in text or text.endswith(".toml")


def load_profile(name_or_path: str | Path) -> HardwareProfile:
    """A profile by name (``ufs``) or by file path (see :func:`is_profile_path`)."""
    text = str(name_or_path)
    if is_profile_path(text):
        path = Path(text)
    else:
        profiles = available_profiles()
        if text not in profiles:
            known = ", ".join(sorted(profiles)) or "none installed"
            raise einval(f"unknown hardware profile {text!r} (known: {known})")
        path = profiles[text]
    try:
        data = tomllib.loads(read_input_text(path))  # not UTF-8, a FIFO: one clear error
    except FuseblkError as exc:
        raise einval(f"cannot read hardware profile {exc.message}") from exc
    except (ValueError, RecursionError) as exc:  # TOMLDecodeError, 4301 digits, deep nesting
        raise einval(f"hardware profile {path} is not valid TOML: {exc}") from exc
    return parse_profile(data, source=str(path), default_name=path.stem)


def parse_profile(
    data: dict[str, Any], source: str = "<profile>", default_name: str = ""
) -> HardwareProfile:
    """Validate a profile's TOML table; errors name the file and the field."""
    known = {"name", "description", "kind", "keyslots", "max_dun_bytes", "key_types", "modes"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise einval(f"{source}: unknown field(s) {', '.join(unknown)}")
    try:
        kind = HardwareKind.parse(str(data.get("kind", "keyslots")))
        modes = {
            CryptoMode.parse(name): data_unit_sizes_mask(int(s) for s in sizes)
            for name, sizes in dict(data.get("modes", {})).items()
        }
        key_types = KeyType(0)
        for name in data.get("key_types", ["raw"] if modes else []):
            key_types |= _parse_key_type(str(name))
        caps = CryptoCapabilities(modes, int(data.get("max_dun_bytes", 0)), key_types)
        return HardwareProfile(
            kind,
            int(data.get("keyslots", 0)),
            caps,
            name=str(data.get("name", default_name)),
            description=str(data.get("description", "")),
        )
    except (TypeError, ValueError) as exc:
        raise einval(f"{source}: {exc}") from exc
    except FuseblkError as exc:
        raise einval(f"{source}: {exc.message}") from exc


def parse_key_types(names: Iterable[str]) -> KeyType:
    """``raw,hw_wrapped`` as ``--key-types`` and a profile's ``key_types`` list name them."""
    key_types = KeyType(0)
    for name in names:
        key_types |= _parse_key_type(name)
    if not key_types:
        raise einval("key types: name at least one (raw, hw_wrapped)")
    return key_types


def _parse_key_type(name: str) -> KeyType:
    wanted = name.strip().lower().replace("-", "_")
    for key_type in KeyType:
        if key_type.name and key_type.name.lower() == wanted:
            return key_type
    raise einval(f"unknown key type {name!r} (known: raw, hw_wrapped)")


def parse_mode_spec(spec: str) -> tuple[CryptoMode, int]:
    """``AES-256-XTS:512,4096`` → (mode, data-unit-size bitmask), as ``--mode`` takes it."""
    name, sep, sizes = spec.partition(":")
    if not sep or not sizes.strip():
        raise einval(f"--mode expects MODE:DUS[,DUS...], got {spec!r}")
    mode = CryptoMode.parse(name)
    try:
        mask = data_unit_sizes_mask(parse_int(s, "data unit size") for s in sizes.split(","))
    except ValueError as exc:
        raise einval(f"--mode {spec!r}: {exc}") from exc
    except FuseblkError as exc:  # not ASCII digits (fuseblk.numbers)
        raise einval(f"--mode {spec!r}: {exc.message}") from exc
    return mode, mask


def data_unit_sizes_mask(sizes: Iterable[int]) -> int:
    """The capability bitmask of ``sizes``; ValueError unless each is a power of two that a key
    can have (a larger one could not even be recorded in an image header)."""
    sizes = list(sizes)
    mask = dus_mask(*sizes)
    for size in sizes:
        if not MIN_DATA_UNIT_SIZE <= size <= MAX_DATA_UNIT_SIZE:
            raise ValueError(
                f"data unit size {size} is not in {MIN_DATA_UNIT_SIZE}..{MAX_DATA_UNIT_SIZE}"
            )
    return mask


def build_profile(
    base: HardwareProfile | None = None,
    *,
    kind: str | None = None,
    keyslots: int | None = None,
    modes: list[str] | None = None,
    max_dun_bytes: int | None = None,
) -> HardwareProfile:
    """A profile from explicit flags, each replacing the corresponding part of ``base``.

    Without a base the kind defaults to ``keyslots`` (or ``none`` when no mode is given).
    """
    if base is None:
        base_kind = HardwareKind.KEYSLOTS if modes else HardwareKind.NONE
        caps, num_slots, name = CryptoCapabilities.nothing(), 0, "custom"
    else:
        base_kind, caps, num_slots, name = base.kind, base.caps, base.num_slots, base.name
    new_kind = HardwareKind.parse(kind) if kind is not None else base_kind
    mode_masks = dict(caps.modes)
    if modes:
        mode_masks = dict(parse_mode_spec(spec) for spec in modes)
    if max_dun_bytes is not None and not 1 <= max_dun_bytes <= DUN_MAX_BYTES:
        raise einval(f"max_dun_bytes must be 1..{DUN_MAX_BYTES}, got {max_dun_bytes}")
    dun = max_dun_bytes if max_dun_bytes is not None else caps.max_dun_bytes
    if mode_masks and not dun:
        dun = max(mode.iv_size for mode in mode_masks)
    key_types = caps.key_types or KeyType.RAW
    if keyslots is not None and new_kind is not HardwareKind.KEYSLOTS:
        raise einval(f"--keyslots applies to kind 'keyslots' only, not {new_kind.label!r}")
    if new_kind is HardwareKind.NONE:
        if modes or max_dun_bytes is not None:
            raise einval(
                "kind 'none' has no inline encryption: --mode/--max-dun-bytes make no sense"
            )
        return HardwareProfile.none()
    if new_kind is HardwareKind.DIRECT:
        num_slots = 0
    elif keyslots is not None:
        num_slots = keyslots
    new_caps = CryptoCapabilities(mode_masks, dun, key_types)
    return HardwareProfile(new_kind, num_slots, new_caps, name=name)


__all__ = [
    "MAX_KEYSLOTS",
    "HardwareKind",
    "HardwareProfile",
    "available_profiles",
    "build_profile",
    "data_unit_sizes_mask",
    "is_profile_path",
    "load_profile",
    "parse_mode_spec",
    "parse_profile",
    "profile_dirs",
]
