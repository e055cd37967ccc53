"""``fuseblk image``: make, inspect and check backend images (emulated inline-encryption disks).

An image is wherever a backend reference points: an image file or an NBD export
(``nbd+unix:///EXPORT?socket=PATH``, ``nbd://HOST[:PORT]/EXPORT``), opened through
:mod:`fuseblk.hw.factory`.

``create`` writes a sparse image whose header describes the hardware (a named profile from
backends/, a profile file, or flags); ``inspect`` prints everything in the header, both copies'
status and the keyslot table (key identifiers only), like ``cryptsetup luksDump``; ``check``
verifies both copies and with ``--repair`` rewrites a damaged or stale copy from the good one, and
takes over the claim a daemon that is gone left on an export (:mod:`fuseblk.hw.holder`).

Exit status: 0 fine, 1 damaged (or the operation failed), 2 the command line was wrong.
"""

from __future__ import annotations

import argparse
import errno
import json
import sys
from dataclasses import replace
from typing import Any

from fuseblk.cli.arguments import integer
from fuseblk.errors import FuseblkError, einval
from fuseblk.hw.factory import StorageRef, create_image, open_storage
from fuseblk.hw.file_storage import FileStorage
from fuseblk.hw.holder import holder_is_gone, this_host
from fuseblk.hw.image_format import DATA_OFFSET, HeaderSet, ImageHeader, read_headers, write_copy
from fuseblk.hw.profiles import (
    MAX_KEYSLOTS,
    HardwareKind,
    HardwareProfile,
    available_profiles,
    build_profile,
    load_profile,
)
from fuseblk.hw.storage import Storage
from fuseblk.sizes import MAX_SIZE, format_size, parse_size

# The data area starts after the headers; together they must stay a file size (an off_t).
MAX_DATA_SIZE = MAX_SIZE - DATA_OFFSET


def add_parser(subparsers: Any) -> None:
    image = subparsers.add_parser(
        "image",
        help="create, inspect and check backend image files",
        description="Backend image files: disks with emulated inline-encryption hardware.",
    )
    verbs = image.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True

    create = verbs.add_parser(
        "create",
        help="make a new sparse image",
        description="Make a new sparse image. The hardware comes from --profile, from flags, "
        "or from a profile with some flags replacing parts of it.",
    )
    create.add_argument("path", metavar="PATH|URI")
    create.add_argument("--size", required=True, help="data area size (bytes, K/M/G/T suffixes)")
    create.add_argument(
        "--profile", metavar="NAME|FILE", help=f"hardware profile ({_profile_names()})"
    )
    create.add_argument("--kind", choices=[k.label for k in HardwareKind], help="hardware kind")
    create.add_argument(
        "--keyslots", type=integer(), metavar="N", help=f"number of keyslots (1..{MAX_KEYSLOTS})"
    )
    create.add_argument(
        "--mode",
        action="append",
        metavar="MODE:DUS[,DUS]",
        help="a supported mode and its data unit sizes, e.g. AES-256-XTS:512,4096 (repeatable)",
    )
    create.add_argument(
        "--max-dun-bytes", type=integer(), metavar="N", help="widest DUN the hardware takes"
    )
    create.add_argument("--label", default="", help="a name for the image (up to 64 bytes)")
    create.add_argument("--force", action="store_true", help="overwrite an existing file")
    create.set_defaults(func=cmd_create)

    inspect = verbs.add_parser("inspect", help="print the header (like cryptsetup luksDump)")
    inspect.add_argument("path", metavar="PATH|URI")
    inspect.add_argument("--json", action="store_true", help="print as JSON")
    inspect.set_defaults(func=cmd_inspect)

    check = verbs.add_parser("check", help="verify both header copies")
    check.add_argument("path", metavar="PATH|URI")
    check.add_argument(
        "--repair",
        action="store_true",
        help="rewrite a bad copy from the good one; take over the claim of a daemon that is gone",
    )
    check.set_defaults(func=cmd_check)

    profiles = verbs.add_parser("profiles", help="list the hardware profiles")
    profiles.set_defaults(func=cmd_profiles)


def _profile_names() -> str:
    return ", ".join(sorted(available_profiles())) or "none installed"


# --- create ------------------------------------------------------------------------------------


