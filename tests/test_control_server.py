"""The control server over a real Unix socket, driving a real DeviceManager over image files."""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from control_helpers import manager_factory

from fuseblk import __version__
from fuseblk.bio import Bio
from fuseblk.control import server as server_module
from fuseblk.control.client import ControlClient
from fuseblk.control.protocol import MAX_LINE, PROTOCOL_VERSION, Request
from fuseblk.control.runtime import socket_path_for
from fuseblk.control.server import ControlLimits, serve_control
from fuseblk.dm.manager import DeviceManager
from fuseblk.errors import FuseblkError

KEY = bytes(range(64))
KEY_HEX = KEY.hex()
SECTORS = 16 * 1024 * 1024 // 512  # each test image

BASE = f"0 {SECTORS // 2} linear inline 0\n{SECTORS // 2} {SECTORS // 2} linear legacy 0\n"


def secure_table(sectors: int = SECTORS) -> str:
    return f"0 {sectors} default-key aes-xts-plain64 {KEY_HEX} 0 base 0 2 sector_size:4096 iv_large_sectors\n"


class Conn:
    """A raw client connection: sends any bytes, keeps every response line it read."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = bytearray()
        self.raw: list[bytes] = []
        self.next_id = 1

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def closed(self) -> bool:
        """Whether the server closed the connection (after any lines it sent first)."""
        while True:
            try:
                chunk = await self.stream.receive_some(65536)
            except trio.BrokenResourceError:
                return True
            if not chunk:
                return True
            self.buf += chunk

    async def recv(self) -> dict[str, Any]:
        while b"\n" not in self.buf:
            chunk = await self.stream.receive_some(65536)
            assert chunk, "server closed the connection"
            self.buf += chunk
        line, _, rest = bytes(self.buf).partition(b"\n")
        self.buf = bytearray(rest)
        self.raw.append(line)
        response: dict[str, Any] = json.loads(line)
        return response

    async def request(self, cmd: str, **args: Any) -> dict[str, Any]:
        req_id = self.next_id
        self.next_id += 1
        await self.send(json.dumps({"id": req_id, "cmd": cmd, "args": args}).encode() + b"\n")
        response = await self.recv()
        assert response["id"] == req_id
        return response

    async def ok(self, cmd: str, **args: Any) -> Any:
        response = await self.request(cmd, **args)
        assert response["ok"], response
        return response["result"]

    async def fails(self, cmd: str, **args: Any) -> dict[str, Any]:
        response = await self.request(cmd, **args)
        assert not response["ok"], response
        return response


@dataclass
class Server:
    manager: DeviceManager
    socket_path: Path
    shutdowns: list[str] = field(default_factory=list)

    async def connect(self) -> Conn:
        return Conn(await trio.open_unix_socket(str(self.socket_path)))


DEFAULT = ControlLimits()
SHORT = ControlLimits(max_connections=4, idle_timeout=0.3)


async def start_server(
    nursery: trio.Nursery, directory: Path, limits: ControlLimits = DEFAULT
) -> Server:
    manager = await manager_factory(directory)()
    mnt = directory / "mnt"
    srv = Server(manager, socket_path_for(mnt))
    await nursery.start(
        functools.partial(
            serve_control,
            manager,
            srv.socket_path,
            on_shutdown=lambda: srv.shutdowns.append("shutdown"),
            mountpoint=mnt,
            limits=limits,
        )
    )
    return srv


@pytest.fixture
async def server(nursery: trio.Nursery, rundir: Path, tmp_path: Path) -> AsyncIterator[Server]:
    srv = await start_server(nursery, tmp_path)
    yield srv
    await srv.manager.close()


@pytest.fixture
async def short_server(
    nursery: trio.Nursery, rundir: Path, tmp_path: Path
) -> AsyncIterator[Server]:
    """A server whose limits tests can reach quickly: 4 connections, 0.3 s idle."""
    srv = await start_server(nursery, tmp_path, SHORT)
    yield srv
    await srv.manager.close()


@pytest.fixture
async def conn(server: Server) -> AsyncIterator[Conn]:
    c = await server.connect()
    yield c
    await c.stream.aclose()


async def test_ping_and_version_report_the_daemon(conn: Conn) -> None:
    for cmd in ("ping", "version"):
        assert await conn.ok(cmd) == {
            "version": __version__,
            "protocol": PROTOCOL_VERSION,
            "pid": os.getpid(),
        }


async def test_create_then_ls_table_status_info(conn: Conn) -> None:
    assert await conn.ok("create", name="base", table=BASE, fallback="target") is None
    assert await conn.ok("ls") == [{"name": "base", "size": SECTORS * 512}]
    assert await conn.ok("table", name="base") == [{"name": "base", "table": BASE}]
    status = await conn.ok("status")
    assert status == [
        {
            "name": "base",
            "status": f"0 {SECTORS // 2} linear\n{SECTORS // 2} {SECTORS // 2} linear\n",
        }
    ]
    (info,) = await conn.ok("info", name="base")
    assert info["name"] == "base" and info["state"] == "ACTIVE" and info["tables"] == ["LIVE"]
    assert info["size"] == SECTORS * 512 and info["fallback"] == "target" and info["targets"] == 2
    # linear over keyslot hardware and over a disk without crypto: no inline crypto at all
    assert info["crypto"] is None or info["crypto"]["modes"] == {}


async def test_create_and_load_accept_force_attach(conn: Conn) -> None:
    """Nothing here is claimed by another host: the flag changes nothing but is understood."""
    assert await conn.ok("create", name="base", table=BASE, force_attach=True) is None
    assert await conn.ok("load", name="base", table=BASE, force_attach=False) is None
    assert await conn.ok("table", name="base") == [{"name": "base", "table": BASE}]


async def test_listing_without_a_name_covers_every_device_in_name_order(conn: Conn) -> None:
    await conn.ok("create", name="zeta", table="0 8 linear legacy 0\n")
    await conn.ok("create", name="alpha", table="0 16 linear legacy 8\n")
    assert [e["name"] for e in await conn.ok("table")] == ["alpha", "zeta"]
    assert [e["name"] for e in await conn.ok("status")] == ["alpha", "zeta"]
    assert [e["name"] for e in await conn.ok("info")] == ["alpha", "zeta"]
    assert await conn.ok("ls") == [
        {"name": "alpha", "size": 16 * 512},
        {"name": "zeta", "size": 8 * 512},
    ]


async def test_load_is_inactive_until_resume(conn: Conn) -> None:
    await conn.ok("create", name="dev", table="0 8 linear legacy 0\n")
    await conn.ok("load", name="dev", table="0 16 linear legacy 0\n")
    (info,) = await conn.ok("info", name="dev")
    assert info["tables"] == ["LIVE", "INACTIVE"] and info["size"] == 8 * 512
    await conn.ok("suspend", name="dev")
    (info,) = await conn.ok("info", name="dev")
    assert info["state"] == "SUSPENDED"
    await conn.ok("resume", name="dev")
    (info,) = await conn.ok("info", name="dev")
    assert (info["state"], info["tables"], info["size"]) == ("ACTIVE", ["LIVE"], 16 * 512)
    assert await conn.ok("table", name="dev") == [
        {"name": "dev", "table": "0 16 linear legacy 0\n"}
    ]


async def test_loading_a_table_with_less_inline_crypto_is_einval(conn: Conn) -> None:
    await conn.ok("create", name="fast", table="0 64 linear inline 0\n")
    err = await conn.fails("load", name="fast", table="0 64 linear legacy 0\n")
    assert (
        err["errno"] == errno.EINVAL and "more restrictive than the old table's" in err["message"]
    )
    (info,) = await conn.ok("info", name="fast")
    assert info["tables"] == ["LIVE"] and "AES-256-XTS" in info["crypto"]["modes"]


async def test_rename_and_remove(conn: Conn) -> None:
    await conn.ok("create", name="old", table="0 8 linear legacy 0\n")
    await conn.ok("rename", old="old", new="new")
    assert [e["name"] for e in await conn.ok("ls")] == ["new"]
    await conn.ok("remove", name="new")
    assert await conn.ok("ls") == []


async def test_manager_errors_travel_with_their_errno(conn: Conn) -> None:
    await conn.ok("create", name="dev", table="0 8 linear legacy 0\n")
    err = await conn.fails("create", name="dev", table="0 8 linear legacy 0\n")
    assert (err["errno"], err["error"]) == (errno.EEXIST, "EEXIST")
    err = await conn.fails("info", name="missing")
    assert (err["errno"], err["error"]) == (errno.ENXIO, "ENXIO") and "missing" in err["message"]
    err = await conn.fails("create", name="bad", table="0 8 linear nosuchdevice 0\n")
    assert err["errno"] == errno.EINVAL and "line 1" in err["message"]
    err = await conn.fails(
        "create", name="bad", table="0 8 linear legacy 0\n", fallback="sometimes"
    )
    assert err["errno"] == errno.EINVAL
    err = await conn.fails("message", name="dev", sector=0, args=["frob"])
    assert err["errno"] == errno.EINVAL and "unrecognised message" in err["message"]


async def test_message_reaches_the_target_at_the_sector(conn: Conn) -> None:
    await conn.ok("create", name="mirror", table="0 64 raid1 2 inline 0 legacy 0 1 nosync\n")
    assert (await conn.ok("status", name="mirror"))[0]["status"].split()[4] == "AA"
    result = await conn.ok("message", name="mirror", sector=0, args=["fail", "1"])
    assert set(result) == {"reply"}
    assert (await conn.ok("status", name="mirror"))[0]["status"].split()[4] == "AD"


async def test_discard_zeroes_the_range_below(server: Server, conn: Conn) -> None:
    await conn.ok("create", name="plain", table="0 64 linear legacy 0\n")
    dev = server.manager.get("plain")
    await dev.submit(Bio.write(0, b"\xa5" * (64 * 512)))
    await conn.ok("discard", name="plain", offset=4096, length=8192)
    buf = bytearray(64 * 512)
    await dev.submit(Bio.read(0, buf))
    assert buf[:4096] == b"\xa5" * 4096
    assert buf[4096:12288] == bytes(8192)
    assert buf[12288:] == b"\xa5" * (len(buf) - 12288)
    assert server.manager.stats("plain")["devices"]["plain"]["discards"] == 1


@pytest.mark.parametrize(
    ("offset", "length"), [(100, 512), (0, 1000), (0, 0), (-512, 512), (0, 65 * 512)]
)
async def test_discard_outside_or_misaligned_is_einval(
    conn: Conn, offset: int, length: int
) -> None:
    await conn.ok("create", name="plain", table="0 64 linear legacy 0\n")
    err = await conn.fails("discard", name="plain", offset=offset, length=length)
    assert err["errno"] == errno.EINVAL


async def _write_through_secure(server: Server, conn: Conn) -> None:
    """Program the key into the inline backend's keyslots by writing through default-key."""
    await conn.ok("create", name="base", table=BASE, fallback="target")
    await conn.ok("create", name="secure", table=secure_table())
    await server.manager.get("secure").submit(Bio.write(0, b"x" * 8192))


