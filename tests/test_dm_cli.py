"""``fuseblk dm``: dmsetup's verbs and output against a daemon serving a real DeviceManager.

A few tests run the CLI in a subprocess (exit statuses, stdin, stderr as a user sees them); the
rest call ``fuseblk.cli.main`` in-process against the same kind of daemon, which is faster.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from control_helpers import DaemonThread, cli_env, cli_run, manager_factory
from fuse_helpers import needs_fuse

from fuseblk.bio import Bio
from fuseblk.cli import main
from fuseblk.cli.dm_cmd import absolute_paths
from fuseblk.control.runtime import find_daemons
from fuseblk.hw.file_storage import punch_hole

KEY = bytes(range(64))
KEY_HEX = KEY.hex()
SECTORS = 16 * 1024 * 1024 // 512
BASE = f"0 {SECTORS // 2} linear inline 0\n{SECTORS // 2} {SECTORS // 2} linear legacy 0\n"
SECURE = f"0 {SECTORS} default-key aes-xts-plain64 {KEY_HEX} 0 base 0 2 sector_size:4096 iv_large_sectors\n"


def fuseblk(rundir: Path, *argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fuseblk", *argv],
        input=stdin,
        capture_output=True,
        text=True,
        env=cli_env(rundir),
        timeout=60,
        stdin=None if stdin is not None else subprocess.DEVNULL,
    )


def dm(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    return cli_run(capsys, "dm", *argv)


# --- as a user runs it (subprocess) --------------------------------------------------------------


def test_tables_keep_references_of_other_storages_as_written() -> None:
    table = "0 8 linear nbd+unix:///disk?socket=/run/s 0\n8 8 linear rel/disk.img 0"
    assert absolute_paths(table) == (
        f"0 8 linear nbd+unix:///disk?socket=/run/s 0\n8 8 linear {os.path.abspath('rel/disk.img')} 0"
    )


def test_create_from_stdin_then_ls(daemon: DaemonThread, rundir: Path) -> None:
    created = fuseblk(rundir, "dm", "create", "base", stdin=BASE)
    assert (created.returncode, created.stdout, created.stderr) == (0, "", "")
    listed = fuseblk(rundir, "dm", "ls")
    assert listed.returncode == 0
    assert listed.stdout == "base\t(16M)\n"


def test_a_failed_operation_exits_1_with_the_daemons_message(
    daemon: DaemonThread, rundir: Path
) -> None:
    result = fuseblk(rundir, "dm", "remove", "nope")
    assert result.returncode == 1
    assert result.stderr == "fuseblk dm remove: no mapped device named 'nope'\n"
    assert result.stdout == ""


def test_clear_drops_a_mistakenly_loaded_table(daemon: DaemonThread, rundir: Path) -> None:
    assert fuseblk(rundir, "dm", "create", "dev", stdin="0 8 linear legacy 0\n").returncode == 0
    assert fuseblk(rundir, "dm", "load", "dev", stdin="0 16 linear legacy 999\n").returncode == 0
    assert "LIVE & INACTIVE" in fuseblk(rundir, "dm", "info", "dev").stdout
    cleared = fuseblk(rundir, "dm", "clear", "dev")
    assert (cleared.returncode, cleared.stdout, cleared.stderr) == (0, "", "")
    assert "Tables present:    LIVE\n" in fuseblk(rundir, "dm", "info", "dev").stdout
    assert fuseblk(rundir, "dm", "resume", "dev").returncode == 0  # nothing to swap in
    assert fuseblk(rundir, "dm", "table", "dev").stdout == "0 8 linear legacy 0\n"
    missing = fuseblk(rundir, "dm", "clear", "nope")
    assert (missing.returncode, missing.stderr) == (
        1,
        "fuseblk dm clear: no mapped device named 'nope'\n",
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["dm", "remove"],  # missing NAME
        ["dm", "frobnicate"],
        ["dm", "create", "x", "--table", "0 8 zero", "--table-file", "t"],
        ["dm", "discard", "dev", "1000", "4K"],  # not 512-aligned
        ["dm", "discard", "dev", "0", "lots"],
        ["dm", "evict-key", "dev", "--mode", "AES-256-XTS", "--data-unit-size", "4096"],  # no key
        [
            "dm",
            "evict-key",
            "dev",
            "--mode",
            "rot13",
            "--key-hex",
            "00",
            "--data-unit-size",
            "4096",
        ],
        ["dm", "discard", "dev", "５１２", "512"],  # full-width digits are not a number
        ["dm", "message", "dev", "１", "x"],
        ["dm", "message", "dev", "-1", "x"],
        [
            "dm",
            "evict-key",
            "dev",
            "--mode",
            "AES-256-XTS",
            "--key-hex",
            KEY_HEX,
            "--data-unit-size",
            "４０９６",
        ],  # fmt: skip
        [
            "dm",
            "evict-key",
            "dev",
            "--mode",
            "AES-256-XTS",
            "--key-hex",
            KEY_HEX,
            "--data-unit-size",
            "4096",
            "--dun-bytes",
            "-1",
        ],  # fmt: skip
        ["dm", "create", "x", "--table", "0 8 zero", "--fallback", "sometimes"],
    ],
)
def test_usage_errors_exit_2(daemon: DaemonThread, rundir: Path, argv: list[str]) -> None:
    result = fuseblk(rundir, *argv)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip()
    assert len(result.stderr.splitlines()) == 1, result.stderr  # no usage block, no traceback


def test_without_a_daemon_the_cli_says_so_and_exits_1(rundir: Path) -> None:
    result = fuseblk(rundir, "dm", "ls")
    assert result.returncode == 1
    assert "no fuseblk daemon is running" in result.stderr


def test_usage_errors_are_reported_before_looking_for_a_daemon(rundir: Path) -> None:
    result = fuseblk(rundir, "dm", "discard", "dev", "7", "512")
    assert result.returncode == 2
    assert "multiples of 512" in result.stderr


def test_discard_help_explains_the_missing_fallocate(rundir: Path) -> None:
    result = fuseblk(rundir, "dm", "discard", "--help")
    text = " ".join(result.stdout.split())
    assert result.returncode == 0
    assert "pyfuse3 has no fallocate" in text and "FUSE_FALLOCATE" in text and "PUNCH_HOLE" in text


# --- output formats (in-process) -------------------------------------------------------------------


def _setup(capsys: pytest.CaptureFixture[str]) -> None:
    assert dm(capsys, "create", "base", "--table", BASE, "--fallback", "target")[0] == 0
    assert dm(capsys, "create", "secure", "--table", SECURE)[0] == 0
    assert dm(capsys, "create", "plain", "--table", "0 64 linear legacy 100")[0] == 0


def test_table_of_every_device_prefixes_each_line_with_its_name(
    daemon: DaemonThread, capsys: pytest.CaptureFixture[str]
) -> None:
    _setup(capsys)
    status, out, _ = dm(capsys, "table")
    assert status == 0
    assert out.splitlines() == [
        f"base: 0 {SECTORS // 2} linear inline 0",
        f"base: {SECTORS // 2} {SECTORS // 2} linear legacy 0",
        "plain: 0 64 linear legacy 100",
        f"secure: 0 {SECTORS} default-key aes-xts-plain64 - 0 base 0 2 sector_size:4096 iv_large_sectors",
    ]


def test_table_of_one_device_hides_keys_unless_showkeys(
    daemon: DaemonThread, capsys: pytest.CaptureFixture[str]
) -> None:
    _setup(capsys)
    status, out, _ = dm(capsys, "table", "secure")
    assert status == 0 and KEY_HEX not in out
    assert (
        out
        == f"0 {SECTORS} default-key aes-xts-plain64 - 0 base 0 2 sector_size:4096 iv_large_sectors\n"
    )
    status, out, _ = dm(capsys, "table", "secure", "--showkeys")
    assert out == SECURE


def test_status_lines(daemon: DaemonThread, capsys: pytest.CaptureFixture[str]) -> None:
    _setup(capsys)
    assert dm(capsys, "status", "plain")[1] == "0 64 linear\n"
    assert "secure: 0 32768 default-key" in dm(capsys, "status")[1]


def test_info_is_a_dmsetup_like_block(
    daemon: DaemonThread, capsys: pytest.CaptureFixture[str]
) -> None:
    _setup(capsys)
    dm(capsys, "load", "plain", "--table", "0 128 linear legacy 100")
    status, out, _ = dm(capsys, "info", "plain")
    assert status == 0
    assert out.splitlines() == [
        "Name:              plain",
        "State:             ACTIVE",
        "Tables present:    LIVE & INACTIVE",
        "Open count:        0",
        "Event number:      1",
        "Number of targets: 1",
        "Size in sectors:   64",
        "Block size:        512",
        "Fallback:          device",
        "Inline crypto:     none",
    ]
    out = dm(capsys, "info")[1]
    assert out.count("Name:") == 3 and "\n\nName:              plain\n" in out
    assert "Block size:        4096" in out  # secure's sector_size


def test_info_shows_inline_crypto_capabilities(
    daemon: DaemonThread, capsys: pytest.CaptureFixture[str]
) -> None:
    dm(capsys, "create", "fast", "--table", "0 64 linear inline 0")
    out = dm(capsys, "info", "fast")[1]
    assert (
        "Inline crypto:     AES-256-XTS:512,1024,2048,4096 AES-128-CBC-ESSIV:4096 max_dun_bytes=8"
        in out
    )


def test_json_before_or_after_the_verb(
    daemon: DaemonThread, capsys: pytest.CaptureFixture[str]
) -> None:
    _setup(capsys)
    for argv in (["--json", "ls"], ["ls", "--json"]):
        status, out, _ = dm(capsys, *argv)
        assert status == 0
        assert json.loads(out) == [
            {"name": "base", "size": SECTORS * 512},
            {"name": "plain", "size": 64 * 512},
            {"name": "secure", "size": SECTORS * 512},
        ]
    (info,) = json.loads(dm(capsys, "info", "secure", "--json")[1])
    assert info["block_size"] == 4096 and info["tables"] == ["LIVE"]
    (entry,) = json.loads(dm(capsys, "--json", "table", "secure")[1])
    assert entry["name"] == "secure" and KEY_HEX not in entry["table"]
    assert json.loads(dm(capsys, "--json", "suspend", "plain")[1]) == {"ok": True}


def test_ls_without_devices(daemon: DaemonThread, capsys: pytest.CaptureFixture[str]) -> None:
    assert dm(capsys, "ls")[1] == "No devices found\n"
    assert dm(capsys, "table")[1] == "No devices found\n"
    assert json.loads(dm(capsys, "ls", "--json")[1]) == []


def test_load_suspend_resume_rename_remove(
    daemon: DaemonThread, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    dm(capsys, "create", "dev", "--table", "0 8 linear legacy 0")
    table_file = tmp_path / "table"
    table_file.write_text("0 32 linear legacy 0\n")
    assert dm(capsys, "load", "dev", "--table-file", str(table_file))[0] == 0
    assert dm(capsys, "ls")[1] == "dev\t(4K)\n"
    assert dm(capsys, "suspend", "dev")[0] == 0
    assert "State:             SUSPENDED" in dm(capsys, "info", "dev")[1]
    assert dm(capsys, "resume", "dev")[0] == 0
    assert dm(capsys, "ls")[1] == "dev\t(16K)\n"
    assert dm(capsys, "rename", "dev", "renamed")[0] == 0
    assert dm(capsys, "ls")[1] == "renamed\t(16K)\n"
    assert dm(capsys, "remove", "renamed")[0] == 0
    assert dm(capsys, "ls")[1] == "No devices found\n"


def test_message_goes_to_the_target(
    daemon: DaemonThread, capsys: pytest.CaptureFixture[str]
) -> None:
    dm(capsys, "create", "mirror", "--table", "0 64 raid1 2 inline 0 legacy 0 1 nosync")
    assert dm(capsys, "message", "mirror", "0", "fail", "1")[0] == 0
    assert dm(capsys, "status", "mirror")[1].split()[4] == "AD"
    status, _, err = dm(capsys, "message", "mirror", "0", "explode")
    assert status == 1 and err.startswith("fuseblk dm message: ")


def _write_secure(daemon: DaemonThread) -> None:
    async def write() -> None:
        await daemon.manager.get("secure").submit(Bio.write(0, b"s" * 8192))

    daemon.run(write)


def _profile_counters(daemon: DaemonThread) -> dict[str, int]:
    counters: dict[str, int] = daemon.manager.stats()["backends"]["inline"]["profile"]
    return counters


@pytest.mark.parametrize("key_form", ["hex", "raw-file", "hex-file"])
def test_evict_key(
    daemon: DaemonThread, capsys: pytest.CaptureFixture[str], tmp_path: Path, key_form: str
) -> None:
    _setup(capsys)
    _write_secure(daemon)
    evictions = _profile_counters(daemon).get("evictions", 0)
    key_file = tmp_path / "key"
    if key_form == "hex":
        key_args = ["--key-hex", KEY_HEX]
    elif key_form == "raw-file":
        key_file.write_bytes(KEY)
        key_args = ["--key-file", str(key_file)]
    else:
        key_file.write_text(KEY_HEX + "\n")
        key_args = ["--key-file", str(key_file)]
    status, out, err = dm(
        capsys,
        "evict-key",
        "secure",
        "--mode",
        "aes-256-xts",
        *key_args,
        "--data-unit-size",
        "4096",
    )
    assert (status, out, err) == (0, "", "")
    assert _profile_counters(daemon)["evictions"] == evictions + 1


def test_evict_key_with_a_key_file_of_the_wrong_size_is_a_usage_error(
    daemon: DaemonThread, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    key_file = tmp_path / "key"
    key_file.write_bytes(KEY[:40])
    status, _, err = dm(
        capsys,
        "evict-key",
        "x",
        "--mode",
        "AES-256-XTS",
        "--key-file",
        str(key_file),
        "--data-unit-size",
        "4096",
    )
    assert status == 2 and "64 raw key bytes or 128 hex digits" in err
    assert KEY[:40].hex() not in err


def test_evict_key_with_a_hex_key_of_the_wrong_size_is_a_usage_error(
    daemon: DaemonThread, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--mode", "AES-256-XTS", "--key-hex", KEY[:40].hex(), "--data-unit-size", "4096"]
    status, _, err = dm(capsys, "evict-key", "x", *args)
    assert status == 2 and "64 raw key bytes" in err  # before the daemon is asked about 'x'
    assert KEY[:40].hex() not in err


def filled_plain_device(
    daemon: DaemonThread, capsys: pytest.CaptureFixture[str]
) -> Callable[[], bytearray]:
    """Create ``plain`` (32 KiB), fill it with 0x5a, and return a function that reads it back."""
    dm(capsys, "create", "plain", "--table", "0 64 linear legacy 0")
    dev = daemon.manager.get("plain")
    size = 64 * 512

    async def fill() -> None:
        await dev.submit(Bio.write(0, b"\x5a" * size))

    def read() -> bytearray:
        buf = bytearray(size)

        async def into() -> None:
            await dev.submit(Bio.read(0, buf))

        daemon.run(into)
        return buf

    daemon.run(fill)
    return read


def test_discard_with_size_suffixes_zeroes_the_range(
    daemon: DaemonThread, capsys: pytest.CaptureFixture[str]
) -> None:
    read = filled_plain_device(daemon, capsys)
    assert dm(capsys, "discard", "plain", "1K", "2K")[0] == 0
    buf = read()
    assert (
        buf[:1024] == b"\x5a" * 1024
        and buf[1024:3072] == bytes(2048)
        and buf[3072:] == b"\x5a" * (len(buf) - 3072)
    )
    status, _, err = dm(capsys, "discard", "plain", "0", "1M")
    assert status == 1 and "beyond" in err


def test_discard_with_non_ascii_digits_zeroes_nothing(
    daemon: DaemonThread, capsys: pytest.CaptureFixture[str]
) -> None:
    read = filled_plain_device(daemon, capsys)
    status, _, err = dm(capsys, "discard", "plain", "５１２", "512")  # full-width 512
    assert status == 2 and err.startswith("fuseblk dm discard: invalid size '５１２'")
    buf = read()
    assert buf == b"\x5a" * len(buf)


def _create_with_table_file(rundir: Path, table_file: Path) -> subprocess.CompletedProcess[str]:
    return fuseblk(rundir, "dm", "create", "x", "--table-file", str(table_file))


def test_a_table_file_that_is_not_utf8_is_one_line(
    daemon: DaemonThread, rundir: Path, tmp_path: Path
) -> None:
    table = tmp_path / "table"
    table.write_bytes(b"0 8 zero \xff\n")
    result = _create_with_table_file(rundir, table)
    assert result.returncode == 1
    assert result.stderr == (
        f"fuseblk dm create: {table}: not UTF-8 text (byte 0xff at offset 9)\n"
    )


def test_a_table_on_stdin_that_is_not_utf8_is_one_line(daemon: DaemonThread, rundir: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fuseblk", "dm", "create", "x"],
        input=b"\xfe0 8 zero\n",
        capture_output=True,
        env=cli_env(rundir),
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr == (
        b"fuseblk dm create: standard input: not UTF-8 text (byte 0xfe at offset 0)\n"
    )


def test_a_fifo_as_table_file_is_refused_at_once(
    daemon: DaemonThread, rundir: Path, tmp_path: Path
) -> None:
    fifo = tmp_path / "table"
    os.mkfifo(fifo)
    result = _create_with_table_file(rundir, fifo)  # times out if it waits for a writer
    assert result.returncode == 1
    assert result.stderr == f"fuseblk dm create: {fifo}: is a FIFO, not a regular file\n"


def test_mount_chooses_between_daemons(
    rundir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = DaemonThread(manager_factory(tmp_path / "a"), tmp_path / "a" / "mnt").start()
    second = DaemonThread(manager_factory(tmp_path / "b"), tmp_path / "b" / "mnt").start()
    try:
        status, _, err = dm(capsys, "ls")
        assert status == 1 and "several fuseblk daemons" in err and "--mount" in err
        assert (
            dm(
                capsys,
                "create",
                "only-a",
                "--table",
                "0 8 linear legacy 0",
                "--mount",
                str(first.mountpoint),
            )[0]
            == 0
        )
        assert dm(capsys, "--mount", str(first.mountpoint), "ls")[1] == "only-a\t(4K)\n"
        assert dm(capsys, "ls", "--mount", str(second.mountpoint))[1] == "No devices found\n"
    finally:
        first.stop()
        second.stop()


# --- against a real mount --------------------------------------------------------------------------


@pytest.mark.integration
@needs_fuse
def test_against_a_real_mount_discard_is_offered_by_the_cli_not_the_file(
    rundir: Path, tmp_path: Path
) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    started = fuseblk(rundir, "mount", str(mnt), "--state-dir", str(tmp_path / "state"))
    try:
        assert started.returncode == 0, started.stderr
        listed = fuseblk(rundir, "dm", "ls")
        assert listed.stdout == "base\t(1G)\nplain\t(768M)\nsecure\t(1G)\n"
        plain = mnt / "plain"
        with open(plain, "r+b", buffering=0) as f:
            f.write(b"\xee" * 16384)
            # pyfuse3 has no fallocate handler: the kernel answers EOPNOTSUPP for punch-hole
            with pytest.raises(OSError) as info:
                punch_hole(f.fileno(), 0, 4096)
            assert info.value.errno == errno.EOPNOTSUPP
        discarded = fuseblk(rundir, "dm", "discard", "plain", "4K", "8K", "--mount", str(mnt))
        assert discarded.returncode == 0, discarded.stderr
        data = _read(plain, 16384)
        assert (
            data[:4096] == b"\xee" * 4096
            and data[4096:12288] == bytes(8192)
            and data[12288:] == b"\xee" * 4096
        )
        stats = json.loads(fuseblk(rundir, "stats", "plain", "--json").stdout)
        assert stats["devices"]["plain"]["discards"] == 1
    finally:
        fuseblk(rundir, "umount", str(mnt))
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
    assert not os.path.ismount(mnt)
    assert find_daemons() == []


def _read(path: Path, n: int) -> bytes:
    with open(path, "rb", buffering=0) as f:
        return f.read(n)


def test_relative_image_paths_in_tables_and_messages_are_the_callers(
    daemon: DaemonThread, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # the daemon runs in / (it chdirs after forking): "./x.img" must reach it as an absolute path
    from fuseblk.control.client import ControlClient

    sent: list[dict] = []
    real_call = ControlClient.call

    def recording_call(self, cmd, **args):
        sent.append({"cmd": cmd, **args})
        return real_call(self, cmd, **args)

    monkeypatch.setattr(ControlClient, "call", recording_call)
    monkeypatch.chdir(tmp_path)
    main(["dm", "create", "x", "--table", "0 8 linear ./sub/x.img 0\n8 8 linear legacy 0"])
    main(["dm", "message", "x", "0", "add", "sub/y.img", "0"])
    assert sent[0]["table"] == f"0 8 linear {tmp_path}/sub/x.img 0\n8 8 linear legacy 0"
    assert sent[1]["args"] == ["add", f"{tmp_path}/sub/y.img", "0"]
