"""What every subcommand's arguments share: one-line usage errors and ASCII-only number types.

argparse reports a bad argument as its usage followed by the error, several lines; fuseblk says
what is wrong in one line, as it does for every other error, and ``--help`` shows the usage.
Numbers go through fuseblk.numbers (``type=int`` would take ``５１２``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import NoReturn

from fuseblk.errors import FuseblkError
from fuseblk.numbers import U64_MAX, parse_int, parse_real


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line: ``fuseblk dm create: error: ...``.

    Subcommand parsers inherit the class (``add_subparsers`` uses the parent's type).
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def integer(lo: int = 0, hi: int = U64_MAX, *, allow_hex: bool = False) -> Callable[[str], int]:
    """An argparse ``type``: an integer in ASCII digits within ``[lo, hi]``."""

    def parse(text: str) -> int:
        try:
            return parse_int(text, lo=lo, hi=hi, allow_hex=allow_hex)
        except FuseblkError as err:
            raise argparse.ArgumentTypeError(err.message) from None

    return parse


def seconds(lo: float = 0.0, hi: float = 1e6) -> Callable[[str], float]:
    """An argparse ``type``: a duration in seconds (``1.5``) in ASCII digits, not nan or inf."""

    def parse(text: str) -> float:
        try:
            return parse_real(text, lo=lo, hi=hi)
        except FuseblkError as err:
            raise argparse.ArgumentTypeError(err.message) from None

    return parse
