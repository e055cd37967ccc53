"""``fuseblk`` command line: one subcommand module each, dispatched here.

Each module ``fuseblk.cli.<name>`` provides ``add_parser(subparsers)`` registering its
subcommand with ``set_defaults(func=...)``; ``func(args) -> int`` returns the exit status.
FuseblkError is turned into a one-line message here, once: exit status 2 for EINVAL (the input
was wrong), 1 for any other errno. Usage errors are one line too (cli.arguments).
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
from collections.abc import Sequence

from fuseblk import __version__
from fuseblk.cli.arguments import OneLineParser
from fuseblk.errors import FuseblkError

_SUBCOMMANDS = ("crypt", "image", "mount", "dm", "hw", "key", "stats")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="fuseblk",
        description="Userspace block devices with emulated inline encryption and device-mapper.",
    )
    parser.add_argument("--version", action="version", version=f"fuseblk {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in _SUBCOMMANDS:
        importlib.import_module(f"fuseblk.cli.{name}_cmd").add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.func(args)
        _flush_stdout()
        return status
    except FuseblkError as err:
        print(f"fuseblk {args.command}: {_one_line(err.message)}", file=sys.stderr)
        return _exit_status(err)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `fuseblk ... | head`: the reader went away; exit quietly as coreutils do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        return 141
    except OSError as exc:
        # Files a command names are reported where they are opened, as FuseblkErrors; what
        # arrives here is mostly standard output failing mid-way (> /dev/full, PYTHONUNBUFFERED).
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"fuseblk {args.command}: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1


def _exit_status(err: FuseblkError) -> int:
    """2 when the input was wrong (EINVAL), 1 when the operation failed."""
    return 2 if err.errno == errno.EINVAL else 1


def _one_line(message: str) -> str:
    return " ".join(message.split("\n"))


def _flush_stdout() -> None:
    """Output still buffered is written now, while a failure can be reported (``> /dev/full``)."""
    if sys.stdout is None:  # started with stdout closed: print() wrote nothing
        return
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise FuseblkError(
            exc.errno or errno.EIO, f"cannot write standard output: {exc.strerror}"
        ) from None


if __name__ == "__main__":
    sys.exit(main())
