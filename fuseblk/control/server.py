"""The daemon's control server: runs DeviceManager commands arriving on its Unix socket.

Where the socket and its record live is :mod:`fuseblk.control.runtime`'s business. The server runs inside the daemon's trio nursery, one task per connection, and only translates
JSON-line requests (:mod:`fuseblk.control.protocol`) into calls on the :class:`DeviceManager`.
Errors go back as the errno the kernel would return. One request can only ever fail its own
connection: the daemon survives any input, and :class:`ControlLimits` bounds what clients may
hold of it (connections, buffered bytes, time), so that no input can hang it either.
"""

from __future__ import annotations

import errno
import inspect
import logging
import os
import socket as _stdsocket
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from fuseblk import __version__
from fuseblk.blkcrypto.crypto_sysfs import crypto_sysfs
from fuseblk.blkcrypto.wrapped_keys import DEFAULT_BUFFER_SIZE, WrappedKeyOp
from fuseblk.control.protocol import (
    MAX_LINE,
    PROTOCOL_VERSION,
    Request,
    RequestError,
    decode_request,
    encode,
    error_response,
    ok_response,
    redacted_args,
)
from fuseblk.control.runtime import SUN_PATH_MAX, check_private, read_record, write_record
from fuseblk.errors import FuseblkError, einval
from fuseblk.hw.profiles import parse_key_types
from fuseblk.modes import CryptoMode

log = logging.getLogger("fuseblk.control.server")


