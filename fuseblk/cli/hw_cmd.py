"""``fuseblk hw``: faults injected into a backend's inline-encryption engine, and its state.

``fuseblk hw fault BACKEND KIND`` arms a fault in a running daemon (:mod:`fuseblk.hw.faults`):
``program-fail`` and ``evict-fail`` fail the next ``--count N`` keyslot programs or evictions, or
each with ``--probability P`` (``--seed S`` replays a run), or every one until cleared;
``slow-program MS`` delays each programming; ``reset`` resets the controller (every key is
programmed again); ``clear`` disarms every fault. ``fuseblk hw status BACKEND`` lists the armed
faults, the keyslots (key ids only) and the counts of faults that fired. Faults live in the
daemon's memory: an image never records them.

``fuseblk hw set BACKEND [--mode M:DUS,...] [--keyslots N] [--max-dun-bytes B] [--key-types
raw,hw_wrapped] [--no-drain]`` changes what the hardware offers, live, recorded in the image
header; every device stacked above follows (:mod:`fuseblk.dm.hw_change`): growth at once, a
shrink after draining them, refused if it would break a live table. ``--no-drain`` refuses any
shrink under a live device instead, as the kernel would.

Exit status: 0 on success, 2 for a usage error (EINVAL), 1 when the daemon refuses.
"""

from __future__ import annotations

import argparse
import errno
import sys
from collections.abc import Callable, Mapping
from typing import Any

from fuseblk.cli import output
from fuseblk.cli.arguments import integer
from fuseblk.cli.dm_cmd import common_options
from fuseblk.control.client import ControlClient
from fuseblk.errors import FuseblkError
from fuseblk.numbers import parse_real

FAIL_KINDS = ("program-fail", "evict-fail")
KINDS = (*FAIL_KINDS, "slow-program", "reset", "clear")


def probability(text: str) -> float:
    """An argparse ``type``: a probability from 0 to 1 in ASCII digits."""
    try:
        return parse_real(text, lo=0.0, hi=1.0)
    except FuseblkError as err:
        raise argparse.ArgumentTypeError(err.message) from None


def add_parser(subparsers: Any) -> None:
    common = common_options()
    hw = subparsers.add_parser(
        "hw",
        help="change or inject faults into a backend's inline-encryption hardware",
        description="Change the emulated inline-encryption hardware of a running fuseblk "
        "daemon's backends, inject faults into it, and show its state.",
        parents=[common_options(suppress=False)],
    )
    verbs = hw.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True

    p = verbs.add_parser(
        "fault",
        help="arm a fault, reset the controller, or clear every fault",
        description="program-fail/evict-fail [--count N | --probability P [--seed S]], "
        "slow-program MS, reset, clear",
        parents=[common],
    )
    p.set_defaults(func=run_fault)
    p.add_argument("backend", metavar="BACKEND")
    p.add_argument("kind", choices=KINDS, metavar="KIND", help=", ".join(KINDS))
    p.add_argument(
        "ms", nargs="?", type=integer(0, 60_000), metavar="MS", help="slow-program: delay in ms"
    )
    how = p.add_mutually_exclusive_group()
    how.add_argument("--count", type=integer(1, 2**31 - 1), metavar="N", help="fail the next N")
    how.add_argument("--probability", type=probability, metavar="P", help="fail each with P")
    p.add_argument(
        "--seed", type=integer(0, 2**63 - 1), metavar="S", help="seed of --probability's draws"
    )

    p = verbs.add_parser(
        "set",
        help="change the hardware's modes, keyslots, DUN width or key types, live",
        description="Change what a backend's inline-encryption hardware offers; the devices "
        "stacked above follow. Options not given keep their value.",
        parents=[common],
    )
    p.set_defaults(func=run_set)
    p.add_argument("backend", metavar="BACKEND")
    p.add_argument(
        "--mode",
        dest="modes",
        action="append",
        metavar="M:DUS,...",
        help="a mode and its data unit sizes (repeat, or separate modes with ';'); "
        "replaces every mode",
    )
    p.add_argument("--keyslots", type=integer(1, 255), metavar="N")
    p.add_argument("--max-dun-bytes", type=integer(1, 32), metavar="B")
    p.add_argument("--key-types", metavar="raw,hw_wrapped")
    p.add_argument(
        "--no-drain",
        dest="drain",
        action="store_false",
        help="refuse a shrink under a live device (the kernel's rule) instead of draining",
    )

    p = verbs.add_parser(
        "status", help="show armed faults, keyslots and fault counters", parents=[common]
    )
    p.set_defaults(func=run_status)
    p.add_argument("backend", metavar="BACKEND")


