"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from control_helpers import private_runtime_dir

from fuseblk.blkcrypto.fallback import configure_fallback


@pytest.fixture
def fresh_global_fallback() -> Iterator[None]:
    """A new blk-crypto-fallback (the process-wide one, as in the kernel) before and after the
    test, so keyslots and counters a test leaves there never reach the next one. Modules whose
    tests go through the fallback use it with ``pytestmark``."""
    configure_fallback()
    yield
    configure_fallback()


@pytest.fixture
def rundir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private runtime directory for control sockets, as the daemon's would be."""
    yield from private_runtime_dir(monkeypatch)
