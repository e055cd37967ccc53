"""Helpers for FUSE-layer tests: a small manager over RAM devices, and real mounts.

``MemoryManager`` is what the FUSE layer sees of a manager; its devices are device_helpers'
``MemDevice``, which refuses I/O not in whole logical blocks, so tests catch any unaligned bio
reaching a device. ``serve_in_thread`` mounts any manager in-process (the FUSE server runs in
its own thread with its own trio loop, the test does plain blocking file I/O); ``daemon_mount``
runs the real ``fuseblk mount`` in a subprocess. Both always unmount in teardown, even when the
test failed or the daemon hung.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from device_helpers import MemDevice

from fuseblk.bio import Bio
from fuseblk.dm.events import DeviceAdded, DeviceRemoved, DeviceRenamed, DeviceResized, DmEvent
from fuseblk.errors import FuseblkError

FUSERMOUNT = shutil.which("fusermount3") or "fusermount3"


def have_fuse() -> bool:
    return (
        os.geteuid() == 0
        and os.path.exists("/dev/fuse")
        and shutil.which("fusermount3") is not None
    )


needs_fuse = pytest.mark.skipif(not have_fuse(), reason="needs root, /dev/fuse and fusermount3")


class MemoryManager:
    """The part of DeviceManager the FUSE layer uses, over MemDevices."""

    def __init__(self) -> None:
        self.devices: dict[str, MemDevice] = {}
        self.listeners: list[Callable[[DmEvent], Any]] = []
        self.flushed = 0
        self.closed = False

    def _notify(self, event: DmEvent) -> None:
        for listener in list(self.listeners):
            listener(event)

    def add(self, device: MemDevice) -> MemDevice:
        self.devices[device.name] = device
        self._notify(DeviceAdded(device.name))
        return device

    def remove(self, name: str) -> None:
        del self.devices[name]
        self._notify(DeviceRemoved(name))

    def rename(self, old: str, new: str) -> None:
        self.devices[new] = self.devices.pop(old)
        self.devices[new].name = new
        self._notify(DeviceRenamed(old, new))

    def resize(self, name: str, size: int) -> None:
        dev = self.devices[name]
        dev.data = dev.data[:size] + bytearray(max(0, size - len(dev.data)))
        dev.size = size
        self._notify(DeviceResized(name, size))

    def names(self) -> list[str]:
        return list(self.devices)

    def get(self, name: str) -> MemDevice:
        try:
            return self.devices[name]
        except KeyError:
            raise FuseblkError(errno.ENXIO, f"no device {name!r}") from None

    def block_names(self) -> list[str]:
        return list(self.devices)

    block_device = get

    async def lift_suspensions(self) -> list[str]:
        return []

    async def flush_all(self) -> None:
        self.flushed += 1
        for dev in self.devices.values():
            await dev.submit(Bio.flush())

    async def close(self) -> None:
        self.closed = True


def is_mounted(path: Path) -> bool:
    from fuseblk.fuse.daemon import is_mountpoint

    return is_mountpoint(path)


def eventually(check: Callable[[], object], timeout: float = 10.0) -> None:
    """Wait for what happens asynchronously (kernel entry invalidation, a daemon's progress)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def force_unmount(path: Path) -> None:
    """Last resort in teardown: lazy unmount, ignoring 'not mounted'."""
    if is_mounted(path):
        subprocess.run([FUSERMOUNT, "-uz", str(path)], check=False, capture_output=True)


@contextlib.contextmanager
def serve_in_thread(manager: Any, mountpoint: Path, **options: Any) -> Iterator[Path]:
    """Mount ``manager`` at ``mountpoint`` from a thread of this process; unmount on exit."""
    from fuseblk.fuse.daemon import MountSettings, serve

    settings = MountSettings(mountpoint=mountpoint, **options)
    ready = threading.Event()
    state: dict[str, Any] = {}

    async def run() -> None:
        state["token"] = trio.lowlevel.current_trio_token()
        try:
            await serve(manager, settings, on_ready=ready.set, handle_signals=False, control=False)
        except BaseException as exc:
            state["error"] = exc
            raise
        finally:
            ready.set()

    def thread_main() -> None:
        with contextlib.suppress(BaseException):
            trio.run(run)

    thread = threading.Thread(target=thread_main, name="fuse-server", daemon=True)
    thread.start()
    try:
        if not ready.wait(timeout=20) or "error" in state:
            raise RuntimeError(f"mount did not come up: {state.get('error')!r}")
        yield mountpoint
    finally:
        token = state.get("token")
        if token is not None and thread.is_alive():
            from fuseblk.fuse.daemon import request_shutdown

            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(request_shutdown, trio_token=token)
        thread.join(timeout=20)
        force_unmount(mountpoint)
        thread.join(timeout=5)


def fuseblk_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "fuseblk", *args]


@contextlib.contextmanager
def daemon_mount(mountpoint: Path, *args: str, timeout: float = 60) -> Iterator[int]:
    """``fuseblk mount MOUNTPOINT ARGS`` (daemonized); yields the daemon's pid; always unmounts."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        fuseblk_cmd("mount", str(mountpoint), *args),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    try:
        if proc.returncode != 0:
            raise RuntimeError(f"fuseblk mount failed ({proc.returncode}): {proc.stderr.strip()}")
        yield daemon_pid(mountpoint)
    finally:
        pid = _maybe_pid(mountpoint)
        if is_mounted(mountpoint):
            subprocess.run(
                fuseblk_cmd("umount", str(mountpoint)),
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        force_unmount(mountpoint)
        if pid is not None:
            _reap(pid)


def daemon_pid(mountpoint: Path) -> int:
    pid = _maybe_pid(mountpoint)
    if pid is None:
        raise RuntimeError(f"no daemon pid recorded for {mountpoint}")
    return pid


def _maybe_pid(mountpoint: Path) -> int | None:
    """The daemon's pid from its control record (the mountpoint as it was given, absolute)."""
    from fuseblk.control.runtime import find_daemons

    wanted = os.path.abspath(mountpoint)
    for daemon in find_daemons():
        if daemon.mountpoint == wanted:
            return daemon.pid
    return None


def _reap(pid: int, timeout: float = 10) -> None:
    """Wait for the daemon to exit; kill it if it hangs, so no test leaves one behind."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, 9)
