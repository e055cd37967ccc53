"""An ext4 file system on `secure` (through a loop device) is clean and survives a daemon restart."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from harness import FuseblkMount, LoopDevices, read_tree, run, write_tree

pytestmark = pytest.mark.integration


def test_ext4_on_secure_is_clean_and_survives_a_daemon_restart(
    default_setup: FuseblkMount, loops: LoopDevices, tmp_path: Path
) -> None:
    m = default_setup
    fs = tmp_path / "fs"

    dev = loops.attach(m.dev("secure"))
    run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-E", "nodiscard", dev], timeout=180)
    loops.mount(dev, fs)
    expected = write_tree(fs, seed=1)
    os.sync()
    loops.umount(fs)
    run(["fsck.ext4", "-fn", dev], timeout=180)
    loops.detach(dev)

    m.restart()

    dev = loops.attach(m.dev("secure"))
    run(["fsck.ext4", "-fn", dev], timeout=180)
    loops.mount(dev, fs)
    assert (fs / "dir0" / "link").resolve() == (fs / "dir0" / "nested0" / "file0.bin")
    assert read_tree(fs) == expected
