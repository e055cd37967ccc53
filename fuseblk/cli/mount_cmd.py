"""``fuseblk mount MOUNTPOINT`` starts the daemon; ``fuseblk umount MOUNTPOINT`` stops it cleanly.

``mount`` validates the configuration before forking, so most mistakes are reported at once;
errors while building devices come back from the daemon through its readiness pipe. It returns
only once the mount answers requests.

``umount`` asks the daemon (over its control socket) to shut down — in-flight I/O completes,
every backend is flushed and its header written, then the mount goes — and waits until the
mountpoint is no longer a mount. If the daemon is gone or hangs it falls back to
``fusermount3 -u`` (then ``-uz``) and says so, since data may then not have been flushed.
"""

from __future__ import annotations

import argparse
import errno
import functools
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fuseblk.blkcrypto.fallback import DEFAULT_NUM_SLOTS, MAX_NUM_SLOTS
from fuseblk.cli.arguments import integer, seconds
from fuseblk.errors import FuseblkError

UMOUNT_TIMEOUT = 60.0


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "mount",
        help="mount the mapped devices as files (starts the daemon)",
        description="Start the fuseblk daemon: each mapped device becomes a file in MOUNTPOINT. "
        "Without --config, serves the built-in default setup (base, secure, plain).",
    )
    p.add_argument(
        "mountpoint",
        metavar="MOUNTPOINT",
        help="the directory to mount on (its contents are hidden while mounted)",
    )
    p.add_argument(
        "--config", metavar="FILE", help="TOML file with backends and devices (docs/config.md)"
    )
    p.add_argument(
        "--state-dir",
        metavar="DIR",
        help="where the default setup keeps its images and key (default: $XDG_DATA_HOME/fuseblk)",
    )
    p.add_argument(
        "-f", "--foreground", action="store_true", help="stay in the foreground, log to stderr"
    )
    p.add_argument(
        "--log-file", metavar="F", help="log here (default when daemonized: STATE_DIR/fuseblk.log)"
    )
    p.add_argument(
        "--log-level",
        metavar="L",
        default="info",
        help="debug, info, warning or error (default info)",
    )
    p.add_argument(
        "--fallback-slots",
        metavar="N",
        type=integer(1, MAX_NUM_SLOTS),
        help=f"keyslots of the software fallback, 1..{MAX_NUM_SLOTS} (default {DEFAULT_NUM_SLOTS})",
    )
    p.add_argument(
        "--no-fallback", action="store_true", help="disable the software fallback (EOPNOTSUPP)"
    )
    p.add_argument("--allow-other", action="store_true", help="let other users access the mount")
    p.add_argument(
        "--force-attach",
        action="store_true",
        help="take over the claim a daemon on another host left on an NBD export it attaches "
        "(make sure that daemon is gone: docs/nbd.md)",
    )
    p.set_defaults(func=run_mount)

    u = subparsers.add_parser(
        "umount",
        help="unmount cleanly (flush, write headers, stop the daemon)",
        description="Ask the daemon serving MOUNTPOINT to shut down and wait until it is unmounted.",
    )
    u.add_argument("mountpoint", metavar="MOUNTPOINT")
    u.add_argument(
        "--timeout",
        type=seconds(),
        default=UMOUNT_TIMEOUT,
        metavar="S",
        help="seconds to wait (default 60)",
    )
    u.add_argument(
        "--force",
        action="store_true",
        help="unmount even while device files are open (a loop device over one then reads nothing)",
    )
    u.set_defaults(func=run_umount)


