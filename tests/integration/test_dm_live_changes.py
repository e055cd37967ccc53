"""Tables change under running I/O the way dmsetup changes them: nothing written is lost.

- reloading an equivalent table and suspending/resuming in a loop while fio verifies;
- flakey down intervals and error tables fail I/O with EIO, and what was written while the
  device was up is intact once a linear table is back;
- a raid1 leg failed by message in the middle of fio: the surviving leg has everything.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from harness import (
    BackgroundFio,
    FuseblkMount,
    MiB,
    fio_bytes,
    fio_command,
    require_tools,
    run,
)

pytestmark = pytest.mark.integration

SECTORS_PER_MIB = MiB // 512
LENGTH = 32 * SECTORS_PER_MIB  # every device here is 32 MiB
FIO_JOB = 4 * MiB  # 4 jobs of 4 MiB each, looped for FIO_SECONDS
FIO_SECONDS = 4


@pytest.fixture
def fio_setup(default_setup: FuseblkMount) -> FuseblkMount:
    require_tools("fio", "dd")
    return default_setup


def replace_table(m: FuseblkMount, name: str, table: str, tmp_path: Path) -> None:
    """dmsetup's way: load into the inactive slot, suspend, resume (the new table goes live)."""
    table_file = tmp_path / f"{name}.table"
    table_file.write_text(table)
    m.dm("load", name, "--table-file", table_file)
    m.dm("suspend", name)
    m.dm("resume", name)


def dd_write(path: Path, data_file: Path, offset: int = 0, check: bool = True) -> str:
    out = [f"of={path}", f"seek={offset // 65536}", "oflag=direct", "conv=notrunc,fsync"]
    proc = run(["dd", f"if={data_file}", "bs=64k", *out], check=check)
    return proc.stderr.decode(errors="replace") if proc.returncode else ""


def dd_read(path: Path, nbytes: int, offset: int = 0, check: bool = True) -> tuple[bytes, str]:
    blocks = [f"count={nbytes // 65536}", f"skip={offset // 65536}"]
    proc = run(
        ["dd", f"if={path}", "of=/dev/stdout", "bs=64k", *blocks, "iflag=direct"], check=check
    )
    return proc.stdout, proc.stderr.decode(errors="replace") if proc.returncode else ""


def equivalent_tables(kind: str, start: int) -> tuple[str, str]:
    """The same mapping as one table line and as two: a reload must change nothing fio can see.

    For default-key the second line's iv_offset carries on where the first stopped, so every
    sector keeps its DUN; a wrong DUN after a reload would decrypt fio's data to garbage.
    """
    half = LENGTH // 2
    if kind == "linear":
        return (
            f"0 {LENGTH} linear base {start}\n",
            f"0 {half} linear base {start}\n{half} {half} linear base {start + half}\n",
        )
    key = os.urandom(64).hex()
    opts = "2 sector_size:4096 iv_large_sectors"
    return (
        f"0 {LENGTH} default-key aes-xts-plain64 {key} 0 base {start} {opts}\n",
        f"0 {half} default-key aes-xts-plain64 {key} 0 base {start} {opts}\n"
        f"{half} {half} default-key aes-xts-plain64 {key} {half} base {start + half} {opts}\n",
    )


@pytest.mark.parametrize("kind", ["linear", "default-key"])
def test_reload_and_suspend_resume_while_fio_runs_lose_nothing(
    fio_setup: FuseblkMount, tmp_path: Path, kind: str
) -> None:
    m = fio_setup
    start = 400 * SECTORS_PER_MIB  # on inline.img, away from the other tests' regions
    one_piece, two_pieces = equivalent_tables(kind, start)
    m.dm("create", "live", "--table", one_piece)
    # fio works across the split point (8-24 MiB); a reference written once under the one-line
    # table (28-32 MiB, in the second line's range) must read back the same under either table.
    reference = os.urandom(4 * MiB)
    (tmp_path / "reference").write_bytes(reference)
    dd_write(m.dev("live"), tmp_path / "reference", offset=28 * MiB)

    cycles = 0
    cmd = fio_command(
        m.dev("live"), rw="randwrite", size=FIO_JOB, offset=8 * MiB, runtime=FIO_SECONDS
    )
    with BackgroundFio(cmd) as fio:
        while fio.running():
            replace_table(m, "live", two_pieces if cycles % 2 == 0 else one_piece, tmp_path)
            cycles += 1
            back, _ = dd_read(m.dev("live"), len(reference), offset=28 * MiB)
            assert back == reference, f"reference data changed after reload {cycles}"
        report = fio.finish()

    assert cycles >= 2, "the table never changed while fio ran"
    assert fio_bytes(report, "write") > 0 and fio_bytes(report, "read") > 0  # read = verified
    assert m.dm("table", "live").stdout.decode().count(kind) in (1, 2)


def test_flakey_down_interval_and_error_table_give_eio_and_keep_earlier_writes(
    fio_setup: FuseblkMount, tmp_path: Path
) -> None:
    m = fio_setup
    linear = f"0 {LENGTH} linear plain 0"
    m.dm("create", "flaky", "--table", linear)
    data = os.urandom(4 * MiB)
    data_file = tmp_path / "data.bin"
    data_file.write_bytes(data)
    dd_write(m.dev("flaky"), data_file)

    for broken in (f"0 {LENGTH} flakey plain 0 0 5", f"0 {LENGTH} error"):
        replace_table(m, "flaky", broken, tmp_path)
        err = dd_write(m.dev("flaky"), data_file, check=False)
        assert "Input/output error" in err, f"{broken}: write did not fail with EIO: {err!r}"
        _, err = dd_read(m.dev("flaky"), MiB, check=False)
        assert "Input/output error" in err, f"{broken}: read did not fail with EIO: {err!r}"

    replace_table(m, "flaky", linear, tmp_path)
    back, _ = dd_read(m.dev("flaky"), len(data))
    assert back == data


def wait_for_io(m: FuseblkMount, name: str, timeout: float = 20) -> None:
    """Until the device has seen some I/O (fio has started writing)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counters = m.stats()["devices"].get(name, {})
        if any(isinstance(v, int) and v > 0 for v in counters.values()):
            return
        time.sleep(0.1)
    raise AssertionError(f"no I/O reached {name} within {timeout}s")


def test_raid1_leg_failure_during_fio_loses_nothing(fio_setup: FuseblkMount) -> None:
    m = fio_setup
    base_start = 500 * SECTORS_PER_MIB
    plain_start = 100 * SECTORS_PER_MIB
    m.dm(
        "create",
        "mirror",
        "--table",
        f"0 {LENGTH} raid1 2 base {base_start} plain {plain_start} 1 nosync",
    )

    cmd = fio_command(m.dev("mirror"), rw="randwrite", size=FIO_JOB, runtime=FIO_SECONDS)
    with BackgroundFio(cmd) as fio:
        wait_for_io(m, "mirror")
        m.dm("message", "mirror", "0", "fail", "1")
        report = fio.finish()

    assert fio_bytes(report, "read") > 0  # fio verified what it read back
    status = m.dm("status", "mirror").stdout.decode()
    assert " AD " in status, f"leg 1 should be failed: {status!r}"
    nbytes = LENGTH * 512
    mirrored, _ = dd_read(m.dev("mirror"), nbytes)
    survivor, _ = dd_read(m.dev("base"), nbytes, offset=base_start * 512)
    assert mirrored == survivor
