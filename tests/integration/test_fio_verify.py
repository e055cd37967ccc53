"""fio verifies what it wrote (crc32c, 4 jobs, direct I/O) on every kind of device, and the
counters show which path encrypted it: the emulated inline hardware or the software fallback."""

from __future__ import annotations

import os

import pytest
from harness import (
    FuseblkMount,
    MiB,
    check_fio,
    fallback_counters,
    fio_bytes,
    fio_command,
    inline_counters,
    require_tools,
    run,
)

pytestmark = pytest.mark.integration

JOB_SIZE = 4 * MiB  # per job; 4 jobs
SECTORS_PER_MIB = MiB // 512


def fio_verify(path: os.PathLike[str], rw: str, offset: int = 0, bs: str = "4k") -> dict:
    return check_fio(run(fio_command(path, rw=rw, size=JOB_SIZE, offset=offset, bs=bs)))


@pytest.fixture
def fio_setup(default_setup: FuseblkMount) -> FuseblkMount:
    require_tools("fio")
    return default_setup


@pytest.mark.parametrize("device", ["secure", "plain"])
def test_fio_verifies_sequential_and_random_writes(fio_setup: FuseblkMount, device: str) -> None:
    path = fio_setup.dev(device)
    seq = fio_verify(path, "write", bs="64k")
    assert fio_bytes(seq, "write") == 4 * JOB_SIZE
    rand = fio_verify(path, "randwrite", offset=4 * JOB_SIZE)
    assert fio_bytes(rand, "write") == 4 * JOB_SIZE


def test_fio_verifies_on_a_striped_device_over_base_and_plain(fio_setup: FuseblkMount) -> None:
    m = fio_setup
    length = 64 * SECTORS_PER_MIB
    base_offset = 600 * SECTORS_PER_MIB  # on inline.img, far from what secure's tests touch
    m.dm("create", "stripe", "--table", f"0 {length} striped 2 128 base {base_offset} plain 0")
    seq = fio_verify(m.dev("stripe"), "write", bs="64k")
    assert fio_bytes(seq, "write") == 4 * JOB_SIZE
    fio_verify(m.dev("stripe"), "randwrite", offset=4 * JOB_SIZE)


def test_secure_first_region_is_encrypted_by_the_inline_hardware(fio_setup: FuseblkMount) -> None:
    m = fio_setup
    before = m.stats()
    report = fio_verify(m.dev("secure"), "write", bs="64k")
    after = m.stats()

    moved = fio_bytes(report, "write") + fio_bytes(report, "read")
    assert inline_counters(after)[1] - inline_counters(before)[1] >= moved
    assert inline_counters(after)[0] > inline_counters(before)[0]
    assert fallback_counters(after) == fallback_counters(before)


def test_fio_across_secure_inline_to_fallback_boundary_uses_both_paths(
    fio_setup: FuseblkMount,
) -> None:
    """secure's bytes from 768 MiB on lie on legacy.img, which has no inline encryption: writes
    there go through the fallback, writes before it through the hardware, and a 1 MiB write
    across the point is split between the two. Everything reads back verified."""
    m = fio_setup
    secure = m.dev("secure")
    start = 768 * MiB - 2 * JOB_SIZE  # jobs 0 and 1 end before 768 MiB, jobs 2 and 3 after it
    before = m.stats()
    aligned = check_fio(run(fio_command(secure, rw="write", size=JOB_SIZE, offset=start, bs="1M")))
    after = m.stats()
    assert inline_counters(after)[1] - inline_counters(before)[1] >= 2 * JOB_SIZE
    assert fallback_counters(after)[1] - fallback_counters(before)[1] >= 2 * JOB_SIZE
    assert fio_bytes(aligned, "write") == 4 * JOB_SIZE

    # Shifted by half a MiB, job 1's last write spans [767.5 MiB, 768.5 MiB).
    shifted = fio_command(secure, rw="write", size=JOB_SIZE, offset=start + MiB // 2, bs="1M")
    assert fio_bytes(check_fio(run(shifted)), "write") == 4 * JOB_SIZE


@pytest.mark.parametrize(
    ("cipher", "key_bytes"),
    [("xchacha12,aes-adiantum-plain64", 32), ("aes-xts-plain64", 64)],
    ids=["adiantum", "aes-xts"],
)
def test_default_key_over_legacy_hardware_is_served_by_the_fallback(
    fio_setup: FuseblkMount, cipher: str, key_bytes: int
) -> None:
    m = fio_setup
    length = 64 * SECTORS_PER_MIB
    key = os.urandom(key_bytes).hex()
    m.dm(
        "create",
        "legacy-crypt",
        "--table",
        f"0 {length} default-key {cipher} {key} 0 plain 0 2 sector_size:4096 iv_large_sectors",
    )
    before = m.stats()
    report = fio_verify(m.dev("legacy-crypt"), "write", bs="64k")
    after = m.stats()

    moved = fio_bytes(report, "write") + fio_bytes(report, "read")
    assert fallback_counters(after)[1] - fallback_counters(before)[1] >= moved
    assert fallback_counters(after)[0] > fallback_counters(before)[0]
    assert inline_counters(after) == inline_counters(before)
    table = m.dm("table", "legacy-crypt").stdout.decode()
    assert key not in table, "the key must not appear in table output without --showkeys"
