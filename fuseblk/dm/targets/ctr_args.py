"""Constructor argument parsing shared by targets (the kernel's ``dm_read_arg``/``dm_get_device``).

Every helper raises :class:`TargetArgError` naming the argument, so the table parser can report
``line N: <field>: expected <what>, got '<text>'`` without knowing the target. Every number in a
table, the table's own starts and lengths included, is read by :func:`read_decimal`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fuseblk import SECTOR_SHIFT, SECTOR_SIZE
from fuseblk.dm.targets.base import TargetArgError, TargetEnv

if TYPE_CHECKING:
    from fuseblk.device import BlockDevice

UINT_MAX = (1 << 32) - 1
SECTOR_MAX = (1 << 64) - 1  # sector_t: dm reads sector numbers and counts with %llu


def read_decimal(text: str, hi: int) -> int | None:
    """The value of ``text`` when it is ASCII decimal digits naming at most ``hi``, else None.

    The kernel reads table numbers with ``kstrtoull``/``sscanf``: ASCII digits, no sign, no
    spaces. ``str.isdigit`` alone also accepts other scripts' digits, which ``int`` reads ('١' is
    1) or refuses ('²'); and ``int`` refuses more digits than ``sys.get_int_max_str_digits``, so
    the length is bounded before converting.
    """
    if not text.isascii() or not text.isdigit():
        return None
    digits = text.lstrip("0") or "0"
    if len(digits) > len(str(hi)):
        return None
    value = int(digits)
    return value if value <= hi else None


def parse_uint(text: str, field: str, lo: int = 0, hi: int = UINT_MAX) -> int:
    """A decimal integer in ``[lo, hi]`` (``kstrtouint`` / ``dm_read_arg``): no signs, no spaces."""
    value = read_decimal(text, hi)
    if value is None or value < lo:
        raise TargetArgError(field, f"an integer in {lo}..{hi}", text)
    return value


def parse_sector(text: str, field: str = "offset") -> int:
    """A sector number (``%llu``); returned in sectors."""
    value = read_decimal(text, SECTOR_MAX)
    if value is None:
        raise TargetArgError(field, f"a sector number (512-byte units, 0..{SECTOR_MAX})", text)
    return value


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
