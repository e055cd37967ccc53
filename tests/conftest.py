"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from control_helpers import private_runtime_dir

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
