"""``fuseblk stats [DEV]``: the daemon's counters, per mapped device and per backend.

Shows where I/O went (inline vs fallback bios and bytes), how the keyslots behaved (programs,
hits, waits, evictions), errors, and the events of test targets (flakey drops, delays), as one
aligned table per section, or the daemon's JSON with ``--json``. ``--watch [SECONDS]`` prints
rates per interval instead, one row per device, backend and the fallback as ``iostat -x`` does
(:mod:`fuseblk.cli.rates`), until interrupted or ``--count`` intervals have been shown; with
``--json``, one JSON object per line and interval.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from fuseblk.cli import output
from fuseblk.cli.arguments import integer, seconds
from fuseblk.cli.dm_cmd import common_options
from fuseblk.cli.rates import interval_rates, rate_lines
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
    p.add_argument(
        "--watch",
        nargs="?",
        const=1.0,
        type=seconds(0.05, 86400.0),
        metavar="SECONDS",
        help="print rates every SECONDS (default 1) until interrupted, like iostat -x",
    )
    p.add_argument(
        "--count",
        type=integer(1),
        metavar="N",
        help="with --watch: stop after N intervals",
    )


def run(args: argparse.Namespace) -> int:
    if args.watch is not None:
        return watch(args)
    if args.count is not None:
        print(
            "fuseblk stats: error: --count needs --watch (see fuseblk stats --help)",
            file=sys.stderr,
        )
        return 2
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


def watch(args: argparse.Namespace) -> int:
    """Rates over each interval from two snapshots of the counters; Ctrl-C ends it quietly."""
    shown = 0
    try:
        with ControlClient.for_mount(args.mount) as client:
            before = client.call("stats", name=args.dev)
            then = time.monotonic()
            while args.count is None or shown < args.count:
                time.sleep(args.watch)
                now = client.call("stats", name=args.dev)
                moment = time.monotonic()
                rates = interval_rates(now, before, moment - then)
                before, then = now, moment
                if args.json:
                    print(json.dumps({"time": round(time.time(), 3), **rates}), flush=True)
                else:
                    if shown:
                        print()
                    print(time.strftime("%H:%M:%S") + f"  interval {rates['interval_s']:.2f} s")
                    print("\n".join(rate_lines(rates)), flush=True)
                shown += 1
    except FuseblkError as err:
        print(f"fuseblk stats: {err.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0
