"""Fixtures of the integration suite; the machinery they use is in harness.py.

Teardown runs innermost first even when a test fails: ext4 unmounted and loop devices detached
(``loops``) before the fuseblk mount goes (``default_setup``).
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import FuseblkMount, LoopDevices, require_fuse_mount, require_loop_devices


@pytest.fixture
def default_setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FuseblkMount]:
    """`fuseblk mount MP --state-dir STATE` of the built-in default setup, always torn down."""
    require_fuse_mount()
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    m = FuseblkMount(mountpoint, tmp_path / "state", tmp_path / "daemon.log")
    request.node.fuseblk_mount = m
    try:
        m.mount()
        yield m
    finally:
        m.force_cleanup()


@pytest.fixture
def loops(default_setup: FuseblkMount) -> Iterator[LoopDevices]:
    """Loop devices over files of the mount; released before the mount goes away."""
    require_loop_devices()
    ld = LoopDevices()
    try:
        yield ld
    finally:
        ld.release_all()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Generator[None]:
    """A failing test's report ends with the daemon's log: the errno alone rarely says why."""
    outcome = yield
    report = outcome.get_result()
    m = getattr(item, "fuseblk_mount", None)
    if report.failed and m is not None:
        report.sections.append(("fuseblk daemon log (tail)", m.log_tail()))