def jsonable(value: Any) -> Any:
    """A manager result made fit for JSON: capabilities, enums and paths become plain values.

    Bytes are never sent (they could be key material); they become a placeholder.
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "<bytes>"
    to_json = getattr(value, "to_json", None)  # dynamic: any result type may know its JSON form
    if callable(to_json):
        return jsonable(to_json())
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


class ControlCommands:
    """The commands of docs/control-protocol.md, each one call (or a few) on the manager.

    The manager serializes table-changing verbs itself, so two clients cannot interleave a load
    and a resume of the same device.
    """

    def __init__(self, manager: Any, on_shutdown: Callable[[], object] | None = None) -> None:
        self.manager = manager
        self.on_shutdown = on_shutdown

    async def execute(self, req: Request) -> Any:
        handler = getattr(self, f"cmd_{req.cmd}")  # dynamic: the decoder admitted only COMMANDS
        result = handler(**req.args)
        if inspect.isawaitable(result):
            result = await result
        return jsonable(result)

    def _names(self, name: str | None) -> list[str]:
        if name is not None:
            self.manager.get(name)  # ENXIO for an unknown device, before any output
            return [name]
        return sorted(self.manager.names())

    # -- lifecycle ------------------------------------------------------------------------------
    def cmd_ping(self) -> dict[str, Any]:
        return {"version": __version__, "protocol": PROTOCOL_VERSION, "pid": os.getpid()}

    cmd_version = cmd_ping

    async def cmd_create(
        self, name: str, table: str, fallback: str | None = None, force_attach: bool = False
    ) -> None:
        take_over = bool(force_attach)
        if fallback is None:
            await self.manager.create(name, table, take_over=take_over)
        else:
            await self.manager.create(name, table, fallback=fallback, take_over=take_over)

    async def cmd_load(self, name: str, table: str, force_attach: bool = False) -> None:
        await self.manager.load(name, table, take_over=bool(force_attach))

    async def cmd_clear(self, name: str) -> None:
        await self.manager.clear(name)

    async def cmd_resume(self, name: str) -> None:
        await self.manager.resume(name)

    async def cmd_suspend(self, name: str) -> None:
        await self.manager.suspend(name)

    async def cmd_remove(self, name: str) -> None:
        await self.manager.remove(name)

    async def cmd_rename(self, old: str, new: str) -> None:
        await self.manager.rename(old, new)

    # -- queries --------------------------------------------------------------------------------
    def cmd_table(self, name: str | None = None, show_keys: bool = False) -> list[dict[str, Any]]:
        return [
            {"name": n, "table": self.manager.table(n, show_keys=bool(show_keys))}
            for n in self._names(name)
        ]

    def cmd_status(self, name: str | None = None) -> list[dict[str, Any]]:
        return [{"name": n, "status": self.manager.status(n)} for n in self._names(name)]

    def cmd_info(self, name: str | None = None) -> list[dict[str, Any]]:
        return [self.manager.info(n) for n in self._names(name)]

    def cmd_ls(self) -> list[dict[str, Any]]:
        return [{"name": n, "size": self.manager.get(n).size} for n in self._names(None)]

    def cmd_sysfs(self, name: str | None = None) -> list[dict[str, Any]]:
        """``/sys/block/<dev>/queue/crypto/`` of a mapped device or backend, or of every one."""
        names = [name] if name is not None else self.manager.block_names()
        result = []
        for n in names:
            view = crypto_sysfs(self.manager.block_device(n).crypto_profile)
            result.append({"name": n, "crypto": None if view is None else view.files})
        return result

    def cmd_stats(self, name: str | None = None) -> Any:
        return self.manager.stats(name)

    # -- I/O and keys ---------------------------------------------------------------------------
    async def cmd_message(self, name: str, sector: int, args: list[str]) -> dict[str, Any]:
        if not args:  # types and the sector's range are the protocol's to check
            raise einval("message: 'args' must be a non-empty list of strings")
        reply = await self.manager.message(name, sector, list(args))
        return {"reply": reply or ""}

    async def cmd_evict_key(
        self,
        name: str,
        mode: str,
        key_hex: str,
        data_unit_size: int,
        dun_bytes: int | None = None,
        key_type: str | None = None,
    ) -> None:
        try:
            raw = bytes.fromhex(key_hex)
        except ValueError:
            raise einval("evict_key: key_hex is not hexadecimal") from None
        await self.manager.evict_raw_key(
            name,
            CryptoMode.parse(mode),
            raw,
            data_unit_size,
            dun_bytes,
            parse_key_types([key_type or "raw"]),
        )

    async def cmd_discard(self, name: str, offset: int, length: int) -> None:
        """``BLKDISCARD`` by hand: the FUSE layer cannot offer it (pyfuse3 has no fallocate)."""
        await self.manager.discard(name, offset, length)

    # -- injected hardware faults ---------------------------------------------------------------
    async def cmd_hw_fault(
        self,
        name: str,
        fault: str,
        count: int | None = None,
        probability: float | None = None,
        seed: int | None = None,
        ms: int | None = None,
    ) -> dict[str, Any]:
        return await self.manager.hw_fault(
            name, fault, count=count, probability=probability, seed=seed, ms=ms
        )

    def cmd_hw_status(self, name: str) -> dict[str, Any]:
        return self.manager.hw_status(name)

    # -- live hardware changes ------------------------------------------------------------------
    async def cmd_hw_set(
        self,
        name: str,
        modes: list[str] | None = None,
        keyslots: int | None = None,
        max_dun_bytes: int | None = None,
        key_types: list[str] | None = None,
        drain: bool | None = None,
    ) -> dict[str, Any]:
        return await self.manager.hw_set(
            name,
            modes=modes,
            keyslots=keyslots,
            max_dun_bytes=max_dun_bytes,
            key_types=key_types,
            drain=drain is not False,  # absent or null: drain
        )

    # -- hardware-wrapped keys ------------------------------------------------------------------
    def cmd_key_import(
        self, name: str, raw_key_hex: str, buffer_size: int | None = None
    ) -> dict[str, str]:
        blob = self._wrapped_key(name, WrappedKeyOp.IMPORT, raw_key_hex, buffer_size)
        return {"lt_key_hex": blob}

    def cmd_key_generate(self, name: str, buffer_size: int | None = None) -> dict[str, str]:
        return {"lt_key_hex": self._wrapped_key(name, WrappedKeyOp.GENERATE, "", buffer_size)}

    def cmd_key_prepare(
        self, name: str, lt_key_hex: str, buffer_size: int | None = None
    ) -> dict[str, str]:
        blob = self._wrapped_key(name, WrappedKeyOp.PREPARE, lt_key_hex, buffer_size)
        return {"eph_key_hex": blob}

    def cmd_key_derive_sw_secret(self, name: str, eph_key_hex: str) -> dict[str, str]:
        secret = self._wrapped_key(name, WrappedKeyOp.DERIVE_SW_SECRET, eph_key_hex, None)
        return {"sw_secret_hex": secret}

    def _wrapped_key(
        self, name: str, op: WrappedKeyOp, data_hex: str, buffer_size: int | None
    ) -> str:
        try:
            data = bytes.fromhex(data_hex)
        except ValueError:
            raise einval(f"key_{op.value}: the key is not hexadecimal") from None
        size = DEFAULT_BUFFER_SIZE if buffer_size is None else buffer_size
        result: bytes = self.manager.wrapped_key_op(name, op, data, size)
        return result.hex()

    async def cmd_shutdown(self, force: bool = False) -> None:
        """Refuse while devices are open (like umount(8)), unless forced.

        An open handle may be a loop device or a mounted filesystem: unmounting under it would
        leave it reading nothing. The connection calls ``on_shutdown`` after the reply went out.
        """
        busy = {} if force else self.manager.open_devices()
        if busy:
            what = ", ".join(f"{name} ({n} open)" for name, n in sorted(busy.items()))
            raise FuseblkError(
                errno.EBUSY,
                f"devices are in use: {what}; close them (losetup -d, umount) or use --force",
            )


@dataclass(frozen=True)
class ControlLimits:
    """What clients may hold of the daemon at once (docs/control-protocol.md, "Limits").

    Memory stays below about ``max_connections * max_line`` bytes of buffered requests, and a
    client that stops sending or reading gives its connection up after ``idle_timeout``.
    """

    max_connections: int = 32
    idle_timeout: float = 60.0  # seconds for a request line to arrive, or a reply to be taken
    max_line: int = MAX_LINE


class _LineTooLong(Exception):
    """A request line longer than the limit: answered, then the connection is dropped."""


class _LineReader:
    """Request lines off a stream, holding at most ``limit + 1`` bytes of the one being read."""

    def __init__(self, stream: trio.abc.ReceiveStream, limit: int) -> None:
        self._stream = stream
        self._limit = limit
        self._buf = bytearray()
        self._scanned = 0  # bytes of _buf known to hold no newline

    async def receive_line(self) -> bytes | None:
        """The next line without its newline; ``None`` at the end of the stream (a partial line
        there is dropped); :class:`_LineTooLong` as soon as the line is known to be too long."""
        while True:
            nl = self._buf.find(b"\n", self._scanned)
            if nl >= 0:
                if nl > self._limit:
                    raise _LineTooLong
                line = bytes(self._buf[:nl])
                del self._buf[: nl + 1]
                self._scanned = 0
                return line
            self._scanned = len(self._buf)
            if len(self._buf) > self._limit:
                raise _LineTooLong
            chunk = await self._stream.receive_some(min(65536, self._limit + 1 - len(self._buf)))
            if not chunk:
                return None
            self._buf += chunk


async def _serve_connection(
    stream: trio.abc.Stream, commands: ControlCommands, limits: ControlLimits
) -> None:
    """Serve one client until it leaves or misbehaves. Nothing raised here may reach the
    daemon's nursery: an unexpected error costs this connection only."""
    try:
        async with stream:
            await _serve_requests(stream, commands, limits)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the client went away
    except Exception as exc:  # a bug: drop this connection, keep serving the others
        _log_internal_error("dropped a connection after an internal error", exc)


