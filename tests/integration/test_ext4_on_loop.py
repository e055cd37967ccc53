"""An ext4 file system on `secure` (through a loop device) is clean and survives a daemon restart."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import pytest
from harness import FuseblkMount, LoopDevices, run

pytestmark = pytest.mark.integration


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
