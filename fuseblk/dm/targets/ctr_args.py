"""Constructor argument parsing shared by targets (the kernel's ``dm_read_arg``/``dm_get_device``).

Every helper raises :class:`TargetArgError` naming the argument, so the table parser can report
``line N: <field>: expected <what>, got '<text>'`` without knowing the target.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fuseblk import SECTOR_SHIFT, SECTOR_SIZE
from fuseblk.dm.targets.base import TargetArgError, TargetEnv

if TYPE_CHECKING:
    from fuseblk.device import BlockDevice

UINT_MAX = (1 << 32) - 1
SECTOR_MAX = (1 << 64) - 1


def parse_uint(text: str, field: str, lo: int = 0, hi: int = UINT_MAX) -> int:
    """A decimal integer in ``[lo, hi]`` (``kstrtouint`` / ``dm_read_arg``): no signs, no spaces."""
    if not text.isascii() or not text.isdigit():
        raise TargetArgError(field, f"an integer in {lo}..{hi}", text)
    value = int(text)
    if not lo <= value <= hi:
        raise TargetArgError(field, f"an integer in {lo}..{hi}", text)
    return value


def parse_sector(text: str, field: str = "offset") -> int:
    """A sector number (``%llu``); returned in sectors."""
    if not text.isascii() or not text.isdigit() or int(text) > SECTOR_MAX:
        raise TargetArgError(field, "a sector number (512-byte units)", text)
    return int(text)


def get_device_area(
    env: TargetEnv, ref: str, offset_sectors: int, length: int, field: str = "device"
) -> BlockDevice:
    """``dm_get_device`` plus the core's ``device_area_is_invalid`` check.

    ``length`` is in bytes; the area ``[offset, offset+length)`` must lie inside the device.
    """
    dev = env.get_device(ref)
    end = offset_sectors * SECTOR_SIZE + length
    if end > dev.size:
        raise TargetArgError(
            field,
            f"a device of at least {end // SECTOR_SIZE} sectors "
            f"(offset {offset_sectors} + length {length // SECTOR_SIZE})",
            f"{ref} ({dev.size // SECTOR_SIZE} sectors)",
        )
    return dev


def get_device_at(
    env: TargetEnv, ref: str, offset_text: str, length: int, field: str = "offset"
) -> tuple[BlockDevice, int]:
    """``<dev> <offset>`` for a target that keeps the area's start in bytes: (device, start).

    Both errors, a malformed offset and an area past the device's end, name ``field``: it is the
    offset that puts the area out of range.
    """
    start = parse_sector(offset_text, field)
    return get_device_area(env, ref, start, length, field), start << SECTOR_SHIFT


def expect_count(args: list[str], counts: tuple[int, ...], what: str) -> None:
    """The argument count must be one of ``counts``."""
    if len(args) not in counts:
        allowed = " or ".join(map(str, counts))
        raise TargetArgError("arguments", f"{allowed} arguments ({what})", " ".join(args))
