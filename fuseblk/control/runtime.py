"""Where daemons are found: the per-user runtime directory, the sockets and their records.

Every mounted daemon listens on a 0600 Unix socket in a per-user runtime directory, named after a
hash of the mountpoint, beside a small JSON record ``{mountpoint, pid, socket}``. The hash lets a
client find the daemon of a given mountpoint; the records let it find *the* daemon when only one
runs, which is why ``--mount`` is optional on the command line. The server writes the records,
the client reads them.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from fuseblk.errors import FuseblkError

log = logging.getLogger(__name__)

RUNTIME_DIR_ENV = "FUSEBLK_RUNTIME_DIR"  # overrides the runtime directory (tests, odd setups)
SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux


# --- where daemons are found -------------------------------------------------------------------


def runtime_dir() -> Path:
    """``$FUSEBLK_RUNTIME_DIR``, else ``$XDG_RUNTIME_DIR/fuseblk``, ``/run/fuseblk`` for root,
    or ``/tmp/fuseblk-UID``: private to the user, so the sockets' 0600 mode is not the only guard."""
    override = os.environ.get(RUNTIME_DIR_ENV)
    if override:
        return Path(override)
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return Path(xdg) / "fuseblk"
    if os.geteuid() == 0:
        return Path("/run/fuseblk")
    return Path(f"/tmp/fuseblk-{os.geteuid()}")


def _mount_key(mountpoint: str | os.PathLike[str]) -> str:
    # realpath: "mnt", "./mnt" and "/abs/mnt" must find the same daemon. Call this before the
    # mount is up when inside the daemon: resolving the mountpoint stats it.
    real = os.path.realpath(os.fspath(mountpoint))
    return hashlib.sha256(real.encode()).hexdigest()[:16]


def socket_path_for(mountpoint: str | os.PathLike[str]) -> Path:
    """The control socket of the daemon serving ``mountpoint`` (whether or not one runs)."""
    return runtime_dir() / f"{_mount_key(mountpoint)}.sock"


def check_private(directory: Path) -> None:
    """EPERM unless ``directory`` is ours and closed to others.

    The /tmp fallback could have been created by another user beforehand; a client trusting
    records there could be sent to an impostor's socket (and hand it a key).
    """
    try:
        st = directory.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise FuseblkError(
            errno.EPERM,
            f"runtime directory {directory} must be a directory owned by uid {os.geteuid()} "
            "with mode 0700",
        )


def _record_path(socket_path: Path) -> Path:
    return socket_path.with_suffix(".json")


@dataclass(frozen=True)
class DaemonInfo:
    """A running daemon as its record describes it."""

    mountpoint: str | None
    pid: int
    socket: Path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def find_daemons() -> list[DaemonInfo]:
    """Live daemons of this user, by mountpoint; records of dead ones are removed on the way."""
    directory = runtime_dir()
    check_private(directory)
    found: list[DaemonInfo] = []
    try:
        records = sorted(directory.glob("*.json"))
    except OSError:
        return []
    for record in records:
        info = read_record(record)
        if info is not None and _pid_alive(info.pid) and info.socket.exists():
            found.append(info)
            continue
        log.info("removing stale control record %s", record)
        record.unlink(missing_ok=True)
        record.with_suffix(".sock").unlink(missing_ok=True)
    return sorted(found, key=lambda d: (d.mountpoint or "", str(d.socket)))


def read_record(record: Path) -> DaemonInfo | None:
    try:
        obj = json.loads(record.read_text())
        pid = obj["pid"]
        sock = obj["socket"]
        mountpoint = obj.get("mountpoint")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(pid, int) or not isinstance(sock, str):
        return None
    return DaemonInfo(mountpoint if isinstance(mountpoint, str) else None, pid, Path(sock))


def write_record(socket_path: Path, mountpoint: str | None) -> Path:
    record = _record_path(socket_path)
    tmp = record.with_name(f".{record.name}.{os.getpid()}.tmp")
    tmp.write_text(
        json.dumps({"mountpoint": mountpoint, "pid": os.getpid(), "socket": str(socket_path)})
    )
    os.replace(tmp, record)  # readers see the whole record or none
    return record