def run_mount(args: argparse.Namespace) -> int:
    """Errors are FuseblkErrors, printed by the CLI as one line (a startup error of the daemon
    too: it comes back through the readiness pipe)."""
    from fuseblk.config.config_file import build_devices, load_config
    from fuseblk.config.default_setup import default_config, default_state_dir, state_warnings
    from fuseblk.fuse.daemon import MountSettings, check_mountpoint, run_daemon, run_foreground
    from fuseblk.logs import parse_level, setup_logging

    parse_level(args.log_level)
    mountpoint = Path(os.path.abspath(args.mountpoint))
    check_mountpoint(mountpoint)  # before the default setup creates anything
    # Absolute paths: the daemon changes to / so that it does not pin the caller's directory.
    state_dir = Path(os.path.abspath(args.state_dir)) if args.state_dir else default_state_dir()
    if args.config:
        config = load_config(args.config)
    else:
        config = default_config(state_dir)
        for warning in state_warnings(state_dir):
            print(f"fuseblk mount: warning: {warning}", file=sys.stderr)
    config = config.with_overrides(
        fallback_slots=args.fallback_slots, fallback_enabled=False if args.no_fallback else None
    )
    settings = MountSettings(mountpoint, allow_other=args.allow_other)
    build = functools.partial(build_devices, config, mountpoint, take_over=args.force_attach)
    if args.foreground:
        setup_logging(args.log_level, args.log_file)
        return run_foreground(build, settings)
    log_file = Path(os.path.abspath(args.log_file)) if args.log_file else state_dir / "fuseblk.log"
    return run_daemon(
        build, settings, setup_child=functools.partial(setup_logging, args.log_level, log_file)
    )


def run_umount(args: argparse.Namespace) -> int:
    from fuseblk.fuse.daemon import FUSEBLK_FSTYPE, mount_type

    mountpoint = os.path.abspath(args.mountpoint)
    fstype = mount_type(mountpoint)
    if fstype is None:
        raise FuseblkError(errno.EINVAL, f"{mountpoint} is not mounted")
    if fstype != FUSEBLK_FSTYPE:
        raise FuseblkError(errno.EINVAL, f"{mountpoint} is not a fuseblk mount ({fstype})")
    problem = _ask_daemon_to_shut_down(mountpoint, args.timeout, args.force)
    if problem is None and _wait_unmounted(mountpoint, args.timeout):
        return 0
    print(f"fuseblk umount: {problem or 'the daemon did not unmount in time'}", file=sys.stderr)
    for flags in ("-u", "-uz"):
        print(f"fuseblk umount: falling back to fusermount3 {flags} {mountpoint}", file=sys.stderr)
        _fusermount(flags, mountpoint)
        if _wait_unmounted(mountpoint, 5.0):
            print("fuseblk umount: unmounted; devices may not have been flushed", file=sys.stderr)
            return 1
    raise FuseblkError(errno.EBUSY, f"{mountpoint} is still mounted")


def _ask_daemon_to_shut_down(mountpoint: str, timeout: float, force: bool) -> str | None:
    """None once the daemon accepted; otherwise why it could not be asked.

    A daemon that refuses because devices are open (EBUSY) is final: that error is raised, and
    nothing falls back to fusermount behind the user's back.

    The daemon is found by its record (the mountpoint as given at mount), not by resolving the
    path: resolving stats the mount, which would hang on a hung daemon.
    """
    from fuseblk.control.client import ControlClient
    from fuseblk.control.runtime import find_daemons

    daemons = [d for d in find_daemons() if d.mountpoint == mountpoint]
    if not daemons:
        return f"no fuseblk daemon is registered for {mountpoint}"
    try:
        with ControlClient(daemons[0].socket, timeout=timeout) as client:
            client.call("shutdown", force=True) if force else client.call("shutdown")
    except FuseblkError as err:
        if err.errno == errno.EBUSY:
            raise
        return f"the daemon did not answer: {err.message}"
    return None


def _wait_unmounted(mountpoint: str, timeout: float) -> bool:
    from fuseblk.fuse.daemon import is_mountpoint

    deadline = time.monotonic() + timeout
    while is_mountpoint(mountpoint):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _fusermount(flags: str, mountpoint: str) -> None:
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    if tool is None:
        umount = shutil.which("umount")
        if umount is None:
            return
        cmd = [umount, "-l" if "z" in flags else "", mountpoint]
    else:
        cmd = [tool, flags, mountpoint]
    subprocess.run([c for c in cmd if c], check=False, capture_output=True, timeout=30)
