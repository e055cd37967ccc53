"""Where a daemon's control socket lives, how clients find it, and how stale entries go away."""

from __future__ import annotations

import errno
import functools
import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from fuseblk.control.client import ControlClient, resolve_socket
from fuseblk.control.runtime import find_daemons, runtime_dir, socket_path_for
from fuseblk.control.server import serve_control
from fuseblk.dm.manager import DeviceManager
from fuseblk.errors import FuseblkError


async def start_server(nursery: trio.Nursery, path: Path, mountpoint: Path | None = None) -> None:
    """A control server over an empty DeviceManager in ``nursery``, once clients can connect."""
    await nursery.start(
        functools.partial(
            serve_control, DeviceManager(), path, on_shutdown=lambda: None, mountpoint=mountpoint
        )
    )


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_runtime_dir_prefers_xdg_runtime_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("FUSEBLK_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert runtime_dir() == tmp_path / "fuseblk"


def test_runtime_dir_without_xdg_is_run_for_root_and_tmp_per_user(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("FUSEBLK_RUNTIME_DIR", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert runtime_dir() == Path("/run/fuseblk")
    monkeypatch.setattr(os, "geteuid", lambda: 1234)
    assert runtime_dir() == Path("/tmp/fuseblk-1234")


def test_socket_path_is_the_same_for_every_spelling_of_the_mountpoint(
    rundir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    (tmp_path / "link").symlink_to(mnt)
    monkeypatch.chdir(tmp_path)
    path = socket_path_for(mnt)
    assert path.parent == rundir and path.suffix == ".sock"
    assert (
        socket_path_for("mnt")
        == socket_path_for("./mnt/")
        == socket_path_for(tmp_path / "link")
        == path
    )
    other = tmp_path / "other"
    other.mkdir()
    assert socket_path_for(other) != path


async def test_serving_makes_a_private_socket_and_a_record_then_removes_both(
    rundir: Path, tmp_path: Path
) -> None:
    mnt = tmp_path / "mnt"
    path = socket_path_for(mnt)
    async with trio.open_nursery() as nursery:
        await start_server(nursery, path, mnt)
        assert stat.S_ISSOCK(path.stat().st_mode)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(rundir.stat().st_mode) == 0o700
        record = json.loads(path.with_suffix(".json").read_text())
        assert record == {"mountpoint": str(mnt), "pid": os.getpid(), "socket": str(path)}
        daemons = find_daemons()
        assert [(d.mountpoint, d.pid, d.socket) for d in daemons] == [(str(mnt), os.getpid(), path)]
        nursery.cancel_scope.cancel()
    assert not path.exists()
    assert not path.with_suffix(".json").exists()


async def test_runtime_dir_is_created_private(
    monkeypatch: pytest.MonkeyPatch, rundir: Path
) -> None:
    nested = rundir / "sub"
    monkeypatch.setenv("FUSEBLK_RUNTIME_DIR", str(nested))
    path = socket_path_for("/nowhere")
    async with trio.open_nursery() as nursery:
        await start_server(nursery, path)
        assert stat.S_IMODE(nested.stat().st_mode) == 0o700
        nursery.cancel_scope.cancel()


def test_stale_records_of_dead_daemons_are_removed(rundir: Path) -> None:
    sock_path = rundir / "0123456789abcdef.sock"
    sock_path.write_bytes(b"")  # what a killed daemon leaves behind
    record = sock_path.with_suffix(".json")
    record.write_text(
        json.dumps({"mountpoint": "/mnt/gone", "pid": _dead_pid(), "socket": str(sock_path)})
    )
    garbage = rundir / "fedcba9876543210.json"
    garbage.write_text("{half a record")
    assert find_daemons() == []
    assert not record.exists() and not sock_path.exists() and not garbage.exists()


def test_no_daemon_running_is_a_clear_enoent(rundir: Path) -> None:
    with pytest.raises(FuseblkError) as info:
        resolve_socket(None)
    assert info.value.errno == errno.ENOENT
    assert "no fuseblk daemon is running" in info.value.message


def test_unknown_mountpoint_is_enoent_naming_it(rundir: Path) -> None:
    with pytest.raises(FuseblkError) as info:
        ControlClient.for_mount("/mnt/nothing-here").call("ping")
    assert info.value.errno == errno.ENOENT
    assert "/mnt/nothing-here" in info.value.message


async def test_several_daemons_need_mount_to_choose(rundir: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    async with trio.open_nursery() as nursery:
        for mnt in (a, b):
            await start_server(nursery, socket_path_for(mnt), mnt)
        with pytest.raises(FuseblkError) as info:
            resolve_socket(None)
        assert info.value.errno == errno.EINVAL
        assert str(a) in info.value.message and str(b) in info.value.message
        assert "--mount" in info.value.message
        assert resolve_socket(b) == socket_path_for(b)
        nursery.cancel_scope.cancel()


async def test_a_socket_file_left_by_a_dead_daemon_is_replaced(rundir: Path) -> None:
    path = socket_path_for("/mnt/x")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays, nobody listens
    async with trio.open_nursery() as nursery:
        await start_server(nursery, path)
        result = await trio.to_thread.run_sync(lambda: ControlClient(path).call("ping"))
        assert result["pid"] == os.getpid()
        nursery.cancel_scope.cancel()


async def test_a_second_server_on_a_live_socket_is_eaddrinuse(rundir: Path) -> None:
    path = socket_path_for("/mnt/y")
    async with trio.open_nursery() as nursery:
        await start_server(nursery, path)
        with pytest.raises(FuseblkError) as info:
            await serve_control(DeviceManager(), path, on_shutdown=lambda: None)
        assert info.value.errno == errno.EADDRINUSE
        assert path.exists()  # the first server keeps its socket
        nursery.cancel_scope.cancel()


async def test_socket_path_too_long_is_enametoolong(tmp_path: Path) -> None:
    with pytest.raises(FuseblkError) as info:
        await serve_control(
            DeviceManager(), tmp_path / ("x" * 120 + ".sock"), on_shutdown=lambda: None
        )
    assert info.value.errno == errno.ENAMETOOLONG


def test_a_runtime_dir_open_to_others_is_refused(rundir: Path) -> None:
    rundir.chmod(0o755)
    with pytest.raises(FuseblkError) as info:
        find_daemons()
    assert info.value.errno == errno.EPERM and "0700" in info.value.message
    with pytest.raises(FuseblkError) as info:
        resolve_socket("/mnt/somewhere")
    assert info.value.errno == errno.EPERM


async def test_a_server_will_not_listen_in_a_directory_open_to_others(rundir: Path) -> None:
    rundir.chmod(0o777)
    with pytest.raises(FuseblkError) as info:
        await serve_control(DeviceManager(), socket_path_for("/mnt/z"), on_shutdown=lambda: None)
    assert info.value.errno == errno.EPERM
    assert not socket_path_for("/mnt/z").exists()
