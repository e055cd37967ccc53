"""The daemon end to end: `fuseblk mount` of the default setup, real I/O tools, clean shutdown.

Every test here drives a real FUSE mount (root and /dev/fuse); teardown always unmounts, kills a
hung daemon, and detaches loop devices, even when the test failed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import mmap
import os
import random
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import pytest
import trio
from fuse_helpers import daemon_mount, eventually, fuseblk_cmd, is_mounted, needs_fuse

from fuseblk.errors import FuseblkError
from fuseblk.fuse.daemon import MountSettings, run_daemon, startup_error

pytestmark = [needs_fuse, pytest.mark.integration]

MiB = 1 << 20
DEFAULT_DEVICES = {"base": 1024 * MiB, "secure": 1024 * MiB, "plain": 768 * MiB}


def run(*cmd: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=check)


def fuseblk(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(*fuseblk_cmd(*args), check=check)


def header(image: Path) -> dict:
    return json.loads(fuseblk("image", "inspect", "--json", str(image)).stdout)["header"]


@pytest.fixture(scope="module")
def mounted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One default-setup mount shared by the data tests (each uses its own region)."""
    root = tmp_path_factory.mktemp("daemon")
    with daemon_mount(root / "mnt", "--state-dir", str(root / "state")):
        yield root / "mnt"


# -- lifecycle ---------------------------------------------------------------------------------


def test_mount_returns_when_usable_and_umount_unmounts_cleanly(tmp_path: Path) -> None:
    state, mnt = tmp_path / "state", tmp_path / "mnt"
    with daemon_mount(mnt, "--state-dir", str(state)) as pid:
        assert is_mounted(mnt)
        assert {p.name: p.stat().st_size for p in mnt.iterdir()} == DEFAULT_DEVICES
        assert not header(state / "inline.img")["clean_shutdown"]  # attached
        result = fuseblk("umount", str(mnt))
        assert result.returncode == 0, result.stderr
        assert not is_mounted(mnt)
        _wait_gone(pid)
    for image in ("inline.img", "legacy.img"):
        assert header(state / image)["clean_shutdown"]


def test_default_setup_is_created_once_and_reused(tmp_path: Path) -> None:
    state, mnt = tmp_path / "state", tmp_path / "mnt"
    data = random.randbytes(MiB)
    with daemon_mount(mnt, "--state-dir", str(state)):
        key = (state / "secure.key").read_bytes()
        inode = (state / "inline.img").stat().st_ino
        _write(mnt / "secure", 5 * MiB, data)
    assert sorted(p.name for p in state.iterdir() if p.suffix != ".log") == [
        "inline.img",
        "legacy.img",
        "secure.key",
    ]
    with daemon_mount(mnt, "--state-dir", str(state)):
        assert (state / "secure.key").read_bytes() == key
        assert (state / "inline.img").stat().st_ino == inode
        assert _read(mnt / "secure", 5 * MiB, MiB) == data


def test_sigterm_unmounts_cleanly_and_marks_images_clean(tmp_path: Path) -> None:
    state, mnt = tmp_path / "state", tmp_path / "mnt"
    with daemon_mount(mnt, "--state-dir", str(state)) as pid:
        _write(mnt / "secure", 0, random.randbytes(MiB))
        os.kill(pid, signal.SIGTERM)
        _wait_gone(pid)
        assert not is_mounted(mnt)
    assert header(state / "inline.img")["clean_shutdown"]
    assert header(state / "legacy.img")["clean_shutdown"]


def test_sigterm_under_load_keeps_every_acknowledged_write(tmp_path: Path) -> None:
    state, mnt = tmp_path / "state", tmp_path / "mnt"
    chunk = 64 * 1024
    progress = tmp_path / "acknowledged"
    with daemon_mount(mnt, "--state-dir", str(state)) as pid:
        ctx = get_context("fork")
        writer = ctx.Process(target=_chunk_writer, args=(str(mnt / "secure"), chunk, str(progress)))
        writer.start()
        try:
            eventually(lambda: progress.exists() and int(progress.read_text() or 0) > 20)
            os.kill(pid, signal.SIGTERM)
            _wait_gone(pid)
            assert not is_mounted(mnt)
        finally:
            writer.join(timeout=30)
            if writer.is_alive():
                writer.kill()
    acknowledged = int(progress.read_text())
    assert header(state / "inline.img")["clean_shutdown"]
    with daemon_mount(mnt, "--state-dir", str(state)):
        data = _read(mnt / "secure", 0, acknowledged * chunk)
    for i in range(acknowledged):
        assert data[i * chunk : (i + 1) * chunk] == _chunk_pattern(i, chunk), f"chunk {i} lost"


