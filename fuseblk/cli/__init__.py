"""``fuseblk`` command line: one subcommand module each, dispatched here.

Each module ``fuseblk.cli.<name>`` provides ``add_parser(subparsers)`` registering its
subcommand with ``set_defaults(func=...)``; ``func(args) -> int`` returns the exit status.
FuseblkError is turned into a one-line message here, once.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
from collections.abc import Sequence

from fuseblk import __version__
from fuseblk.errors import FuseblkError

_SUBCOMMANDS = ("crypt", "image", "mount", "dm", "stats")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
        return status
    except FuseblkError as err:
        print(f"fuseblk {args.command}: {err.message}", file=sys.stderr)
        return 2 if err.errno == errno.EINVAL else 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `fuseblk ... | head`: the reader went away; exit quietly as coreutils do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
