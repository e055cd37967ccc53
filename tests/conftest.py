"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from control_helpers import DaemonThread, manager_factory, private_runtime_dir

from fuseblk.dm.manager import DeviceManager


@pytest.fixture
def rundir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private runtime directory for control sockets, as the daemon's would be."""
    yield from private_runtime_dir(monkeypatch)


@pytest.fixture
async def manager() -> AsyncIterator[DeviceManager]:
    """An empty manager, closed (devices removed, images detached) even when the test fails."""
    dm = DeviceManager()
    try:
        yield dm
    finally:
        await dm.close()


@pytest.fixture
def daemon(rundir: Path, tmp_path: Path) -> Iterator[DaemonThread]:
    """A daemon (in a thread) over images attached as ``inline`` and ``legacy``, stopped even
    when the test fails."""
    d = DaemonThread(manager_factory(tmp_path), tmp_path / "mnt").start()
    try:
        yield d
    finally:
        d.stop()
