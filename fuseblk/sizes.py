"""Human sizes on the command line: ``64M``, ``1G``, ``4096`` — binary multiples, like losetup.

Kept in one place so every subcommand accepts the same spellings and reports the same error.
Digits are ASCII only (fuseblk.numbers says why), and no size exceeds the largest file offset.
"""

from __future__ import annotations

import re

from fuseblk.errors import FuseblkError, einval
from fuseblk.numbers import parse_int, shown

MAX_SIZE = (1 << 63) - 1  # the largest off_t: no file, image or device range is longer
_SUFFIXES = {"": 0, "K": 10, "M": 20, "G": 30, "T": 40, "P": 50}
_SIZE_RE = re.compile(r"\s*([0-9]+)\s*([KMGTP]?)(?:i?B)?\s*", re.IGNORECASE | re.ASCII)


def parse_size(text: str) -> int:
    """Bytes for ``text``: an integer with an optional K/M/G/T/P suffix (powers of 1024).

    ``KiB``/``KB`` spellings are accepted as the same binary multiples; anything else, and any
    size above :data:`MAX_SIZE`, is EINVAL.
    """
    match = _SIZE_RE.fullmatch(text)
    if match is None:
        raise einval(
            f"invalid size {shown(text)} (expected a number with an optional K/M/G/T suffix)"
        )
    number, suffix = match.groups()
    shift = _SUFFIXES[suffix.upper()]
    too_large = einval(
        f"size {shown(text)} is larger than the largest file offset ({MAX_SIZE} bytes)"
    )
    try:
        value = parse_int(number, hi=MAX_SIZE) << shift
    except FuseblkError:  # more digits than any size has
        raise too_large from None
    if value > MAX_SIZE:
        raise too_large
    return value


def format_size(nbytes: int) -> str:
    """The largest exact binary unit: ``64M`` for 67108864, ``1536K`` for 1572864."""
    for suffix in ("P", "T", "G", "M", "K"):
        shift = _SUFFIXES[suffix]
        if nbytes and nbytes % (1 << shift) == 0:
            return f"{nbytes >> shift}{suffix}"
    return str(nbytes)
