"""Shared by the control-plane tests: a daemon's control server in a background thread.

``DaemonThread`` runs :func:`fuseblk.control.serve_control` in its own trio loop, as the FUSE
daemon does, so a CLI subprocess or a synchronous client can talk to it over the real socket.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from fuseblk.cli import main
from fuseblk.control.runtime import RUNTIME_DIR_ENV, socket_path_for
from fuseblk.control.server import serve_control
from fuseblk.dm.manager import DeviceManager
from fuseblk.hw.factory import create_backend
from fuseblk.hw.profiles import load_profile


def private_runtime_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """For a ``rundir`` fixture: a private runtime directory with a short path (Unix socket paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="fbctl-", dir="/tmp"))
    monkeypatch.setenv(RUNTIME_DIR_ENV, str(path))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class DaemonThread:
    """serve_control over a manager made by ``factory`` in a thread's own trio loop."""

    def __init__(self, factory: Callable[[], Awaitable[Any]], mountpoint: Path) -> None:
        self.factory = factory
        self.mountpoint = mountpoint
        self.socket_path = socket_path_for(mountpoint)
        self.manager: Any = None
        self.shutdown_requested = threading.Event()
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None
        self._thread = threading.Thread(target=self._run, name="control-server", daemon=True)

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # reported by start()/stop()
            self._error = exc
            self._started.set()

    async def _main(self) -> None:
        self.manager = await self.factory()
        try:
            async with trio.open_nursery() as nursery:
                self._scope = nursery.cancel_scope
                self._token = trio.lowlevel.current_trio_token()

                def on_shutdown() -> None:
                    self.shutdown_requested.set()
                    nursery.cancel_scope.cancel()

                await nursery.start(
                    lambda task_status: serve_control(
                        self.manager,
                        self.socket_path,
                        on_shutdown=on_shutdown,
                        mountpoint=self.mountpoint,
                        task_status=task_status,
                    )
                )
                self._started.set()
        finally:
            close = getattr(self.manager, "close", None)
            if close is not None:
                await close()

    def start(self) -> DaemonThread:
        self._thread.start()
        if not self._started.wait(30):
            raise RuntimeError("control server did not start")
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._thread.is_alive() and self._token is not None and self._scope is not None:
            scope = self._scope
            try:
                self._token.run_sync_soon(scope.cancel)
            except trio.RunFinishedError:
                pass
        self._thread.join(30)
        if self._error is not None:
            raise self._error

    def run(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Run ``await fn(*args)`` in the daemon's trio loop (e.g. I/O on its devices)."""
        return trio.from_thread.run(fn, *args, trio_token=self._token)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()


def cli_run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``fuseblk ARGV`` in-process: its exit status and what it printed to stdout and stderr."""
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def cli_exit_status(argv: list[str]) -> int:
    """``fuseblk ARGV``'s exit status in-process, argparse's own usage errors (SystemExit)
    included."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


def cli_env(runtime: Path) -> dict[str, str]:
    """The environment a CLI subprocess needs to find the test's daemon."""
    env = dict(os.environ)
    env[RUNTIME_DIR_ENV] = str(runtime)
    env.pop("XDG_RUNTIME_DIR", None)
    return env


MiB = 1 << 20
IMAGE_SIZE = 16 * MiB


async def make_images(directory: Path) -> dict[str, Path]:
    """Two backend images: ``inline`` (UFS-like keyslot hardware) and ``legacy`` (no crypto)."""
    paths = {}
    for name, profile in (("inline", "ufs"), ("legacy", "none")):
        path = directory / f"{name}.img"
        if not path.exists():
            await create_backend(path, IMAGE_SIZE, load_profile(profile), label=name).close()
        paths[name] = path
    return paths


def manager_factory(directory: Path) -> Callable[[], Awaitable[DeviceManager]]:
    """A DeviceManager with the two images attached as backends ``inline`` and ``legacy``."""

    async def make() -> DeviceManager:
        manager = DeviceManager()
        for name, path in (await make_images(directory)).items():
            manager.add_backend(name, path)
        return manager

    return make
