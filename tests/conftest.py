"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from control_helpers import private_runtime_dir


@pytest.fixture
def rundir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private runtime directory for control sockets, as the daemon's would be."""
    yield from private_runtime_dir(monkeypatch)