async def _serve_requests(
    stream: trio.abc.Stream, commands: ControlCommands, limits: ControlLimits
) -> None:
    lines = _LineReader(stream, limits.max_line)
    while True:
        line: bytes | None = None
        too_long = False
        with trio.move_on_after(limits.idle_timeout) as waiting:
            try:
                line = await lines.receive_line()
            except _LineTooLong:
                too_long = True
        if waiting.cancelled_caught:
            log.info("control: closing a connection idle for %s s", limits.idle_timeout)
            return
        if too_long:
            err = FuseblkError(
                errno.EMSGSIZE, f"request longer than {limits.max_line} bytes (MAX_LINE)"
            )
            log.info("control: %s; closing the connection", err.message)
            await _send(stream, error_response(None, err), limits)
            return
        if line is None:
            return
        if not line.strip():
            continue
        response, shutdown = await _answer(line, commands)
        if not await _send(stream, response, limits):
            return
        if shutdown and commands.on_shutdown is not None:
            result = commands.on_shutdown()
            if inspect.isawaitable(result):
                await result


async def _send(
    stream: trio.abc.SendStream, response: dict[str, Any], limits: ControlLimits
) -> bool:
    """Send one reply line; ``False`` if the client did not take it within the idle timeout."""
    data = encode(response)
    if len(data) > limits.max_line + 1:
        err = FuseblkError(errno.EMSGSIZE, f"response longer than {limits.max_line} bytes")
        data = encode(error_response(response.get("id"), err))
    with trio.move_on_after(limits.idle_timeout):
        await stream.send_all(data)
        return True
    log.info("control: closing a connection that does not read its replies")
    return False