async def _inline_evictions(conn: Conn) -> int:
    profile = (await conn.ok("stats"))["backends"]["inline"]["profile"]
    assert profile.get("programs", 0) >= 1
    return int(profile.get("evictions", 0))


async def test_evict_key_removes_it_from_the_hardware_below(server: Server, conn: Conn) -> None:
    await _write_through_secure(server, conn)
    before = await _inline_evictions(conn)
    # the width default-key chose is in its status: the key is named by it exactly
    (status,) = await conn.ok("status", name="secure")
    assert "dun_bytes=2" in status["status"]  # 16 MiB of 4096-byte units: DUNs 0..4095
    args = {"mode": "AES-256-XTS", "key_hex": KEY_HEX, "data_unit_size": 4096}
    await conn.ok("evict_key", name="secure", dun_bytes=8, **args)  # another key: nothing
    assert await _inline_evictions(conn) == before
    await conn.ok("evict_key", name="secure", dun_bytes=2, **args)
    assert await _inline_evictions(conn) == before + 1
    # evicting a key that is not there is not an error (blk_crypto_evict_key)
    await conn.ok("evict_key", name="secure", dun_bytes=2, **args)


async def test_evict_key_without_a_dun_width_evicts_it_under_every_width(
    server: Server, conn: Conn
) -> None:
    await _write_through_secure(server, conn)
    before = await _inline_evictions(conn)
    await conn.ok(
        "evict_key", name="secure", mode="AES-256-XTS", key_hex=KEY_HEX, data_unit_size=4096
    )
    assert await _inline_evictions(conn) == before + 1