def hardware_from_args(args: argparse.Namespace) -> HardwareProfile:
    base = load_profile(args.profile) if args.profile else None
    if all(f is None for f in (args.kind, args.keyslots, args.mode, args.max_dun_bytes)):
        if base is None:
            raise einval("give --profile NAME|FILE, or --kind/--keyslots/--mode/--max-dun-bytes")
        return base
    return build_profile(
        base,
        kind=args.kind,
        keyslots=args.keyslots,
        modes=args.mode,
        max_dun_bytes=args.max_dun_bytes,
    )


def cmd_create(args: argparse.Namespace) -> int:
    size = parse_size(args.size)
    if size > MAX_DATA_SIZE:
        raise einval(
            f"--size {args.size}: an image holds at most {MAX_DATA_SIZE} bytes of data "
            f"(the largest file less its {format_size(DATA_OFFSET)} of headers)"
        )
    hardware = hardware_from_args(args)
    try:
        header = create_image(args.path, size, hardware, label=args.label, overwrite=args.force)
    except FuseblkError as err:
        if err.errno != errno.EEXIST:
            raise
        raise FuseblkError(err.errno, f"{err.message} (use --force to overwrite)") from None
    print(
        f"{args.path}: {format_size(size)} data at offset {header.data_offset}, {hardware.describe()}"
    )
    return 0


# --- inspect -----------------------------------------------------------------------------------


def header_json(h: ImageHeader) -> dict[str, Any]:
    return {
        "version": h.version,
        "uuid": str(h.uuid),
        "label": h.label,
        "sequence": h.sequence,
        "clean_shutdown": h.clean_shutdown,
        "data_offset": h.data_offset,
        "data_size": h.data_size,
        "hardware": h.hardware.to_json(),
        "keyslots": [dict(index=i, **s.to_json()) for i, s in enumerate(h.slots)],
        "holder": h.holder.to_json() if h.holder is not None else None,
    }


def inspect_json(path: str, headers: HeaderSet, file_size: int, in_use: bool) -> dict[str, Any]:
    copies = [
        {
            "name": c.name,
            "offset": c.offset,
            "valid": c.valid,
            "status": c.status(),
            "error": c.error,
        }
        for c in headers.copies
    ]
    try:
        current: dict[str, Any] | None = header_json(headers.current)
    except FuseblkError:
        current = None
    return {
        "path": path,
        "file_size": file_size,
        "in_use": in_use,
        "copies": copies,
        "problems": headers.problems,
        "header": current,
    }


def inspect_lines(info: dict[str, Any]) -> list[str]:
    out = [f"fuseblk image: {info['path']}", ""]
    h = info["header"]
    if h is not None:
        rows = [
            ("Version", h["version"]),
            ("UUID", h["uuid"]),
            ("Label", h["label"] or "(no label)"),
            ("Sequence", h["sequence"]),
            ("Clean shutdown", "yes" if h["clean_shutdown"] else "no"),
            ("In use", "yes (attached)" if info["in_use"] else "no"),
            ("Holder", _holder_line(h["holder"])),
            ("Data offset", f"{h['data_offset']} [bytes]"),
            ("Data size", f"{h['data_size']} [bytes] ({format_size(h['data_size'])})"),
            ("File size", f"{info['file_size']} [bytes]"),
        ]
        out += [f"{label + ':':<16}{value}" for label, value in rows]
        out.append("")
    out.append("Header copies:")
    for c in info["copies"]:
        out.append(f"  {c['name']:<8} at {c['offset']:<8} {c['status']}")
    if info["problems"]:
        out += ["", "Problems:"] + [f"  {p}" for p in info["problems"]]
    if h is None:
        return out
    hw = h["hardware"]
    out += ["", "Hardware:", f"  Kind:          {hw['kind']}"]
    if hw["kind"] == "keyslots":
        out.append(f"  Keyslots:      {hw['keyslots']}")
    if hw["modes"]:
        out.append(f"  Max DUN bytes: {hw['max_dun_bytes']}")
        out.append(f"  Key types:     {', '.join(hw['key_types'])}")
        out.append("  Modes:")
        out += [f"    {mode}: {' '.join(map(str, sizes))}" for mode, sizes in hw["modes"].items()]
    if h["keyslots"]:
        out += ["", "Keyslots (as of the last header write):"]
        for slot in h["keyslots"]:
            out.append(f"  {slot['index']}: {slot['state']} (generation {slot['generation']})")
            if slot["state"] == "programmed":
                out += [
                    f"        Mode:           {slot['mode']}",
                    f"        Data unit size: {slot['data_unit_size']}",
                    f"        DUN bytes:      {slot['dun_bytes']}",
                    f"        Key identifier: {slot['key_id']}",
                ]
    return out


