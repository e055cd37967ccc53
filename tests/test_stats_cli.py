"""``fuseblk stats``: the daemon's counters per device and backend, as aligned tables or JSON."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from control_helpers import DaemonThread, cli_env, cli_exit_status, manager_factory

from fuseblk.bio import Bio
from fuseblk.cli import main
from fuseblk.cli.output import stats_lines
from fuseblk.cli.rates import COLUMNS, interval_rates

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


def test_interval_rates_are_counter_differences_over_the_interval() -> None:
    before = {
        "devices": {"secure": {"reads": 10, "writes": 4, "bytes": 1_000_000, "inline_bios": 4}},
        "backends": {"inline": {"bios": 4, "profile": {"programs": 1, "hits": 3}}},
        "fallback": {"bios": 0, "bytes": 0, "profile": {"programs": 0}},
    }
    now = {
        "devices": {
            "secure": {
                "reads": 30,
                "writes": 4,
                "bytes": 3_000_000,
                "inline_bios": 7,
                "fallback_bios": 1,
            },
            "new": {},  # appeared in the interval: counted from zero
        },
        "backends": {
            "inline": {
                "bios": 8,
                "fault_program_errors": 3,
                "fault_evict_errors": 1,
                "profile": {"programs": 1, "hits": 7, "waits": 2},
            }
        },
        "fallback": {"bios": 1, "bytes": 4096, "profile": {"programs": 1}},
    }
    rates = interval_rates(now, before, 2.0)
    secure = rates["devices"]["secure"]
    assert secure["r/s"] == 10 and secure["w/s"] == 0 and secure["MB/s"] == 1.0
    assert secure["inline%"] == 75.0 and secure["fallback%"] == 25.0
    assert secure["prog/s"] is None  # a mapped device has no keyslots
    assert rates["devices"]["new"]["r/s"] == 0 and rates["devices"]["new"]["inline%"] is None
    inline = rates["backends"]["inline"]
    assert inline["hit/s"] == 2 and inline["wait/s"] == 1 and inline["prog/s"] == 0
    assert inline["evict/s"] == 0  # never counted yet: zero, not unknown
    assert inline["fault/s"] == 2  # injected program and evict failures that fired
    assert secure["fault/s"] is None and rates["fallback"]["fault/s"] is None
    fallback = rates["fallback"]
    assert fallback["r/s"] is None and fallback["prog/s"] == 0.5  # the fallback keeps no reads
    assert fallback["MB/s"] == 4096 / 2 / 1e6


def _keep_writing(daemon: DaemonThread, seconds: float) -> threading.Thread:
    """Writes through secure's inline and fallback halves from another thread for a while."""

    def loop() -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            _io_through_secure(daemon)
            time.sleep(0.005)

    thread = threading.Thread(target=loop)
    thread.start()
    return thread


def test_watch_json_prints_one_object_per_interval_with_inline_and_fallback_shares(
    daemon: DaemonThread, capsys: pytest.CaptureFixture[str]
) -> None:
    writer = _keep_writing(daemon, 1.0)
    try:
        assert main(["stats", "--watch", "0.3", "--count", "3", "--json"]) == 0
    finally:
        writer.join()
    intervals = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(intervals) == 3
    assert all(0.25 < i["interval_s"] < 5 for i in intervals)
    busy = [i for i in intervals if i["devices"]["secure"]["w/s"] > 0]
    assert busy, intervals
    # base passes every context down (fallback=target): the hardware below decides
    assert busy[0]["devices"]["base"]["inline%"] is None
    inline, legacy = busy[0]["backends"]["inline"], busy[0]["backends"]["legacy"]
    assert inline["w/s"] > 0 and inline["inline%"] == 100 and inline["fallback%"] == 0
    assert legacy["w/s"] > 0 and legacy["fallback%"] == 100
    assert busy[0]["fallback"]["MB/s"] > 0


def test_watch_prints_an_iostat_like_table_per_interval(
    daemon: DaemonThread, capsys: pytest.CaptureFixture[str]
) -> None:
    _io_through_secure(daemon)
    capsys.readouterr()
    assert main(["stats", "--watch", "0.1", "--count", "2"]) == 0
    blocks = capsys.readouterr().out.strip().split("\n\n")
    assert len(blocks) == 2
    for block in blocks:
        lines = block.splitlines()
        assert "interval" in lines[0]
        assert lines[1].split() == ["DEVICE", "KIND", *COLUMNS]
        rows = {line.split()[0]: line.split()[1:] for line in lines[2:]}
        assert set(rows) == {"base", "secure", "inline", "legacy", "blk-crypto-fallback"}
        assert rows["secure"][0] == "dm" and rows["inline"][0] == "hw"
        assert rows["blk-crypto-fallback"][1] == "-"  # the fallback keeps no read counter
        assert len({len(line) for line in lines[1:]}) == 1  # aligned


@pytest.mark.parametrize(
    "args",
    [["--count", "2"], ["--watch", "０.５"], ["--watch", "0"], ["--watch", "1", "--count", "0"]],
)
def test_watch_options_out_of_range_are_usage_errors(
    daemon: DaemonThread, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    assert cli_exit_status(["stats", *args]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