async def test_evict_key_with_a_bad_key_is_einval(conn: Conn) -> None:
    await conn.ok("create", name="plain", table="0 64 linear legacy 0\n")
    common = {"name": "plain", "mode": "AES-256-XTS", "data_unit_size": 4096}
    err = await conn.fails("evict_key", key_hex="zz" * 64, **common)
    assert err["errno"] == errno.EINVAL and "zz" not in err["message"]
    err = await conn.fails("evict_key", key_hex=KEY_HEX[:62], **common)
    assert err["errno"] == errno.EINVAL and KEY_HEX[:62] not in err["message"]
    err = await conn.fails(
        "evict_key", key_hex=KEY_HEX, name="plain", mode="rot13", data_unit_size=4096
    )
    assert err["errno"] == errno.EINVAL


async def test_key_bytes_never_appear_in_responses_or_logs(
    server: Server, conn: Conn, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await _write_through_secure(server, conn)
    await conn.ok("create", name="enc", table=f"0 64 crypt aes-xts-plain64 {KEY_HEX} 0 legacy 0\n")
    await server.manager.get("enc").submit(Bio.write(0, b"e" * 4096))
    assert KEY_HEX not in (await conn.ok("table", name="enc"))[0]["table"]
    hidden = await conn.ok("table", name="secure")
    assert KEY_HEX not in hidden[0]["table"]
    await conn.ok("table")
    await conn.ok("status")
    await conn.ok("info")
    await conn.ok("stats")
    await conn.ok(
        "evict_key",
        name="secure",
        mode="AES-256-XTS",
        key_hex=KEY_HEX,
        data_unit_size=4096,
    )
    await conn.fails("load", name="secure", table=secure_table() + "garbage line\n")
    await conn.send(
        b'{"id": 99, "cmd": "evict_key", "args": {"key_hex": "' + KEY_HEX.encode() + b'"\n'
    )
    await conn.recv()
    everything = b"\n".join(conn.raw).decode() + caplog.text
    for secret in (KEY_HEX, KEY_HEX.upper(), repr(KEY), KEY.decode("latin-1")):
        assert secret not in everything
    assert "control: create" in caplog.text and "control: evict_key" in caplog.text
    # only when asked
    shown = await conn.ok("table", name="secure", show_keys=True)
    assert KEY_HEX in shown[0]["table"]


async def test_malformed_requests_get_errors_and_the_connection_keeps_serving(conn: Conn) -> None:
    await conn.send(b"this is not json\n")
    assert (await conn.recv())["errno"] == errno.EINVAL
    await conn.send(b'{"id": 5, "cmd": "launch-missiles"}\n')
    response = await conn.recv()
    assert (response["id"], response["ok"], response["errno"]) == (5, False, errno.EINVAL)
    assert "unknown command" in response["message"]
    await conn.send(
        b'{"id": 6, "cmd": "create", "args": {"name": 3, "table": "0 8 linear legacy 0"}}\n'
    )
    assert (await conn.recv())["errno"] == errno.EINVAL
    await conn.send(b"\n\n")  # blank lines are ignored, not answered
    assert await conn.ok("ls") == []


async def test_an_oversized_line_is_refused_and_its_connection_closed(
    server: Server, conn: Conn
) -> None:
    await conn.send(
        b'{"id": 1, "cmd": "ping", "args": {"pad": "' + b"x" * (MAX_LINE + 10) + b'"}}\n'
    )
    response = await conn.recv()
    assert (response["ok"], response["errno"], response["id"]) == (False, errno.EMSGSIZE, None)
    with trio.fail_after(5):
        assert await conn.closed()
    assert (await (await server.connect()).ok("ping"))["version"] == __version__


async def test_a_partial_line_beyond_max_line_is_refused_without_waiting_for_its_end(
    conn: Conn,
) -> None:
    with trio.fail_after(5):
        await conn.send(b'{"id": 1, "cmd": "ping", "args": {"pad": "' + b"x" * MAX_LINE)
        response = await conn.recv()
        assert response["errno"] == errno.EMSGSIZE
        assert "longer than 1048576 bytes" in response["message"]
        assert await conn.closed()


async def test_json_nested_deeper_than_the_recursion_limit_is_einval_and_serving_goes_on(
    server: Server, conn: Conn
) -> None:
    await conn.send(b'{"id": 1, "cmd": "ls", "args": {"x": ' + b"[" * 100_000 + b"}}\n")
    response = await conn.recv()
    assert (response["errno"], response["message"]) == (
        errno.EINVAL,
        "malformed request: nested too deeply",
    )
    assert await conn.ok("ls") == []
    assert await (await server.connect()).ok("ls") == []


async def test_an_id_of_5000_digits_is_einval_and_serving_goes_on(
    server: Server, conn: Conn
) -> None:
    await conn.send(b'{"id": ' + b"7" * 5000 + b', "cmd": "ping"}\n')
    response = await conn.recv()
    assert (response["id"], response["errno"]) == (None, errno.EINVAL)
    assert "integer literal too long" in response["message"]
    assert (await conn.ok("ping"))["pid"] == os.getpid()
    assert (await (await server.connect()).ok("ping"))["pid"] == os.getpid()


async def test_a_number_out_of_range_is_einval_naming_the_argument(conn: Conn) -> None:
    await conn.ok("create", name="plain", table="0 64 linear legacy 0\n")
    err = await conn.fails("discard", name="plain", offset=2**63, length=512)
    assert err["errno"] == errno.EINVAL and "'offset'" in err["message"]
    err = await conn.fails("message", name="plain", sector="\u0660", args=["x"])
    assert err["errno"] == errno.EINVAL and "'sector'" in err["message"]


async def test_an_unexpected_error_outside_a_command_costs_only_its_connection(
    server: Server, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="fuseblk.control.server")
    real_decode = server_module.decode_request

    def decode_with_a_bug(line: bytes) -> Request:
        if b"trigger" in line:
            raise RuntimeError(f"a bug that quotes {KEY_HEX}")
        return real_decode(line)

    monkeypatch.setattr(server_module, "decode_request", decode_with_a_bug)
    victim, bystander = await server.connect(), await server.connect()
    await victim.send(b'{"id": 1, "cmd": "trigger"}\n')
    with trio.fail_after(5):
        assert await victim.closed()
    assert await bystander.ok("ls") == []
    assert await (await server.connect()).ok("ls") == []
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert "control: dropped a connection after an internal error (RuntimeError)" in errors
    assert KEY_HEX not in caplog.text  # not even in the DEBUG traceback
    assert "decode_with_a_bug" in caplog.text  # which is there, at DEBUG
    assert not any("Traceback" in m or "decode_with_a_bug" in m for m in errors)


async def test_connections_beyond_the_limit_are_refused_with_eagain(server: Server) -> None:
    limit = DEFAULT.max_connections
    with trio.fail_after(10):
        held = [await server.connect() for _ in range(limit)]
        await held[-1].ok("ping")  # all of them are being served
        refused = await server.connect()
        response = await refused.recv()
        assert (response["id"], response["errno"]) == (None, errno.EAGAIN)
        assert f"too many control connections (at most {limit})" in response["message"]
        assert await refused.closed()
        await held.pop().stream.aclose()
        await trio.testing.wait_all_tasks_blocked()  # the server has seen the close
        assert await (await server.connect()).ok("ls") == []
    for c in held:
        await c.stream.aclose()


async def test_an_idle_connection_is_closed_after_the_idle_timeout(short_server: Server) -> None:
    idle = await short_server.connect()
    await idle.ok("ping")
    with trio.fail_after(SHORT.idle_timeout + 5):
        assert await idle.closed()


async def test_a_line_left_half_sent_is_closed_after_the_idle_timeout(
    short_server: Server,
) -> None:
    stuck = await short_server.connect()
    with trio.fail_after(SHORT.idle_timeout + 5):
        for _ in range(3):  # dribbling bytes does not extend the timeout
            await stuck.send(b'{"id": 1, ')
            await trio.sleep(SHORT.idle_timeout / 3)
        assert await stuck.closed()
    assert await (await short_server.connect()).ok("ls") == []


async def test_idle_and_half_sent_connections_free_their_places(short_server: Server) -> None:
    for _ in range(SHORT.max_connections):
        c = await short_server.connect()
        await c.send(b'{"id": 1, "cmd": "ls"')
    await trio.sleep(SHORT.idle_timeout + 0.3)
    await trio.testing.wait_all_tasks_blocked()  # the timed-out connections are closed
    assert await (await short_server.connect()).ok("ls") == []


async def test_a_client_that_does_not_read_its_replies_is_dropped(short_server: Server) -> None:
    reader_less = await short_server.connect()

    async def flood() -> None:
        with contextlib.suppress(trio.BrokenResourceError):
            await reader_less.send(b'{"cmd": "ping"}\n' * 100_000)  # replies fill the socket

    with trio.fail_after(SHORT.idle_timeout + 10):
        await flood()
    assert await (await short_server.connect()).ok("ls") == []


async def test_clear_drops_the_inactive_table_only(conn: Conn) -> None:
    await conn.ok("create", name="dev", table="0 8 linear legacy 0\n")
    await conn.ok("load", name="dev", table="0 16 linear legacy 0\n")
    assert await conn.ok("clear", name="dev") is None
    (info,) = await conn.ok("info", name="dev")
    assert (info["state"], info["tables"], info["size"]) == ("ACTIVE", ["LIVE"], 8 * 512)
    await conn.ok("resume", name="dev")  # nothing left to swap in
    assert await conn.ok("table", name="dev") == [{"name": "dev", "table": "0 8 linear legacy 0\n"}]
    assert await conn.ok("clear", name="dev") is None  # no inactive table: nothing to do
    err = await conn.fails("clear", name="missing")
    assert err["errno"] == errno.ENXIO


async def test_the_client_refuses_a_request_over_max_line_as_too_long(server: Server) -> None:
    def scenario() -> FuseblkError:
        with ControlClient(server.socket_path) as client:
            with pytest.raises(FuseblkError) as info:
                client.call("create", name="big", table="0 8 linear legacy 0\n" * 60_000)
            assert client.call("ls") == []
            return info.value

    err = await trio.to_thread.run_sync(scenario)
    assert err.errno == errno.EMSGSIZE and "request too long" in err.message


async def test_the_client_reports_a_refused_connection_with_the_daemons_error(
    short_server: Server,
) -> None:
    held = [await short_server.connect() for _ in range(SHORT.max_connections)]
    await held[-1].ok("ping")

    def scenario() -> FuseblkError:
        with pytest.raises(FuseblkError) as info:
            ControlClient(short_server.socket_path).call("ping")
        return info.value

    err = await trio.to_thread.run_sync(scenario)
    assert err.errno == errno.EAGAIN and "too many control connections" in err.message
    for c in held:
        await c.stream.aclose()


async def test_the_client_reconnects_when_the_daemon_closed_its_idle_connection(
    short_server: Server,
) -> None:
    def scenario() -> list[Any]:
        with ControlClient(short_server.socket_path) as client:
            first = client.call("ls")
            time.sleep(SHORT.idle_timeout + 0.3)
            return [first, client.call("ls")]

    assert await trio.to_thread.run_sync(scenario) == [[], []]


async def test_the_daemon_keeps_serving_after_a_client_vanishes_mid_request(server: Server) -> None:
    c = await server.connect()
    await c.send(b'{"id": 1, "cmd": "ls"')
    await c.stream.aclose()
    c2 = await server.connect()
    assert await c2.ok("ls") == []
    await c2.stream.aclose()


async def test_an_internal_error_is_eio_and_the_server_survives(
    server: Server, conn: Conn, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(name: str | None = None) -> dict[str, Any]:
        raise RuntimeError("bug")

    monkeypatch.setattr(server.manager, "stats", broken)
    err = await conn.fails("stats")
    assert err["errno"] == errno.EIO and "RuntimeError" in err["message"]
    assert await conn.ok("ls") == []


async def test_two_clients_are_served_concurrently(server: Server) -> None:
    first, second = await server.connect(), await server.connect()
    await first.send(b'{"id": 1, "cmd": "ls"')  # first's request is incomplete...
    assert await second.ok("ping")  # ...and does not block second
    await first.send(b"}\n")
    assert (await first.recv())["result"] == []
    await first.stream.aclose()
    await second.stream.aclose()


async def test_shutdown_replies_before_calling_on_shutdown(server: Server, conn: Conn) -> None:
    response = await conn.request("shutdown")
    assert response["ok"] is True
    await trio.testing.wait_all_tasks_blocked()
    assert server.shutdowns == ["shutdown"]


async def test_sync_client_raises_daemon_errors_as_fuseblk_errors(server: Server) -> None:
    def scenario() -> tuple[Any, Any]:
        with ControlClient(server.socket_path) as client:
            client.call("create", name="dev", table="0 8 linear legacy 0\n", fallback=None)
            listing = client.call("ls")
            try:
                client.call("remove", name="nope")
            except FuseblkError as err:
                return listing, (err.errno, err.message)
            return listing, None

    listing, failure = await trio.to_thread.run_sync(scenario)
    assert listing == [{"name": "dev", "size": 4096}]
    assert failure is not None and failure[0] == errno.ENXIO and "nope" in failure[1]
