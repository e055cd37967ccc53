"""A table naming a file inside the daemon's own mount fails at once and the daemon keeps serving.

Looking at its own mount would make the daemon's only thread wait for itself (the kernel sends
the lookup to that very thread): the socket, every device file and even SIGTERM would hang. So a
reference into the mount is refused before anything is looked up, and whatever a textual check
cannot see (a symlink into the mount) is cut short by the bounded open instead.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from harness import FuseblkMount

pytestmark = pytest.mark.integration

CLI_TIMEOUT = 60  # seconds: a daemon that deadlocked makes the command time out instead
AT_ONCE = 5  # seconds: a refusal that needs no lookup
A_FEW_SECONDS = 20  # the daemon's bounded wait for an open, with room for a loaded machine


def refused_create(m: FuseblkMount, device: Path | str) -> tuple[str, float]:
    """``dm create`` of a linear table over ``device``; its one line of error and its duration."""
    start = time.monotonic()
    result = m.dm(
        "create", "x", "--table", f"0 8 linear {device} 0", check=False, timeout=CLI_TIMEOUT
    )
    elapsed = time.monotonic() - start
    assert result.returncode != 0, "a table over the daemon's own mount was accepted"
    stderr = result.stderr.decode(errors="replace")
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0], elapsed


def assert_still_serving(m: FuseblkMount) -> None:
    """The control socket answers, the refused device does not exist, device files read."""
    listing = m.dm("ls", timeout=CLI_TIMEOUT).stdout.decode()
    assert "plain" in listing and "x" not in listing.split()
    with open(m.dev("plain"), "rb") as f:
        assert len(f.read(4096)) == 4096
    assert m.dm("create", "y", "--table", "0 8 zero", timeout=CLI_TIMEOUT).returncode == 0
    m.dm("remove", "y", timeout=CLI_TIMEOUT)


def test_a_table_naming_a_file_inside_the_own_mount_is_refused_at_once(
    default_setup: FuseblkMount,
) -> None:
    m = default_setup
    line, elapsed = refused_create(m, m.dev("plain"))
    assert "the mount this daemon serves" in line and str(m.mountpoint) in line
    assert elapsed < AT_ONCE  # refused before any lookup, not after a wait
    assert_still_serving(m)


def test_the_own_mountpoint_itself_is_refused_too(default_setup: FuseblkMount) -> None:
    m = default_setup
    line, _ = refused_create(m, m.mountpoint)
    assert "the mount this daemon serves" in line
    assert_still_serving(m)


def test_a_symlink_into_the_own_mount_fails_cleanly_within_the_open_timeout(
    default_setup: FuseblkMount, tmp_path: Path
) -> None:
    m = default_setup
    link = tmp_path / "innocent.img"
    link.symlink_to(m.dev("plain"))
    line, elapsed = refused_create(m, link)
    # Refused once resolved if the kernel answered the lookups from its cache, else the open
    # gave up waiting: either way one clear line, quickly, and the daemon unharmed.
    assert "the mount this daemon serves" in line or "no answer after" in line
    assert elapsed < A_FEW_SECONDS
    assert_still_serving(m)
