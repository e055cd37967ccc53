"""``fuseblk stats``: the daemon's counters per device and backend, as aligned tables or JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from control_helpers import DaemonThread, cli_env, manager_factory

from fuseblk.bio import Bio
from fuseblk.cli import main
from fuseblk.cli.output import stats_lines

KEY_HEX = bytes(range(64)).hex()
SECTORS = 16 * 1024 * 1024 // 512
TABLES = {
    "base": f"0 {SECTORS // 2} linear inline 0\n{SECTORS // 2} {SECTORS // 2} linear legacy 0\n",
    "secure": f"0 {SECTORS} default-key aes-xts-plain64 {KEY_HEX} 0 base 0 2 sector_size:4096 iv_large_sectors\n",
}


@pytest.fixture
def daemon(rundir: Path, tmp_path: Path) -> Iterator[DaemonThread]:
    d = DaemonThread(manager_factory(tmp_path), tmp_path / "mnt").start()
    try:
        for name, table in TABLES.items():
            fallback = "target" if name == "base" else "device"
            assert main(["dm", "create", name, "--table", table, "--fallback", fallback]) == 0
        yield d
    finally:
        d.stop()


def _io_through_secure(daemon: DaemonThread) -> None:
    """One write served inline (first half of base) and one by the fallback (second half)."""

    async def io() -> None:
        dev = daemon.manager.get("secure")
        await dev.submit(Bio.write(0, b"i" * 4096))
        await dev.submit(Bio.write(SECTORS // 2 * 512, b"f" * 4096))

    daemon.run(io)


def test_stats_table_has_a_column_per_device_and_backend(
    daemon: DaemonThread, capsys: pytest.CaptureFixture[str]
) -> None:
    _io_through_secure(daemon)
    capsys.readouterr()
    assert main(["stats"]) == 0
    out = capsys.readouterr().out
    sections = out.split("\n\n")
    devices = sections[0].splitlines()
    assert devices[0].split() == ["DEVICES", "base", "secure"]
    rows = {line.split()[0]: line.split()[1:] for line in devices[1:]}
    assert rows["writes"] == ["2", "2"]
    assert rows["bytes"] == ["8192", "8192"]
    backends = sections[1].splitlines()
    assert backends[0].split() == ["BACKENDS", "inline", "legacy"]
    brows = {line.split()[0]: line.split()[1:] for line in backends[1:]}
    assert int(brows["profile.programs"][0]) == 1
    assert any(s.startswith("FALLBACK") for s in sections)
    # aligned: every row of a section as wide as its header, numbers right-aligned
    widths = {len(line) for line in devices}
    assert len(widths) == 1


def test_stats_json_is_the_daemons_counters(
    daemon: DaemonThread, capsys: pytest.CaptureFixture[str]
) -> None:
    _io_through_secure(daemon)
    capsys.readouterr()
    assert main(["stats", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == daemon.manager.stats()


def test_stats_of_one_device(daemon: DaemonThread, capsys: pytest.CaptureFixture[str]) -> None:
    _io_through_secure(daemon)
    capsys.readouterr()
    assert main(["stats", "secure", "--json"]) == 0
    assert list(json.loads(capsys.readouterr().out)["devices"]) == ["secure"]


def test_stats_of_one_backend_and_the_help_says_so(
    daemon: DaemonThread, capsys: pytest.CaptureFixture[str]
) -> None:
    _io_through_secure(daemon)
    capsys.readouterr()
    assert main(["stats", "inline", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert list(result["backends"]) == ["inline"] and result["devices"] == {}
    with pytest.raises(SystemExit):
        main(["stats", "--help"])
    assert "only this mapped device or backend" in " ".join(capsys.readouterr().out.split())


def test_stats_of_an_unknown_device_exits_1(daemon: DaemonThread, rundir: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fuseblk", "stats", "nope"],
        capture_output=True,
        text=True,
        env=cli_env(rundir),
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("fuseblk stats: ") and "nope" in result.stderr


def test_a_usage_error_is_one_line_exit_2(capsys: pytest.CaptureFixture[str], rundir: Path) -> None:
    with pytest.raises(SystemExit) as info:
        main(["stats", "--frequency"])
    assert info.value.code == 2
    assert capsys.readouterr().err == (
        "fuseblk: error: unrecognized arguments: --frequency (see fuseblk --help)\n"
    )


def test_stats_with_stdout_full_is_one_line_exit_1(daemon: DaemonThread, rundir: Path) -> None:
    with open("/dev/full", "wb") as full:
        result = subprocess.run(
            [sys.executable, "-m", "fuseblk", "stats"],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(rundir),
            timeout=60,
        )
    assert result.returncode == 1
    assert (
        result.stderr.startswith("fuseblk stats: ") and "No space left on device" in result.stderr
    )
    assert len(result.stderr.splitlines()) == 1, result.stderr


def test_stats_lines_put_counters_down_and_entities_across() -> None:
    stats = {
        "devices": {"a": {"bios": 3, "flakey": {"dropped_writes": 1}}, "bb": {"bios": 10}},
        "fallback": {"bios": 2, "profile": {"programs": 1}},
    }
    assert stats_lines(stats) == [
        "DEVICES                a  bb",
        "bios                   3  10",
        "flakey.dropped_writes  1   0",
        "",
        "FALLBACK          fallback",
        "bios                     2",
        "profile.programs         1",
    ]


def test_stats_lines_without_counters() -> None:
    assert stats_lines({"devices": {}, "backends": {}}) == ["No statistics"]


def test_stats_lines_of_a_device_with_no_io_yet_still_name_it() -> None:
    assert stats_lines({"devices": {"fresh": {}}, "backends": {}}) == [
        "DEVICES                fresh",
        "(nothing counted yet)      0",
    ]


def test_stats_lines_fallback_is_one_column_even_with_only_profile_counters() -> None:
    # a fresh fallback has counted nothing of its own yet, only (say) a key eviction
    stats = {"devices": {}, "backends": {}, "fallback": {"profile": {"evictions": 1}}}
    assert stats_lines(stats) == ["FALLBACK           fallback", "profile.evictions         1"]
