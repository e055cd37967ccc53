"""The integration suite's harness: real ``fuseblk mount``s, loop devices, ext4 and fio.

These tests drive only the command line (``python -m fuseblk ...``) and real files, so they state
what a user sees and do not depend on internals. Every fixture undoes what it did even when a test
fails, innermost first: file systems unmounted, loop devices detached, then the daemon unmounted
(``fuseblk umount``, else a lazy ``fusermount3 -uz``) and killed if it outlives its mount. A test
skips only when the machine lacks something (root, /dev/fuse, loop devices, a tool), never because
fuseblk misbehaves.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

FUSEBLK = (sys.executable, "-m", "fuseblk")
MiB = 1 << 20


def run(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    input: bytes | None = None,
    timeout: float = 120,
    check: bool = True,
) -> subprocess.CompletedProcess[bytes]:
    """Run a command; on failure the assertion message carries its output, which is the clue."""
    proc = subprocess.run(
        [os.fspath(c) for c in cmd], input=input, capture_output=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, cmd))} exited {proc.returncode}\n"
            f"stdout: {proc.stdout.decode(errors='replace')[-2000:]}\n"
            f"stderr: {proc.stderr.decode(errors='replace')[-4000:]}"
        )
    return proc


def fuseblk(*args: str | os.PathLike[str], **kw: Any) -> subprocess.CompletedProcess[bytes]:
    return run([*FUSEBLK, *args], **kw)


def mounted_paths() -> set[str]:
    """Mount points from /proc/self/mountinfo (a dead FUSE mount is listed too, unlike ismount)."""
    points = set()
    with open("/proc/self/mountinfo") as f:
        for line in f:
            field = line.split()[4]
            points.add(field.replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\"))
    return points


def in_container() -> bool:
    return Path("/.dockerenv").exists() or Path("/run/.containerenv").exists()


# -- environment ----------------------------------------------------------------------------------


def require_fuse_mount() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: mounts FUSE and ext4 file systems")
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse (in Docker: --device /dev/fuse --cap-add SYS_ADMIN)")


def require_tools(*names: str) -> None:
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        pytest.skip(f"missing tools: {', '.join(missing)}")


def require_loop_devices() -> None:
    require_tools("losetup", "mkfs.ext4", "fsck.ext4", "mount", "umount")
    if not os.path.exists("/dev/loop-control"):
        where = " in this container (pass --device /dev/loop-control)" if in_container() else ""
        pytest.skip(f"no /dev/loop-control{where}")
    proc = run(["losetup", "--find"], check=False)
    if proc.returncode != 0 or not os.path.exists(proc.stdout.decode().strip()):
        where = " visible in this container (pass --device /dev/loopN)" if in_container() else ""
        pytest.skip(f"no free loop device{where}: {proc.stderr.decode().strip()}")


# -- the daemon -----------------------------------------------------------------------------------


class FuseblkMount:
    """One mount of the built-in default setup, with the CLI verbs bound to it."""

    def __init__(self, mountpoint: Path, state_dir: Path, log_file: Path) -> None:
        self.mountpoint = mountpoint
        self.state_dir = state_dir
        self.log_file = log_file

    def dev(self, name: str) -> Path:
        return self.mountpoint / name

    @property
    def key_file(self) -> Path:
        return self.state_dir / "secure.key"

    def image(self, name: str) -> Path:
        return self.state_dir / name

    # control plane

    def cli(self, *args: str | os.PathLike[str], **kw: Any) -> subprocess.CompletedProcess[bytes]:
        return fuseblk(*args, "--mount", self.mountpoint, **kw)

    def dm(self, *args: str | os.PathLike[str], **kw: Any) -> subprocess.CompletedProcess[bytes]:
        return self.cli("dm", *args, **kw)

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.cli("stats", "--json").stdout)
        return result

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no daemon log)"

    # lifecycle

    def is_mounted(self) -> bool:
        return str(self.mountpoint) in mounted_paths()

    def mount(self) -> None:
        fuseblk(
            "mount",
            self.mountpoint,
            "--state-dir",
            self.state_dir,
            "--log-file",
            self.log_file,
            timeout=60,
        )
        assert self.is_mounted(), f"fuseblk mount returned but {self.mountpoint} is not mounted"

    def daemon_pids(self) -> list[int]:
        """The daemon's processes: fuseblk children that kept `mount MOUNTPOINT` as argv."""
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"mount" in argv and os.fsencode(self.mountpoint) in argv and b"fuseblk" in argv:
                pids.append(int(entry.name))
        return pids

    def umount(self) -> None:
        """A clean unmount: the daemon flushes every backend and exits."""
        pids = self.daemon_pids()
        fuseblk("umount", self.mountpoint, timeout=60)
        assert not self.is_mounted(), f"{self.mountpoint} still mounted after fuseblk umount"
        assert wait_for_exit(pids, 30), f"daemon {pids} still running after umount"

    def restart(self) -> None:
        self.umount()
        self.mount()

    def kill(self) -> list[int]:
        """SIGKILL the daemon mid-flight, as a crash would; returns the pids killed."""
        pids = self.daemon_pids()
        assert pids, "no daemon process found to kill"
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        assert wait_for_exit(pids, 10)
        return pids

    def force_cleanup(self) -> None:
        """Whatever state the test left: unmount by any means, kill what is left."""
        pids = self.daemon_pids()
        if self.is_mounted():
            run([*FUSEBLK, "umount", self.mountpoint], check=False, timeout=60)
        if self.is_mounted() and shutil.which("fusermount3"):
            run(["fusermount3", "-uz", self.mountpoint], check=False)
        if self.is_mounted():
            run(["umount", "-l", self.mountpoint], check=False)
        if not wait_for_exit(pids, 10):
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            wait_for_exit(pids, 10)