def _chunk_pattern(i: int, size: int) -> bytes:
    return i.to_bytes(4, "little") * (size // 4)


def _chunk_writer(path: str, chunk: int, progress: str) -> None:
    """Write chunk after chunk until the mount goes away, recording how many were acknowledged."""
    buf = mmap.mmap(-1, chunk)
    fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
    i = 0
    try:
        while i * chunk < 256 * MiB:
            buf[:] = _chunk_pattern(i, chunk)
            os.pwrite(fd, buf, i * chunk)
            i += 1
            Path(progress).write_text(str(i))
    except OSError:
        pass  # ENOTCONN/ENODEV once the daemon is gone
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)


def test_external_unmount_shuts_the_daemon_down_cleanly(tmp_path: Path) -> None:
    state, mnt = tmp_path / "state", tmp_path / "mnt"
    with daemon_mount(mnt, "--state-dir", str(state)) as pid:
        run("fusermount3", "-u", str(mnt))
        _wait_gone(pid)
    assert header(state / "inline.img")["clean_shutdown"]


def test_foreground_mount_serves_until_sigint(tmp_path: Path) -> None:
    state, mnt = tmp_path / "state", tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.Popen(
        fuseblk_cmd("mount", str(mnt), "--state-dir", str(state), "--foreground"),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        eventually(lambda: is_mounted(mnt), timeout=30)  # stat then waits for the daemon
        assert (mnt / "secure").stat().st_size == DEFAULT_DEVICES["secure"]
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0
        assert "received SIGINT" in err and "unmounted" in err
        assert not is_mounted(mnt)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if is_mounted(mnt):
            run("fusermount3", "-uz", str(mnt), check=False)


def test_debug_logs_never_contain_the_key(tmp_path: Path) -> None:
    state, mnt, log = tmp_path / "state", tmp_path / "mnt", tmp_path / "daemon.log"
    with daemon_mount(
        mnt, "--state-dir", str(state), "--log-level", "debug", "--log-file", str(log)
    ):
        _write(mnt / "secure", 0, random.randbytes(MiB))
        _read(mnt / "secure", 900 * MiB, 4096)
        fuseblk("dm", "table", "--mount", str(mnt))
        fuseblk("dm", "status", "--mount", str(mnt))
    key = (state / "secure.key").read_bytes()
    text = log.read_bytes()
    assert b"mounted" in text
    assert key not in text
    assert key.hex().encode() not in text
    assert key.hex().upper().encode() not in text


def test_no_fallback_makes_the_fallback_part_of_secure_eopnotsupp(tmp_path: Path) -> None:
    state, mnt = tmp_path / "state", tmp_path / "mnt"
    with daemon_mount(mnt, "--state-dir", str(state), "--no-fallback"):
        _write(mnt / "secure", 0, bytes(4096))  # inline part: the hardware handles it
        with pytest.raises(OSError) as info:
            _write(mnt / "secure", 900 * MiB, bytes(4096))
        assert info.value.errno == errno.EOPNOTSUPP


def test_mount_with_a_config_file_serves_its_devices(tmp_path: Path) -> None:
    doc = (Path(__file__).parents[1] / "docs" / "config.md").read_text()
    config = tmp_path / "fuseblk.toml"
    config.write_text(doc.split("```toml\n", 1)[1].split("```", 1)[0])
    mnt = tmp_path / "mnt"
    with daemon_mount(mnt, "--config", str(config), "--log-file", str(tmp_path / "log")):
        assert sorted(os.listdir(mnt)) == ["disk", "secure"]
        data = random.randbytes(MiB)
        for offset in (0, 300 * MiB):  # inline on "fast", fallback on "slow"
            _write(mnt / "secure", offset, data)
            assert _read(mnt / "secure", offset, MiB) == data
            assert _read(mnt / "disk", offset, MiB) != data


def test_umount_refuses_what_is_not_a_fuseblk_mount(tmp_path: Path) -> None:
    result = fuseblk("umount", str(tmp_path), check=False)
    assert result.returncode != 0 and "is not mounted" in result.stderr
    result = fuseblk("umount", "/proc", check=False)
    assert result.returncode != 0 and "not a fuseblk mount" in result.stderr
    assert is_mounted(Path("/proc"))


def test_mounting_on_a_mount_is_refused(mounted: Path) -> None:
    result = fuseblk(
        "mount", str(mounted), "--state-dir", str(mounted.parent / "other"), check=False
    )
    assert result.returncode == 1
    assert "already a mount point" in result.stderr


@pytest.mark.parametrize("foreground", [False, True], ids=["daemonized", "foreground"])
def test_startup_errors_come_back_from_the_daemon(tmp_path: Path, foreground: bool) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[devices.d]\ntable = "0 8 linear nowhere 0"\n')
    (tmp_path / "mnt").mkdir()
    result = fuseblk(
        "mount",
        str(tmp_path / "mnt"),
        "--config",
        str(config),
        "--log-file",
        str(tmp_path / "log"),
        *(["--foreground"] if foreground else []),
        check=False,
    )
    assert result.returncode == 2  # bad input (EINVAL), whether or not the daemon forked
    assert f"{config}:2: devices.d.table: line 1:" in result.stderr
    assert not is_mounted(tmp_path / "mnt")


# -- startup errors: one line on stderr, the errno's exit status, nothing left mounted ------------


def mount_fails(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> str:
    """Run ``fuseblk mount MOUNTPOINT ARGS``; assert it failed as a user should see it; its
    stderr. A daemon it left behind anyway (mounted, or still starting) is stopped."""
    try:
        result = subprocess.run(
            fuseblk_cmd("mount", *args),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=None if env is None else {**os.environ, **env},
        )
    finally:
        _stop_daemons_of(Path(args[0]))
    assert result.returncode != 0, result.stderr
    assert "Traceback" not in result.stderr and "ExceptionGroup" not in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    return result.stderr


@pytest.mark.parametrize("foreground", [False, True], ids=["daemonized", "foreground"])
def test_a_runtime_dir_open_to_others_is_one_line_not_an_exception_group(
    tmp_path: Path, foreground: bool
) -> None:
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o755)
    runtime.chmod(0o755)
    (tmp_path / "mnt").mkdir()
    err = mount_fails(
        str(tmp_path / "mnt"),
        "--state-dir",
        str(tmp_path / "state"),
        "--log-file",
        str(tmp_path / "log"),
        *(["--foreground"] if foreground else []),
        env={"FUSEBLK_RUNTIME_DIR": str(runtime)},
    )
    assert err.startswith(f"fuseblk mount: runtime directory {runtime} must be")
    assert not is_mounted(tmp_path / "mnt")


def test_a_control_socket_path_too_long_is_one_line(tmp_path: Path) -> None:
    runtime = tmp_path / ("r" * 120)
    (tmp_path / "mnt").mkdir()
    err = mount_fails(
        str(tmp_path / "mnt"),
        "--state-dir",
        str(tmp_path / "state"),
        "--log-file",
        str(tmp_path / "log"),
        env={"FUSEBLK_RUNTIME_DIR": str(runtime)},
    )
    assert err.startswith("fuseblk mount: control socket path too long")
    assert not is_mounted(tmp_path / "mnt")


def test_a_dev_fuse_that_cannot_mount_is_one_line(tmp_path: Path) -> None:
    """/dev/fuse replaced by an empty file, in a mount namespace of the test's own."""
    if not shutil.which("unshare") or run("unshare", "--mount", "true", check=False).returncode:
        pytest.skip("needs unshare --mount (CAP_SYS_ADMIN)")
    fake, mnt = tmp_path / "not-fuse", tmp_path / "mnt"
    fake.write_bytes(b"")
    mnt.mkdir()
    mount = fuseblk_cmd("mount", str(mnt), "--state-dir", str(tmp_path / "state"))
    script = f"mount --bind {shlex.quote(str(fake))} /dev/fuse && exec {shlex.join(mount)}"
    try:
        result = run("unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                     check=False)  # fmt: skip
    finally:
        _stop_daemons_of(mnt)
    assert result.returncode == 1
    assert result.stderr == f"fuseblk mount: cannot mount {mnt}: fuse_session_mount failed\n"


def test_startup_error_unwraps_groups_holding_only_fuseblk_errors() -> None:
    first, second = FuseblkError(errno.EPERM, "first"), FuseblkError(errno.EIO, "second")
    nested = BaseExceptionGroup("outer", [BaseExceptionGroup("inner", [first]), second])
    assert startup_error(nested) is first
    assert startup_error(first) is first
    assert startup_error(ExceptionGroup("mixed", [first, ValueError("bug")])) is None
    assert startup_error(ValueError("bug")) is None


@pytest.mark.parametrize("slots", ["99999999999999", "0", "１"])
def test_fallback_slots_outside_1_to_65536_are_refused_before_anything_starts(
    tmp_path: Path, slots: str
) -> None:
    (tmp_path / "mnt").mkdir()
    err = mount_fails(
        str(tmp_path / "mnt"), "--state-dir", str(tmp_path / "state"), "--fallback-slots", slots
    )
    assert err.startswith("fuseblk mount: error: argument --fallback-slots: ")
    assert ("must be 1..65536" in err) != (slots == "１")  # and "１" is not a digit
    assert not (tmp_path / "state").exists() and not is_mounted(tmp_path / "mnt")


def test_fallback_slots_in_a_config_beyond_65536_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "big.toml"
    config.write_text("[options]\nfallback_slots = 99999999999999\n")
    (tmp_path / "mnt").mkdir()
    log = str(tmp_path / "log")  # without it a config mount logs to the home directory
    err = mount_fails(str(tmp_path / "mnt"), "--config", str(config), "--log-file", log)
    assert (
        err
        == f"fuseblk mount: {config}:2: options.fallback_slots: expected 1..65536, got 99999999999999\n"
    )


def test_a_daemon_silent_past_the_startup_timeout_is_stopped_and_reported(tmp_path: Path) -> None:
    async def never_ready() -> Any:
        await trio.sleep_forever()

    settings = MountSettings(tmp_path)
    started = time.monotonic()
    with pytest.raises(FuseblkError) as info:
        run_daemon(never_ready, settings, startup_timeout=1.0)
    assert info.value.errno == errno.ETIMEDOUT
    assert "did not report ready within 1 s" in info.value.message
    assert time.monotonic() - started < 15
    assert not is_mounted(tmp_path)


@pytest.mark.parametrize("foreground", [False, True], ids=["daemonized", "foreground"])
def test_a_directory_as_log_file_is_one_line(tmp_path: Path, foreground: bool) -> None:
    (tmp_path / "mnt").mkdir()
    err = mount_fails(
        str(tmp_path / "mnt"),
        "--state-dir",
        str(tmp_path / "state"),
        "--log-file",
        str(tmp_path),
        *(["--foreground"] if foreground else []),
    )
    assert err == f"fuseblk mount: log file {tmp_path}: Is a directory\n"
    assert not is_mounted(tmp_path / "mnt")


@pytest.mark.parametrize("where", ["a file", "below a file"])
def test_a_state_dir_that_cannot_be_a_directory_is_one_line(tmp_path: Path, where: str) -> None:
    (tmp_path / "file").write_text("")
    state = tmp_path / "file" if where == "a file" else tmp_path / "file" / "state"
    (tmp_path / "mnt").mkdir()
    err = mount_fails(str(tmp_path / "mnt"), "--state-dir", str(state))
    assert str(state) in err and "ot a directory" in err


def test_state_dir_is_0700_and_log_file_0600(tmp_path: Path) -> None:
    state, log = tmp_path / "state", tmp_path / "logs" / "daemon.log"
    with daemon_mount(tmp_path / "mnt", "--state-dir", str(state), "--log-file", str(log)):
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
        assert stat.S_IMODE((state / "secure.key").stat().st_mode) == 0o600
        assert stat.S_IMODE(log.stat().st_mode) == 0o600
        assert stat.S_IMODE(log.parent.stat().st_mode) == 0o700


def test_a_state_dir_open_to_others_is_warned_about_at_mount(tmp_path: Path) -> None:
    state, mnt = tmp_path / "state", tmp_path / "mnt"
    state.mkdir()
    state.chmod(0o755)
    mnt.mkdir()
    result = fuseblk("mount", str(mnt), "--state-dir", str(state), check=False)
    try:
        assert result.returncode == 0, result.stderr
        assert result.stderr == (
            f"fuseblk mount: warning: state directory {state} holds the key but is open to "
            f"others (mode 0755): chmod 700 {state}\n"
        )
    finally:
        if is_mounted(mnt):
            fuseblk("umount", str(mnt), check=False)


_HELD_READER = """
import os, mmap, sys
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECT)
buf = mmap.mmap(-1, 4096)
os.preadv(fd, [buf], 0)
sys.stdout.buffer.write(buf[:])
sys.stdout.flush()
os._exit(0)  # the close after a forced umount fails: not what this checks
"""


def test_umount_of_a_suspended_device_with_held_io_completes_it_and_exits(
    tmp_path: Path,
) -> None:
    state, mnt = tmp_path / "state", tmp_path / "mnt"
    data = random.randbytes(4096)
    with daemon_mount(mnt, "--state-dir", str(state)) as pid:
        _write(mnt / "plain", 0, data)
        fuseblk("dm", "--mount", str(mnt), "suspend", "plain")
        reader = subprocess.Popen(
            [sys.executable, "-c", _HELD_READER, str(mnt / "plain")], stdout=subprocess.PIPE
        )
        try:
            with pytest.raises(subprocess.TimeoutExpired):
                reader.wait(timeout=0.5)  # held by the suspend
            # --force: the held reader has the file open. SIGTERM takes the same path.
            result = fuseblk("umount", "--force", "--timeout", "20", str(mnt), check=False)
            assert result.returncode == 0, result.stderr
            assert reader.communicate(timeout=10)[0] == data
            _wait_gone(pid)
        finally:
            if is_mounted(mnt):  # never leave a reader stuck in D state behind
                fuseblk("dm", "--mount", str(mnt), "resume", "plain", check=False)
            reader.kill()
            reader.wait(timeout=10)
    assert header(state / "legacy.img")["clean_shutdown"]


def test_umount_refuses_while_a_device_file_is_open_unless_forced(tmp_path: Path) -> None:
    state, mnt = tmp_path / "state", tmp_path / "mnt"
    with daemon_mount(mnt, "--state-dir", str(state)) as pid:
        fd = os.open(mnt / "plain", os.O_RDONLY)
        try:
            result = fuseblk("umount", str(mnt), check=False)
            assert result.returncode == 1
            assert "plain (1 open)" in result.stderr and "--force" in result.stderr
            assert "fusermount" not in result.stderr
            assert is_mounted(mnt) and len(os.pread(fd, 512, 0)) == 512
            result = fuseblk("umount", "--force", str(mnt), check=False)
            assert result.returncode == 0, result.stderr
            assert not is_mounted(mnt)
        finally:
            with contextlib.suppress(OSError):  # ENOTCONN once the forced umount is done
                os.close(fd)
        _wait_gone(pid)


def test_umount_falls_back_to_fusermount_when_the_daemon_hangs(tmp_path: Path) -> None:
    state, mnt = tmp_path / "state", tmp_path / "mnt"
    with daemon_mount(mnt, "--state-dir", str(state)) as pid:
        os.kill(pid, signal.SIGSTOP)
        try:
            result = fuseblk("umount", "--timeout", "2", str(mnt), check=False)
            assert "falling back to fusermount3" in result.stderr
            assert not is_mounted(mnt)
        finally:
            os.kill(pid, signal.SIGCONT)


# -- data ------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", sorted(DEFAULT_DEVICES))
@pytest.mark.parametrize("direct", [True, False], ids=["odirect", "buffered"])
def test_dd_round_trip_on_every_default_device(
    mounted: Path, tmp_path: Path, device: str, direct: bool
) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    src.write_bytes(random.randbytes(4 * MiB))
    seek = 16 + (8 if direct else 0)
    flag = ["oflag=direct"] if direct else []
    run(
        "dd",
        f"if={src}",
        f"of={mounted / device}",
        "bs=1M",
        f"seek={seek}",
        "conv=notrunc,fsync",
        *flag,
    )
    iflag = ["iflag=direct"] if direct else []
    run("dd", f"if={mounted / device}", f"of={out}", "bs=1M", f"skip={seek}", "count=4", *iflag)
    assert out.read_bytes() == src.read_bytes()


def test_secure_is_encrypted_on_base_inline_and_in_the_fallback_part(mounted: Path) -> None:
    data = random.randbytes(8192)
    for offset in (32 * MiB, 900 * MiB):  # inline part, fallback part
        _write(mounted / "secure", offset, data)
        assert _read(mounted / "secure", offset, 8192) == data
        assert _read(mounted / "base", offset, 8192) != data


def test_unaligned_writes_read_modify_write_4k_blocks(mounted: Path) -> None:
    base = 64 * MiB
    region = bytearray(random.randbytes(MiB))
    _write(mounted / "secure", base, bytes(region))
    rng = random.Random(3)
    fd = os.open(mounted / "secure", os.O_RDWR)
    try:
        for _ in range(100):
            off = rng.randrange(0, MiB - 20000)
            chunk = rng.randbytes(rng.randrange(1, 20000))
            assert os.pwrite(fd, chunk, base + off) == len(chunk)
            region[off : off + len(chunk)] = chunk
    finally:
        os.close(fd)
    assert _read(mounted / "secure", base, MiB) == bytes(region)


def test_concurrent_overlapping_unaligned_writers_never_tear_a_block(mounted: Path) -> None:
    base, region, writers = 80 * MiB, 256 * 1024, 4
    _write(mounted / "secure", base, bytes(region))
    ctx = get_context("fork")
    procs = [
        ctx.Process(target=_overlapping_writer, args=(str(mounted / "secure"), base, region, i))
        for i in range(writers)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    data = _read(mounted / "secure", base, region)
    # Every write is 4096 bytes of one writer's byte at block boundary + 1000: within each block
    # the parts before and after offset 1000 must each come from a single write.
    for b in range(0, region, 4096):
        assert len(set(data[b : b + 1000])) == 1, f"block at {b} torn"
        assert len(set(data[b + 1000 : b + 4096])) == 1, f"block at {b} torn"


def _overlapping_writer(path: str, base: int, region: int, i: int) -> None:
    rng = random.Random(i)
    fd = os.open(path, os.O_WRONLY)
    try:
        for _ in range(150):
            block = rng.randrange(0, region // 4096 - 1)
            os.pwrite(fd, bytes([i + 1]) * 4096, base + block * 4096 + 1000)
    finally:
        os.close(fd)


def test_truncate_eperm_write_past_end_enospc_read_at_end_eof(mounted: Path) -> None:
    dev = mounted / "plain"
    size = DEFAULT_DEVICES["plain"]
    with pytest.raises(PermissionError):
        os.truncate(dev, size - 4096)
    os.truncate(dev, size)
    fd = os.open(dev, os.O_RDWR)
    try:
        with pytest.raises(OSError) as info:
            os.pwrite(fd, b"x" * 4096, size)
        assert info.value.errno == errno.ENOSPC
        assert os.pread(fd, 4096, size) == b""
        assert len(os.pread(fd, 8192, size - 4096)) == 4096
    finally:
        os.close(fd)


def test_created_device_appears_error_target_gives_eio_removed_device_disappears(
    mounted: Path,
) -> None:
    mp = str(mounted)
    fuseblk("dm", "create", "broken", "--mount", mp, "--table", "0 2048 error")
    try:
        assert (mounted / "broken").stat().st_size == 2048 * 512
        result = run(
            "dd",
            f"if={mounted / 'broken'}",
            "of=/dev/null",
            "bs=4k",
            "count=1",
            "iflag=direct",
            check=False,
        )
        assert result.returncode != 0
        assert "Input/output error" in result.stderr
    finally:
        fuseblk("dm", "remove", "broken", "--mount", mp)
    eventually(lambda: not (mounted / "broken").exists())
    assert "broken" not in os.listdir(mounted)


def test_renamed_and_resized_devices_follow_in_the_mount(mounted: Path) -> None:
    mp = str(mounted)
    fuseblk("dm", "create", "grow", "--mount", mp, "--table", "0 2048 linear plain 0")
    name = "grow"
    try:
        inode = (mounted / "grow").stat().st_ino
        fuseblk("dm", "rename", "grow", "grown", "--mount", mp)
        name = "grown"
        eventually(lambda: not (mounted / "grow").exists())
        assert (mounted / "grown").stat().st_ino == inode
        fuseblk("dm", "load", "grown", "--mount", mp, "--table", "0 4096 linear plain 0")
        fuseblk("dm", "resume", "grown", "--mount", mp)
        assert (mounted / "grown").stat().st_size == 4096 * 512
    finally:
        fuseblk("dm", "remove", name, "--mount", mp)


def test_flakey_device_gives_eio_while_down(mounted: Path) -> None:
    mp = str(mounted)
    fuseblk("dm", "create", "flaky", "--mount", mp, "--table", "0 2048 flakey plain 0 0 100")
    try:
        result = run(
            "dd",
            "if=/dev/zero",
            f"of={mounted / 'flaky'}",
            "bs=4k",
            "count=1",
            "oflag=direct",
            "conv=notrunc",
            check=False,
        )
        assert result.returncode != 0
        assert "Input/output error" in result.stderr
    finally:
        fuseblk("dm", "remove", "flaky", "--mount", mp)


@pytest.mark.slow
@pytest.mark.skipif(
    not (
        shutil.which("mkfs.ext4")
        and shutil.which("losetup")
        and os.path.exists("/dev/loop-control")
    ),
    reason="needs e2fsprogs, losetup and loop devices",
)
def test_ext4_on_a_loop_device_over_secure_fscks_clean(mounted: Path, tmp_path: Path) -> None:
    loop = run(
        "losetup", "--find", "--show", "--sizelimit", str(256 * MiB), str(mounted / "secure")
    ).stdout.strip()
    fs_mnt = tmp_path / "fs"
    fs_mnt.mkdir()
    try:
        run("mkfs.ext4", "-q", "-F", "-b", "4096", loop, timeout=120)
        run("mount", loop, str(fs_mnt))
        try:
            files = {f"f{i}": random.randbytes(random.randrange(1, 300_000)) for i in range(20)}
            for name, data in files.items():
                (fs_mnt / name).write_bytes(data)
            os.sync()
        finally:
            run("umount", str(fs_mnt), check=False)
        result = run("fsck.ext4", "-fn", loop, check=False, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        run("mount", "-o", "ro", loop, str(fs_mnt))
        try:
            for name, data in files.items():
                assert (fs_mnt / name).read_bytes() == data
        finally:
            run("umount", str(fs_mnt), check=False)
    finally:
        with contextlib.suppress(Exception):
            if os.path.ismount(fs_mnt):
                run("umount", "-l", str(fs_mnt), check=False)
        run("losetup", "-d", loop, check=False)


@pytest.mark.skipif(not shutil.which("fio"), reason="needs fio")
def test_fio_verify_crc32c(mounted: Path) -> None:
    result = run(
        "fio", "--name=verify", f"--filename={mounted / 'secure'}", "--offset=128M", "--size=16M",
        "--rw=randwrite", "--bs=4k", "--direct=1", "--ioengine=psync", "--verify=crc32c",
        "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0", "--output-format=json",
        timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    job = json.loads(result.stdout[result.stdout.index("{") :])["jobs"][0]
    assert job["error"] == 0
    assert job["write"]["io_bytes"] == 16 * MiB


# -- helpers ------------------------------------------------------------------------------------


def _write(path: Path, offset: int, data: bytes) -> None:
    buf = mmap.mmap(-1, len(data))
    buf[:] = data
    fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
    try:
        assert os.pwrite(fd, buf, offset) == len(data)
    finally:
        os.close(fd)


def _read(path: Path, offset: int, length: int) -> bytes:
    buf = mmap.mmap(-1, length)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        assert os.preadv(fd, [buf], offset) == length
    finally:
        os.close(fd)
    return bytes(buf)


def _stop_daemons_of(mountpoint: Path) -> None:
    """Unmount ``mountpoint`` and kill every ``fuseblk mount`` process serving it."""
    if is_mounted(mountpoint):
        run("fusermount3", "-uz", str(mountpoint), check=False)
    wanted = os.fsencode(os.path.abspath(mountpoint))
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"mount" in argv and wanted in argv:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)


def _wait_gone(pid: int, timeout: float = 20) -> None:
    eventually(lambda: not _alive(pid), timeout)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