async def _refuse(stream: trio.abc.Stream, limits: ControlLimits) -> None:
    """Tell a connection beyond ``max_connections`` why it is closed, without waiting on it."""
    err = FuseblkError(
        errno.EAGAIN,
        f"too many control connections (at most {limits.max_connections}); try again later",
    )
    try:
        async with stream:
            with trio.move_on_after(1):
                await stream.send_all(encode(error_response(None, err)))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def _answer(line: bytes, commands: ControlCommands) -> tuple[dict[str, Any], bool]:
    try:
        req = decode_request(line)
    except RequestError as exc:
        log.info("control: rejected request: %s", exc.err.message)
        return error_response(exc.req_id, exc.err), False
    log.info("control: %s %s", req.cmd, redacted_args(req.cmd, req.args))
    try:
        result = await commands.execute(req)
    except FuseblkError as err:
        log.info("control: %s failed: %s (%s)", req.cmd, err.message, err.errno_name)
        return error_response(req.id, err), False
    except Exception as exc:  # a bug below: report it, keep serving
        _log_internal_error(f"{req.cmd} failed with an internal error", exc)
        internal = FuseblkError(errno.EIO, f"{req.cmd}: internal error ({type(exc).__name__})")
        return error_response(req.id, internal), False
    return ok_response(req.id, result), req.cmd == "shutdown"


def _log_internal_error(what: str, exc: Exception) -> None:
    """One ERROR line naming the exception's type; its stack at DEBUG. Never the exception's
    text: it could quote a request, hence a key."""
    log.error("control: %s (%s)", what, type(exc).__name__)
    if log.isEnabledFor(logging.DEBUG):
        stack = "".join(traceback.format_tb(exc.__traceback__))
        log.debug("control: where the %s was raised:\n%s", type(exc).__name__, stack.rstrip())


async def _bind(socket_path: Path) -> trio.socket.SocketType:
    if len(os.fsencode(socket_path)) > SUN_PATH_MAX:
        raise FuseblkError(errno.ENAMETOOLONG, f"control socket path too long: {socket_path}")
    socket_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    check_private(socket_path.parent)
    if socket_path.exists() or socket_path.is_symlink():
        if await _answers(socket_path):
            raise FuseblkError(errno.EADDRINUSE, f"another fuseblk daemon serves {socket_path}")
        socket_path.unlink(missing_ok=True)  # left behind by a daemon that died
    sock = trio.socket.socket(_stdsocket.AF_UNIX, _stdsocket.SOCK_STREAM)
    try:
        old_umask = os.umask(0o177)  # never a moment with a wider mode
        try:
            await sock.bind(os.fspath(socket_path))
        finally:
            os.umask(old_umask)
        os.chmod(socket_path, 0o600)
        sock.listen(16)
    except BaseException:
        sock.close()
        raise
    return sock


async def _answers(socket_path: Path) -> bool:
    probe = trio.socket.socket(_stdsocket.AF_UNIX, _stdsocket.SOCK_STREAM)
    with probe:
        with trio.move_on_after(2):
            try:
                await probe.connect(os.fspath(socket_path))
                return True
            except OSError:
                return False
    return True  # it accepted the connection attempt but hung: something is there


async def serve_control(
    manager: Any,
    socket_path: Path,
    *,
    on_shutdown: Callable[[], object],
    mountpoint: str | os.PathLike[str] | None = None,
    limits: ControlLimits = ControlLimits(),
    task_status: trio.TaskStatus[Path] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``manager`` on ``socket_path`` until cancelled; ``task_status.started(socket_path)``
    once clients can connect. Writes the daemon record next to the socket (``mountpoint`` is
    only displayed; pass it absolute) and removes both on the way out.

    ``on_shutdown`` (sync or async) is called after the reply to a ``shutdown`` request was sent.
    """
    socket_path = Path(socket_path)
    sock = await _bind(socket_path)
    mp = os.path.abspath(os.fspath(mountpoint)) if mountpoint is not None else None
    record = write_record(socket_path, mp)
    log.info("control socket listening on %s", socket_path)
    commands = ControlCommands(manager, on_shutdown)
    listener = trio.SocketListener(sock)
    open_connections = 0

    async def handler(stream: trio.SocketStream) -> None:
        nonlocal open_connections
        if open_connections >= limits.max_connections:
            log.info("control: refused a connection beyond %d", limits.max_connections)
            await _refuse(stream, limits)
            return
        open_connections += 1
        try:
            await _serve_connection(stream, commands, limits)
        finally:
            open_connections -= 1

    try:
        async with trio.open_nursery() as nursery:
            task_status.started(socket_path)
            await trio.serve_listeners(
                handler,
                [listener],
                handler_nursery=nursery,
            )
    finally:
        sock.close()  # no await here: this runs while being cancelled
        if _owns(record):
            record.unlink(missing_ok=True)
            socket_path.unlink(missing_ok=True)


def _owns(record: Path) -> bool:
    """Whether the record is still this process's (a successor may have taken the path)."""
    info = read_record(record)
    return info is None or info.pid == os.getpid()