def wait_for_exit(pids: Sequence[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in pids if _alive(p)]
        if not alive:
            return True
        time.sleep(0.05)
    return False


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


# -- loop devices and file systems -----------------------------------------------------------------


class LoopDevices:
    """Loop devices and file system mounts a test made; released in reverse order."""

    def __init__(self) -> None:
        self.devices: list[str] = []
        self.mounts: list[Path] = []

    def attach(self, path: Path) -> str:
        dev = run(["losetup", "--find", "--show", path]).stdout.decode().strip()
        self.devices.append(dev)
        return dev

    def detach(self, dev: str) -> None:
        run(["losetup", "-d", dev])
        self.devices.remove(dev)

    def mount(self, dev: str, target: Path) -> None:
        target.mkdir(exist_ok=True)
        run(["mount", "-t", "ext4", dev, target])
        self.mounts.append(target)

    def umount(self, target: Path) -> None:
        run(["umount", target])
        self.mounts.remove(target)

    def release_all(self) -> None:
        for target in reversed(self.mounts):
            if run(["umount", target], check=False).returncode != 0:
                run(["umount", "-l", target], check=False)
        self.mounts.clear()
        for dev in reversed(self.devices):
            run(["losetup", "-d", dev], check=False)
        self.devices.clear()


def write_tree(root: Path, seed: int) -> dict[str, str]:
    """A few nested directories of files of awkward sizes; returns path -> sha256."""
    rng = random.Random(seed)
    digests = {}
    for d in range(4):
        sub = root / f"dir{d}" / f"nested{d % 2}"
        sub.mkdir(parents=True, exist_ok=True)
        for i in range(6):
            data = rng.randbytes(rng.choice([0, 1, 511, 4096, 4097, 65536 + 3, 1 << 20]))
            path = sub / f"file{i}.bin"
            path.write_bytes(data)
            digests[str(path.relative_to(root))] = hashlib.sha256(data).hexdigest()
    (root / "dir0" / "link").symlink_to("nested0/file0.bin")
    return digests


def read_tree(root: Path) -> dict[str, str]:
    digests = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            if path.is_symlink() or path.parent.name == "lost+found":
                continue
            digests[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


# -- fio --------------------------------------------------------------------------------------------


def fio_command(
    filename: Path,
    *,
    rw: str,
    size: int,
    offset: int = 0,
    numjobs: int = 4,
    bs: str = "4k",
    runtime: float | None = None,
) -> list[str]:
    """A verifying fio job: every job owns its own `size` bytes, crc32c checked as it goes."""
    cmd = [
        "fio",
        "--name=verify",
        f"--filename={filename}",
        f"--rw={rw}",
        f"--bs={bs}",
        f"--size={size}",
        f"--offset={offset}",
        f"--offset_increment={size}",
        f"--numjobs={numjobs}",
        "--direct=1",
        "--ioengine=psync",
        "--verify=crc32c",
        "--do_verify=1",
        "--verify_fatal=1",
        "--verify_backlog=64",
        "--verify_state_save=0",  # no local-verify-*.state files in the caller's directory
        "--randrepeat=0",
        "--group_reporting",
        "--output-format=json",
    ]
    if runtime is not None:
        cmd += ["--time_based", f"--runtime={runtime}"]
    return cmd


def check_fio(
    proc: subprocess.CompletedProcess[bytes] | tuple[int, bytes, bytes],
) -> dict[str, Any]:
    """fio's JSON report, after asserting the run and every job ended without an error."""
    if isinstance(proc, tuple):
        code, out, err = proc
    else:
        code, out, err = proc.returncode, proc.stdout, proc.stderr
    text = out.decode(errors="replace")
    assert code == 0, f"fio exited {code}\n{err.decode(errors='replace')[-3000:]}\n{text[-3000:]}"
    report: dict[str, Any] = json.loads(text[text.index("{") :])
    for job in report["jobs"]:
        assert job["error"] == 0, f"fio job {job['jobname']} error {job['error']}"
    return report


def fio_bytes(report: dict[str, Any], direction: str) -> int:
    return sum(int(job[direction]["io_bytes"]) for job in report["jobs"])


# -- stats ------------------------------------------------------------------------------------------


def inline_counters(stats: dict[str, Any]) -> tuple[int, int]:
    """(bios, bytes) the emulated hardware of every backend en/decrypted itself."""
    backends = stats["backends"].values()
    return (
        sum(int(b.get("inline_bios", 0)) for b in backends),
        sum(int(b.get("inline_bytes", 0)) for b in backends),
    )


def fallback_counters(stats: dict[str, Any]) -> tuple[int, int]:
    """(bios, bytes) the software fallback en/decrypted."""
    fb = stats["fallback"]
    return int(fb.get("bios", 0)), int(fb.get("bytes", 0))


class BackgroundFio:
    """fio running while the test changes the device under it; killed if the test fails first."""

    def __init__(self, cmd: Sequence[str]) -> None:
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def running(self) -> bool:
        return self.proc.poll() is None

    def finish(self, timeout: float = 120) -> dict[str, Any]:
        out, err = self.proc.communicate(timeout=timeout)
        return check_fio((self.proc.returncode, out, err))

    def __enter__(self) -> BackgroundFio:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()
