"""Human sizes on the command line: ``64M``, ``1G``, ``4096`` — binary multiples, like losetup.

Kept in one place so every subcommand accepts the same spellings and reports the same error.
"""

from __future__ import annotations

import re

from fuseblk.errors import einval

_SUFFIXES = {"": 0, "K": 10, "M": 20, "G": 30, "T": 40, "P": 50}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMGTP]?)(?:i?B)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes for ``text``: an integer with an optional K/M/G/T/P suffix (powers of 1024).

    ``KiB``/``KB`` spellings are accepted as the same binary multiples; anything else is EINVAL.
    """
    match = _SIZE_RE.match(text)
    if match is None:
        raise einval(f"invalid size {text!r} (expected a number with an optional K/M/G/T suffix)")
    number, suffix = match.groups()
    return int(number) << _SUFFIXES[suffix.upper()]


def format_size(nbytes: int) -> str:
    """The largest exact binary unit: ``64M`` for 67108864, ``1536K`` for 1572864."""
    for suffix in ("P", "T", "G", "M", "K"):
        shift = _SUFFIXES[suffix]
        if nbytes and nbytes % (1 << shift) == 0:
            return f"{nbytes >> shift}{suffix}"
    return str(nbytes)