def _usage(args: argparse.Namespace) -> str | None:
    """What is wrong with the combination of arguments, or None."""
    if args.kind == "slow-program" and args.ms is None:
        return "slow-program needs MS"
    if args.kind != "slow-program" and args.ms is not None:
        return f"{args.kind} takes no MS"
    failing = args.count is not None or args.probability is not None or args.seed is not None
    if args.kind not in FAIL_KINDS and failing:
        return f"{args.kind} takes no --count, --probability or --seed"
    if args.seed is not None and args.probability is None:
        return "--seed needs --probability"
    return None


def run_fault(args: argparse.Namespace) -> int:
    problem = _usage(args)
    if problem is not None:
        print(f"fuseblk hw fault: error: {problem} (see fuseblk hw fault --help)", file=sys.stderr)
        return 2
    options = {"count": args.count, "probability": args.probability, "seed": args.seed}
    request: dict[str, Any] = {"name": args.backend, "fault": args.kind, "ms": args.ms}
    request.update(options)
    request = {k: v for k, v in request.items() if v is not None}
    return _call(args, "fault", "hw_fault", request)


def run_status(args: argparse.Namespace) -> int:
    return _call(args, "status", "hw_status", {"name": args.backend})


def run_set(args: argparse.Namespace) -> int:
    request: dict[str, Any] = {"name": args.backend, "drain": args.drain}
    if args.modes:
        request["modes"] = [m for arg in args.modes for m in arg.split(";") if m.strip()]
    if args.keyslots is not None:
        request["keyslots"] = args.keyslots
    if args.max_dun_bytes is not None:
        request["max_dun_bytes"] = args.max_dun_bytes
    if args.key_types is not None:
        request["key_types"] = [t for t in args.key_types.split(",") if t.strip()]
    return _call(args, "set", "hw_set", request, change_lines)


def change_lines(change: Mapping[str, Any]) -> list[str]:
    """``hw set`` as text: the hardware now, the kind of change and the devices that followed."""
    lines = [f"{change['name']}: {change['hardware']}", f"change: {change['change']}"]
    if change.get("suspended"):
        lines.append(f"drained: {', '.join(change['suspended'])}")
    if change.get("evicted"):
        lines.append(f"evicted keys: {change['evicted']}")
    for name, caps in (change.get("profiles") or {}).items():
        if caps is None:
            lines.append(f"{name}: no inline encryption")
        else:
            modes = " ".join(
                f"{m}:{','.join(map(str, sizes))}" for m, sizes in caps["modes"].items()
            )
            lines.append(f"{name}: {modes} max_dun_bytes={caps['max_dun_bytes']}")
    return lines


def _call(
    args: argparse.Namespace,
    verb: str,
    cmd: str,
    request: dict[str, Any],
    lines: Callable[[Mapping[str, Any]], list[str]] | None = None,
) -> int:
    try:
        with ControlClient.for_mount(args.mount) as client:
            status = client.call(cmd, **request)
    except FuseblkError as err:
        print(f"fuseblk hw {verb}: {err.message}", file=sys.stderr)
        return 2 if err.errno == errno.EINVAL else 1
    if args.json:
        print(output.to_json(status))
    else:
        print("\n".join((lines or status_lines)(status)))
    return 0


def status_lines(status: Mapping[str, Any]) -> list[str]:
    """``hw status`` as text: the hardware, its faults, its keyslots, its fault counters."""
    lines = [f"{status['name']}: {status['hardware']}"]
    faults = status.get("faults") or []
    if not faults:
        lines.append("faults: none")
    for fault in faults:
        detail = " ".join(f"{k}={v}" for k, v in fault.items() if k != "fault")
        lines.append(f"fault: {fault['fault']} {detail}".rstrip())
    for slot in status.get("keyslots") or []:
        held = slot["key_id"] or "empty"
        lines.append(f"keyslot {slot['index']}: {held} refs={slot['refs']}")
    counters = status.get("counters") or {}
    lines.extend(output.align([[k, v] for k, v in counters.items()]))
    return lines
