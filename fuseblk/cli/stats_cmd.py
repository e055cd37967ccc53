"""``fuseblk stats [DEV]``: the daemon's counters, per mapped device and per backend.

Shows where I/O went (inline vs fallback bios and bytes), how the keyslots behaved (programs,
hits, waits, evictions), errors, and the events of test targets (flakey drops, delays), as one
aligned table per section, or the daemon's JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from fuseblk.cli import output
from fuseblk.cli.dm_cmd import common_options
from fuseblk.control.client import ControlClient
from fuseblk.errors import FuseblkError


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "stats",
        help="show I/O, fallback and keyslot counters",
        description="Show the counters of a running fuseblk daemon, per device and per backend.",
        parents=[common_options(suppress=False)],
    )
    p.set_defaults(func=run)
    p.add_argument(
        "dev",
        nargs="?",
        metavar="DEV",
        help="only this mapped device or backend (not those below it)",
    )


def run(args: argparse.Namespace) -> int:
    try:
        with ControlClient.for_mount(args.mount) as client:
            stats = client.call("stats", name=args.dev)
    except FuseblkError as err:
        print(f"fuseblk stats: {err.message}", file=sys.stderr)
        return 1
    if args.json:
        print(output.to_json(stats))
    else:
        for line in output.stats_lines(stats if isinstance(stats, dict) else {}):
            print(line)
    return 0