def _holder_line(holder: dict[str, Any] | None) -> str:
    if holder is None:
        return "(none)"
    return f"pid {holder['pid']} on {holder['host']}"


def _open_image(ref: str, *, writable: bool) -> Storage:
    """The image ``ref`` names, unlocked: an image file read-only unless ``writable``."""
    sref = StorageRef.parse(ref)
    if sref.kind.local_path:
        return FileStorage.open(sref.location, writable=writable)
    return open_storage(ref)


def _in_use(image: Storage, headers: HeaderSet) -> bool:
    """An image file is in use while its lock is held; other storage while its header names a
    holder (which may be a daemon that is gone: ``check --repair`` clears it)."""
    if isinstance(image, FileStorage):
        return image.in_use()
    try:
        return headers.current.holder is not None
    except FuseblkError:
        return False


def _io_error(path: str, exc: OSError) -> FuseblkError:
    return FuseblkError(exc.errno or errno.EIO, f"{path}: {exc.strerror}")


def cmd_inspect(args: argparse.Namespace) -> int:
    image = _open_image(args.path, writable=False)
    try:
        headers = read_headers(image)
        info = inspect_json(args.path, headers, image.size, _in_use(image, headers))
    except OSError as exc:
        raise _io_error(args.path, exc) from None
    finally:
        image.close()
    print(json.dumps(info, indent=2) if args.json else "\n".join(inspect_lines(info)))
    return 0 if info["header"] is not None else 1


# --- check -------------------------------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    image = _open_image(args.path, writable=args.repair)
    try:
        return _check(args, image)
    except OSError as exc:
        raise _io_error(args.path, exc) from None
    finally:
        image.close()


def _check(args: argparse.Namespace, image: Storage) -> int:
    if args.repair and isinstance(image, FileStorage):
        image.lock()  # never repair an image someone has attached
    headers = read_headers(image)
    for copy in headers.copies:
        print(f"{copy.name} header at {copy.offset}: {copy.status()}")
    try:
        current = headers.current
    except FuseblkError as err:
        print(f"{args.path}: {err.message}; cannot repair", file=sys.stderr)
        return 1
    problems = list(headers.problems)
    file_size = image.size
    if file_size < current.image_size:
        problems.append(f"file is truncated: {file_size} bytes, header needs {current.image_size}")
    if not current.clean_shutdown:
        print("note: image was not cleanly shut down (or is attached now)")
    holder = current.holder
    live_here = holder is not None and holder.host == this_host() and not holder_is_gone(holder)
    if holder is not None and live_here:
        print(f"note: attached by {holder.describe()}")
    elif holder is not None:
        gone = (
            "is gone" if holder_is_gone(holder) else "is on another host: attached there, or gone"
        )
        problems.append(f"claimed by {holder.describe()}, which {gone}")
    if not problems:
        print(f"{args.path}: ok")
        return 0
    for problem in problems:
        print(f"problem: {problem}")
    if not args.repair:
        print(f"{args.path}: damaged (run with --repair to fix)")
        return 1
    if holder is not None and not live_here:
        current = replace(current, holder=None)
        print(f"repaired: took over the claim of {holder.describe()}")
    good = current.to_bytes()
    for copy in headers.copies:
        if copy.header is None or copy.header.to_bytes() != good:
            write_copy(image, copy.name, good)
            print(f"repaired: rewrote the {copy.name} header from sequence {current.sequence}")
    if file_size < current.image_size:
        if not isinstance(image, FileStorage):
            print(f"{args.path}: the export is too small; cannot repair", file=sys.stderr)
            return 1
        image.truncate(current.image_size)
        print(f"repaired: extended the file to {current.image_size} bytes (sparse)")
    print(f"{args.path}: repaired")
    return 0


def cmd_profiles(args: argparse.Namespace) -> int:
    profiles = sorted(available_profiles().items())
    width = max((len(name) for name, _ in profiles), default=0)
    for name, path in profiles:
        profile = load_profile(str(path))
        print(f"{name:<{width}} {profile.describe()}")
        if profile.description:
            print(f"{'':<{width}} {profile.description}")
    return 0
