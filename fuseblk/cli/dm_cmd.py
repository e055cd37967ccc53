"""``fuseblk dm VERB``: dmsetup for the mapped devices of a running fuseblk daemon.

A thin client: each verb is one request on the daemon's control socket
(docs/control-protocol.md), printed the way dmsetup prints it, or as JSON with ``--json``.
Exit status: 0 done, 1 the operation failed, 2 the command line was wrong.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable
from typing import Any

from fuseblk import SECTOR_SIZE
from fuseblk.blkcrypto.crypto_sysfs import grep_lines
from fuseblk.cli import output
from fuseblk.cli.arguments import integer
from fuseblk.control.client import ControlClient
from fuseblk.errors import FuseblkError
from fuseblk.inputfile import read_input_stream, read_input_text
from fuseblk.keyfile import KeyFileError, read_key_file, read_key_or_blob
from fuseblk.modes import CryptoMode
from fuseblk.sizes import parse_size

DISCARD_HELP = """\
Discard (trim) a byte range of a mapped device, like blkdiscard. The device's file in the mount
cannot offer this itself: pyfuse3 has no fallocate operation, so libfuse answers the kernel's
FUSE_FALLOCATE with ENOSYS and fallocate(FALLOC_FL_PUNCH_HOLE) on the file (hence BLKDISCARD on
a loop device over it) fails with EOPNOTSUPP. pyfuse3 would need an Operations.fallocate
handler wired to FUSE_FALLOCATE; until then discards go through the control socket. START and
LENGTH are bytes (K/M/G/T suffixes) and must be multiples of 512. Example:
fuseblk dm discard plain 0 64M"""


SYSFS_HELP = """\
Print the files of /sys/block/NAME/queue/crypto/ of a mapped device or a backend (every one
without NAME) as the kernel's block/blk-crypto-sysfs.c shows them, one `path:value` line per
file like `grep -r . /sys/block/NAME/queue/crypto`: max_dun_bits, num_keyslots (0 for a mapped
device), modes/<mode> holding the data-unit-size mask (0x...), and raw_keys / hw_wrapped_keys
when that key type is supported. A device without inline encryption has no crypto/ directory.
The same files are readable in the mount under MNT/.sys/block/NAME/queue/crypto/."""


class UsageError(Exception):
    """A command line that is wrong in a way argparse cannot see (exit status 2)."""


def common_options(*, suppress: bool = True) -> argparse.ArgumentParser:
    """``--mount`` and ``--json``, accepted before or after the verb.

    On a verb the defaults are suppressed so a value given before the verb is not overwritten;
    the parser that owns the verbs gets a separate instance with real defaults (argparse shares
    action objects between a parent and its children, so one instance cannot serve both).
    """
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--mount",
        metavar="MP",
        default=argparse.SUPPRESS if suppress else None,
        help="the daemon serving this mountpoint (default: the only one running)",
    )
    parent.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS if suppress else False,
        help="print the result as JSON",
    )
    return parent


def add_parser(subparsers: Any) -> None:
    common = common_options()
    dm = subparsers.add_parser(
        "dm",
        help="manage mapped devices (like dmsetup)",
        description="Manage the mapped devices of a running fuseblk daemon, like dmsetup.",
        parents=[common_options(suppress=False)],
    )
    verbs = dm.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True

    def verb(
        name: str, func: Callable[[argparse.Namespace, ControlClient], int], help: str, **kw: Any
    ) -> Any:
        p = verbs.add_parser(
            name, help=help, description=kw.pop("description", help), parents=[common], **kw
        )
        p.set_defaults(func=run, verb_func=func)
        return p

    p = verb("create", do_create, "create a device and load its table (live at once)")
    p.add_argument("name", metavar="NAME")
    add_table_source(p)
    p.add_argument(
        "--fallback",
        choices=("device", "target"),
        default=None,
        help="fall back for the whole device (default) or per target piece",
    )
    add_force_attach(p)
    p = verb("load", do_load, "load an inactive table (takes effect on resume)")
    p.add_argument("name", metavar="NAME")
    add_table_source(p)
    add_force_attach(p)
    for name, help_text in (
        ("clear", "drop the inactive table (undo a load before resume)"),
        ("resume", "make the inactive table live, or resume I/O"),
        ("suspend", "stop I/O after the in-flight bios complete"),
        ("remove", "remove a device"),
    ):
        p = verb(name, do_simple, help_text)
        p.add_argument("name", metavar="NAME")
    p = verb("rename", do_rename, "rename a device")
    p.add_argument("old", metavar="OLD")
    p.add_argument("new", metavar="NEW")
    p = verb("table", do_table, "print the live table (keys hidden unless --showkeys)")
    p.add_argument("name", nargs="?", metavar="NAME")
    p.add_argument(
        "--showkeys", action="store_true", help="print key bytes in crypt/default-key lines"
    )
    p = verb("status", do_status, "print the targets' status lines")
    p.add_argument("name", nargs="?", metavar="NAME")
    p = verb("info", do_info, "print a summary of each device")
    p.add_argument("name", nargs="?", metavar="NAME")
    verb("ls", do_ls, "list devices with their sizes")
    p = verb(
        "sysfs",
        do_sysfs,
        "print /sys/block/NAME/queue/crypto/ of a device or backend (all without NAME)",
        description=SYSFS_HELP,
    )
    p.add_argument("name", nargs="?", metavar="NAME")
    p = verb("message", do_message, "send a message to the target at SECTOR")
    p.add_argument("name", metavar="NAME")
    p.add_argument("sector", type=integer(), metavar="SECTOR")
    p.add_argument("words", nargs="+", metavar="WORD")
    p = verb(
        "evict-key", do_evict_key, "evict a key from every device below NAME (EBUSY while in use)"
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument(
        "--mode", required=True, help="AES-256-XTS, AES-128-CBC-ESSIV, Adiantum or SM4-XTS"
    )
    key = p.add_mutually_exclusive_group(required=True)
    key.add_argument("--key-hex", metavar="H", help="the raw key (or ephemeral blob) as hex")
    key.add_argument(
        "--key-file", metavar="F", help="file holding the raw key (or ephemeral blob), or its hex"
    )
    p.add_argument(
        "--key-type",
        choices=("raw", "hw-wrapped"),
        default="raw",
        help="hw-wrapped: the key is an ephemerally-wrapped blob (default: raw)",
    )
    p.add_argument("--data-unit-size", type=integer(1), required=True, metavar="N")
    p.add_argument(
        "--dun-bytes",
        type=integer(1),
        default=None,
        metavar="N",
        help="the key's DUN width (default-key's is in `dm status`); default: every width",
    )
    p = verb(
        "discard",
        do_discard,
        "discard a byte range (pyfuse3 offers no fallocate)",
        description=DISCARD_HELP,
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("start", metavar="START")
    p.add_argument("length", metavar="LENGTH")


def add_table_source(p: argparse.ArgumentParser) -> None:
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--table", metavar="TEXT", help="the table (lines of 'start length target args')"
    )
    source.add_argument("--table-file", metavar="F", help="read the table from F ('-' for stdin)")


def run(args: argparse.Namespace) -> int:
    """Run one verb, turning failures into the exit statuses of the module docstring."""
    prog = f"fuseblk dm {args.verb}"
    try:
        with ControlClient.for_mount(args.mount) as client:
            status: int = args.verb_func(args, client)
            return status
    except UsageError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    except FuseblkError as err:
        print(f"{prog}: {err.message}", file=sys.stderr)
        return 1


def emit(args: argparse.Namespace, lines: list[str], result: Any) -> int:
    if args.json:
        print(output.to_json(result))
    else:
        for line in lines:
            print(line)
    return 0


def done(args: argparse.Namespace) -> int:
    if args.json:
        print(output.to_json({"ok": True}))
    return 0


def read_table(args: argparse.Namespace) -> str:
    """The table from --table, --table-file (a regular file of UTF-8 text) or stdin."""
    if args.table is not None:
        return str(args.table)
    if args.table_file not in (None, "-"):
        return read_input_text(args.table_file)
    if sys.stdin is None or (args.table_file is None and sys.stdin.isatty()):
        raise UsageError("no table: give --table TEXT, --table-file F, or the table on stdin")
    return read_input_stream(sys.stdin.buffer, "standard input")


# --- verbs -------------------------------------------------------------------------------------


def absolute_paths(text: str) -> str:
    """Relative image paths made absolute, from the caller's working directory.

    The daemon resolves table and message words in its own working directory, which is ``/``
    once it has forked, so ``./disk.img`` would name ``/disk.img``. A word holding a ``/`` can
    only be a path (device names cannot contain one, keys and cipher names do not); a bare file
    name stays as it is, since it may be a backend or device name, and so does a reference of
    another kind of storage (``nbd://...``).
    """
    return re.sub(
        r"\S+",
        lambda m: (
            m[0]
            if m[0].startswith("/") or "/" not in m[0] or "://" in m[0]
            else os.path.abspath(m[0])
        ),
        text,
    )


def add_force_attach(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--force-attach",
        action="store_true",
        help="an NBD export the table attaches takes over the claim a daemon on another host "
        "left (make sure that daemon is gone: docs/nbd.md)",
    )


def do_create(args: argparse.Namespace, client: ControlClient) -> int:
    table = absolute_paths(read_table(args))
    force = args.force_attach or None  # sent only when asked: older daemons know no such argument
    client.call("create", name=args.name, table=table, fallback=args.fallback, force_attach=force)
    return done(args)


def do_load(args: argparse.Namespace, client: ControlClient) -> int:
    table = absolute_paths(read_table(args))
    client.call("load", name=args.name, table=table, force_attach=args.force_attach or None)
    return done(args)


def do_simple(args: argparse.Namespace, client: ControlClient) -> int:
    client.call(args.verb, name=args.name)
    return done(args)


def do_rename(args: argparse.Namespace, client: ControlClient) -> int:
    client.call("rename", old=args.old, new=args.new)
    return done(args)


def do_table(args: argparse.Namespace, client: ControlClient) -> int:
    entries = client.call("table", name=args.name, show_keys=args.showkeys or None)
    return emit(args, _listing(entries, "table", args.name is None), entries)


def do_status(args: argparse.Namespace, client: ControlClient) -> int:
    entries = client.call("status", name=args.name)
    return emit(args, _listing(entries, "status", args.name is None), entries)


def _listing(entries: list[dict[str, Any]], field: str, all_devices: bool) -> list[str]:
    if all_devices and not entries:
        return [output.NO_DEVICES]
    return output.per_device_lines(entries, field, prefix=all_devices)


def do_info(args: argparse.Namespace, client: ControlClient) -> int:
    infos = client.call("info", name=args.name)
    return emit(args, output.info_lines(infos), infos)


def do_ls(args: argparse.Namespace, client: ControlClient) -> int:
    entries = client.call("ls")
    return emit(args, output.ls_lines(entries), entries)


def do_sysfs(args: argparse.Namespace, client: ControlClient) -> int:
    entries = client.call("sysfs", name=args.name)
    lines = [line for e in entries for line in grep_lines(e["name"], e["crypto"])]
    for e in entries:
        if e["crypto"] is None and not args.json:
            print(f"{e['name']}: no queue/crypto/ (no inline encryption)", file=sys.stderr)
    return emit(args, lines, entries)


def do_message(args: argparse.Namespace, client: ControlClient) -> int:
    words = [absolute_paths(w) for w in args.words]  # raid1 "add <dev> <offset>"
    result = client.call("message", name=args.name, sector=args.sector, args=words)
    reply = str(result.get("reply") or "") if isinstance(result, dict) else ""
    return emit(args, [reply] if reply else [], result)


def do_evict_key(args: argparse.Namespace, client: ControlClient) -> int:
    try:
        mode = CryptoMode.parse(args.mode)
    except FuseblkError as err:
        raise UsageError(err.message) from None
    wrapped = args.key_type == "hw-wrapped"
    if wrapped:  # a blob of 32..128 bytes: the daemon checks its size as blk_crypto_init_key
        try:
            raw = (
                parse_key_hex(args.key_hex)
                if args.key_hex is not None
                else read_key_or_blob(args.key_file)
            )
        except FuseblkError as err:
            raise UsageError(err.message) from None
    elif args.key_hex is not None:
        raw = parse_key_hex(args.key_hex)
        if len(raw) != mode.key_size:  # a usage error like a key file of the wrong size
            raise UsageError(
                f"--key-hex: {mode.sysfs_name} needs {mode.key_size} raw key bytes "
                f"({2 * mode.key_size} hex digits), got {len(raw)} bytes"
            )
    else:
        try:
            raw = read_key_file(args.key_file, mode.key_size, mode.sysfs_name)
        except KeyFileError as err:
            raise UsageError(err.message) from None
    client.call(
        "evict_key",
        name=args.name,
        mode=mode.sysfs_name,
        key_hex=raw.hex(),
        data_unit_size=args.data_unit_size,
        dun_bytes=args.dun_bytes,
        key_type=args.key_type,
    )
    return done(args)


def parse_key_hex(text: str) -> bytes:
    try:
        return bytes.fromhex(text.strip())
    except ValueError:
        raise UsageError("--key-hex: not a hexadecimal string") from None


def do_discard(args: argparse.Namespace, client: ControlClient) -> int:
    try:
        start = parse_size(args.start)
        length = parse_size(args.length)
    except FuseblkError as err:
        raise UsageError(err.message) from None
    if start % SECTOR_SIZE or length % SECTOR_SIZE or length == 0:
        raise UsageError(f"START and LENGTH must be multiples of {SECTOR_SIZE} bytes (LENGTH > 0)")
    client.call("discard", name=args.name, offset=start, length=length)
    return done(args)
