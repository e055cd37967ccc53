"""kill -9 of the daemon in the middle of writes: after a restart every write that fsync
acknowledged is there, both images' headers check clean and their locks are free again."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest
from harness import FuseblkMount, MiB, fuseblk, require_tools, run

pytestmark = pytest.mark.integration

BLOCK = 64 * 1024
LEGACY_REGION = 800 * MiB  # secure beyond 768 MiB lies on legacy.img, through the fallback
ACKED_BEFORE_KILL = 48

# Writes block i (alternately near the start of secure, inline, and beyond 768 MiB, fallback),
# fsyncs every 4 blocks and then reports how many blocks are durable. Runs until the mount dies.
WRITER = """
import os, random, sys
path, seed, block, legacy = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
fd = os.open(path, os.O_WRONLY)
i = 0
while True:
    data = random.Random(seed * 1_000_003 + i).randbytes(block)
    offset = (i // 2) * block + (legacy if i % 2 else 0)
    os.pwrite(fd, data, offset)
    i += 1
    if i % 4 == 0:
        os.fsync(fd)
        print(i, flush=True)
"""


def block_offset(i: int) -> int:
    return (i // 2) * BLOCK + (LEGACY_REGION if i % 2 else 0)


def expected_block(seed: int, i: int) -> bytes:
    return random.Random(seed * 1_000_003 + i).randbytes(BLOCK)


def test_kill_9_during_writes_keeps_every_fsynced_write(default_setup: FuseblkMount) -> None:
    require_tools("fusermount3")
    m = default_setup
    seed = random.randrange(1 << 30)
    argv = [str(m.dev("secure")), str(seed), str(BLOCK), str(LEGACY_REGION)]
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        acked = 0
        assert writer.stdout is not None
        for line in writer.stdout:
            acked = int(line)
            if acked >= ACKED_BEFORE_KILL:
                break
        assert acked >= ACKED_BEFORE_KILL, f"writer stopped early: {writer.stderr.read()!r}"
        m.kill()
        out, _err = writer.communicate(timeout=30)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.communicate()
    acked = max([acked, *(int(n) for n in out.split())])
    assert writer.returncode != 0, "the writer should have lost its device with the daemon"

    assert m.is_mounted(), "after kill -9 the FUSE mount is expected to be stale, not gone"
    run(["fusermount3", "-uz", m.mountpoint])
    for image in ("inline.img", "legacy.img"):
        fuseblk("image", "check", m.image(image))

    m.mount()  # takes the images' locks again: the dead daemon's locks died with it
    with open(m.dev("secure"), "rb") as f:
        for i in range(acked):
            f.seek(block_offset(i))
            assert f.read(BLOCK) == expected_block(seed, i), f"acknowledged block {i} lost"
