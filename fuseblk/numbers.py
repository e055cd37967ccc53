"""Numbers people type, on the command line and in config files: ASCII digits only.

Python's ``int()``, ``float()``, ``str.isdigit()`` and the regex ``\\d`` take the digits of every
script: ``int("５１２") == 512``, and ``int("٤")`` is 4. A number that reads as something else on
screen must not quietly become an offset, a size or a count (``fuseblk dm discard plain ５１２
512`` would zero a range the user never typed), so every number fuseblk reads from a person goes
through this module, which takes ``[0-9]`` and nothing else, checks the range before converting
(``int()`` refuses strings over 4300 digits with a ValueError of its own), and reports EINVAL
naming the field.
"""

from __future__ import annotations

import re

from fuseblk.errors import FuseblkError, einval

U64_MAX = (1 << 64) - 1

_DECIMAL = re.compile(r"[0-9]+")
_HEX = re.compile(r"0[xX]([0-9a-fA-F]+)")
_REAL = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")


def parse_int(
    text: str, what: str = "", *, lo: int = 0, hi: int = U64_MAX, allow_hex: bool = False
) -> int:
    """The integer ``text`` spells in ASCII decimal (or ``0x`` hex with ``allow_hex``), in
    ``[lo, hi]``; surrounding blanks are ignored, signs and digit separators are not numbers.

    ``what`` names the field in the message (``--dun: ...``); empty for argparse, which adds
    the option's name itself.
    """
    t = text.strip(" \t\n")
    hex_match = _HEX.fullmatch(t) if allow_hex else None
    if hex_match is not None:
        digits, base = hex_match.group(1), 16
    elif _DECIMAL.fullmatch(t):
        digits, base = t, 10
    elif t.startswith("-") and _DECIMAL.fullmatch(t[1:]):
        raise _error(what, f"must not be negative, got {shown(text)}")
    else:
        kind = "a decimal or 0x-hex" if allow_hex else "a decimal"
        raise _error(what, f"expected {kind} integer in ASCII digits, got {shown(text)}")
    longest = len(format(hi, "x" if base == 16 else "d"))
    if len(digits.lstrip("0")) > longest:
        raise _error(what, f"must be {_range(lo, hi)}, got {shown(text)}")
    value = int(digits, base)
    if not lo <= value <= hi:
        raise _error(what, f"must be {_range(lo, hi)}, got {shown(text)}")
    return value


def parse_real(text: str, what: str = "", *, lo: float = 0.0, hi: float = 1e9) -> float:
    """A non-negative decimal fraction (``1.5``) in ASCII digits, in ``[lo, hi]``.

    ``float()`` would also take ``nan``, ``inf``, ``1e400`` and other scripts' digits.
    """
    t = text.strip(" \t\n")
    if not _REAL.fullmatch(t) or len(t) > 32:
        raise _error(what, f"expected a decimal number in ASCII digits, got {shown(text)}")
    value = float(t)
    if not lo <= value <= hi:
        raise _error(what, f"must be {lo:g}..{hi:g}, got {t}")
    return value


def _range(lo: int, hi: int) -> str:
    return f"at least {lo}" if hi == U64_MAX and lo else f"{lo}..{hi}"


def shown(text: str) -> str:
    """``text`` quoted for an error message, or its length when it is too long to repeat."""
    return repr(text) if len(text) <= 40 else f"{len(text)} characters starting {text[:12]!r}"


def _error(what: str, message: str) -> FuseblkError:
    return einval(f"{what}: {message}" if what else message)
