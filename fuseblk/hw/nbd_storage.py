"""NBD exports: the storage of a backend that lives on a server.

A backend reference may name an NBD export (``nbd+unix:///EXPORT?socket=PATH``,
``nbd://HOST[:PORT]/EXPORT``): nbdkit, ``qemu-nbd``, ``qemu-storage-daemon`` (which exports RBD,
iSCSI or any other block driver of QEMU). The export holds a whole image, header copies at its
start exactly as in an image file.

The engine's data path is asynchronous (:class:`fuseblk.hw.storage.NetworkIO`): libnbd's
``aio_*`` commands are issued on the trio thread and libnbd's pollable fd is waited on with
``trio.lowlevel.wait_readable``/``wait_writable``, so many requests are in flight on one
connection and no thread is spent per request. Whichever waiting request finds nobody polling
the fd polls it (:class:`_Connection`); libnbd runs the completion callbacks inside
``aio_notify_read``, on that same thread. The blocking :class:`~fuseblk.hw.storage.Storage`
calls (headers, opening, the ``fuseblk image`` tools) run the same coroutines: handed to the trio
run that drives the connection if there is one, in a private ``trio.run`` otherwise.

Failures are I/O errors, never hangs: a request without an answer after ``timeout`` seconds
(``FUSEBLK_NBD_TIMEOUT``, default :data:`DEFAULT_TIMEOUT`) fails with EIO and gives the
connection up, as does a server that hangs up. A background task then reconnects with
exponential backoff; requests meanwhile fail at once with EIO (raid1 above retires the leg and
resyncs it later), and are served again once the server answers.

Flush is NBD_CMD_FLUSH when the server offers it. Discard must read back zeroes (the engine's
``discard_zeroes_data``), which NBD_CMD_TRIM does not promise: it is NBD_CMD_WRITE_ZEROES without
``NO_HOLE`` (the server may trim) where offered, plain zeroes written otherwise. Requests are
split at the export's maximum block size; an export whose minimum block size exceeds a sector
cannot hold 512-byte bios and is refused.

No kernel lock spans machines, so an export is claimed through its header: :meth:`lock` records
this process as the holder (:class:`fuseblk.hw.image_format.Holder`) and refuses an image some
other live process holds, naming it. A claim left by a process that is gone on this host is
taken over; one from another host only when the attach asks to take it over
(``--force-attach``) or after ``fuseblk image check --repair``.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, TypeVar

import nbd
import trio

from fuseblk import SECTOR_SIZE
from fuseblk.ciphers import Buffer, byte_view
from fuseblk.errors import FuseblkError
from fuseblk.hw.holder import holder_is_gone, holder_is_live_here, this_process
from fuseblk.hw.image_format import Holder, ImageHeader, read_headers, write_headers

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 3.0  # seconds a request may wait for its answer
TIMEOUT_ENV = "FUSEBLK_NBD_TIMEOUT"
BACKOFF_FIRST = 0.1  # seconds before the first reconnect attempt, doubled up to BACKOFF_MAX
BACKOFF_MAX = 5.0
NBD_MAX_REQUEST = 32 * 1024 * 1024  # what every server takes when it states no maximum

T = TypeVar("T")


def request_timeout() -> float:
    value = os.environ.get(TIMEOUT_ENV)
    try:
        return float(value) if value else DEFAULT_TIMEOUT
    except ValueError:
        raise FuseblkError(errno.EINVAL, f"{TIMEOUT_ENV}={value!r} is not a number") from None


class _Completion:
    """One command's outcome, set by libnbd's completion callback."""

    __slots__ = ("finished", "error")

    def __init__(self) -> None:
        self.finished = False
        self.error = 0

    def __call__(self, err: Any) -> int:
        self.finished = True
        self.error = err.value
        return 1  # retire the command: nobody calls aio_command_completed


class _Connection:
    """One connected libnbd handle and the polling of its fd."""

    def __init__(self, handle: nbd.NBD) -> None:
        self.handle = handle
        self.fd = -1
        self.dead = ""  # why the connection was given up; empty while it is usable
        self._polling = False
        self._progress = trio.Event()  # set after each poll step, then replaced
        self._poll_scope: trio.CancelScope | None = None
        self._polling_writes = False

    async def wait(self, done: Callable[[], bool]) -> None:
        """Until ``done()`` or the connection is given up: polls the fd if nobody else does."""
        while not done() and not self.dead:
            if self._polling:
                await self._progress.wait()
                continue
            self._polling = True
            try:
                await self._step()
            finally:
                self._polling = False
                progress, self._progress = self._progress, trio.Event()
                progress.set()

    def kick(self) -> None:
        """A new command may need the fd writable: the poller looks at the direction again."""
        scope = self._poll_scope
        if scope is not None and not self._polling_writes:
            scope.cancel()

    async def _step(self) -> None:
        handle = self.handle
        direction = handle.aio_get_direction()
        writes = bool(direction & nbd.AIO_DIRECTION_WRITE)
        with trio.CancelScope() as scope:
            self._poll_scope, self._polling_writes = scope, writes
            try:
                if writes and direction & nbd.AIO_DIRECTION_READ:
                    readable = await _readable_or_writable(self.fd)
                elif writes:
                    await trio.lowlevel.wait_writable(self.fd)
                    readable = False
                else:
                    await trio.lowlevel.wait_readable(self.fd)
                    readable = True
            except trio.ClosedResourceError:
                self.dead = self.dead or "connection closed"
                return
            finally:
                self._poll_scope = None
        if scope.cancelled_caught:
            return
        try:
            if readable:
                handle.aio_notify_read()
            else:
                handle.aio_notify_write()
        except nbd.Error as exc:
            self.dead = exc.string
        if not self.dead and (handle.aio_is_dead() or handle.aio_is_closed()):
            self.dead = "the server closed the connection"

    def close(self) -> None:
        """Give the connection up: waiters wake and let go of it, and libnbd closes the socket
        when the last reference to the handle goes (no NBD_CMD_DISC: the server may not
        answer)."""
        self.dead = self.dead or "closed"
        if self.fd >= 0:
            trio.lowlevel.notify_closing(self.fd)
        progress, self._progress = self._progress, trio.Event()
        progress.set()


async def _readable_or_writable(fd: int) -> bool:
    """Wait for either; True if the fd became readable."""
    readable = False
    async with trio.open_nursery() as nursery:

        async def on_read() -> None:
            nonlocal readable
            await trio.lowlevel.wait_readable(fd)
            readable = True
            nursery.cancel_scope.cancel()

        async def on_write() -> None:
            await trio.lowlevel.wait_writable(fd)
            nursery.cancel_scope.cancel()

        nursery.start_soon(on_read)
        nursery.start_soon(on_write)
    return readable


def _connection_gone(conn: _Connection) -> bool:
    handle = conn.handle
    if not conn.dead and (handle.aio_is_dead() or handle.aio_is_closed()):
        conn.dead = "the server closed the connection"
    return bool(conn.dead)


class _BufferPool:
    """libnbd buffers reused across requests, by length and direction.

    Debian's python3-libnbd (1.14) never frees what a command was given: a ``Buffer`` it
    allocated keeps its memory after the last reference goes, and one made over a Python buffer
    keeps that buffer exported for good. A buffer per request would leak every byte ever
    transferred, so each request takes one here and gives it back once its command is answered
    (a command that timed out may still write into its buffer: that one is not given back).
    Reads use buffers libnbd allocated, which reuse costs nothing; writes need buffers whose
    bytes can be filled in place, a ``bytearray`` each, which costs libnbd a few bytes of
    bookkeeping per command. The pool holds what the most concurrent requests of each length
    needed at once.
    """

    def __init__(self) -> None:
        self._free: dict[tuple[bool, int], list[nbd.Buffer]] = {}

    def take(self, length: int, *, write: bool) -> nbd.Buffer:
        free = self._free.get((write, length))
        if free:
            return free.pop()
        return nbd.Buffer.from_buffer(bytearray(length)) if write else nbd.Buffer(length)

    def give(self, buf: nbd.Buffer, *, write: bool) -> None:
        self._free.setdefault((write, len(buf)), []).append(buf)


class NbdStorage:
    """An NBD export holding an image (a :class:`fuseblk.hw.storage.Storage` whose
    :attr:`network` is itself)."""

    def __init__(self, scheme: str, location: str, timeout: float) -> None:
        self._reference = f"{scheme}://{location}"
        self.timeout = timeout
        self._conn: _Connection | None = None
        self._state = "connecting"
        self._size = 0
        self._max_request = NBD_MAX_REQUEST
        self._can_flush = False
        self._can_zero = False
        self._token: trio.lowlevel.TrioToken | None = None  # the run that drives the connection
        self._reconnecting = False
        self._reconnects = 0
        self._claimed: Holder | None = None  # the holder this storage recorded
        self._closed = False
        self._buffers = _BufferPool()

    @classmethod
    def open(cls, scheme: str, location: str, *, timeout: float | None = None) -> NbdStorage:
        """Connect to the export. Takes no claim."""
        storage = cls(scheme, location, request_timeout() if timeout is None else timeout)
        try:
            storage._run_sync(storage._first_connect)
        except OSError as exc:
            raise FuseblkError(
                exc.errno or errno.EIO, f"cannot open image {storage.reference}: {exc.strerror}"
            ) from None
        return storage

    @classmethod
    def create(
        cls, scheme: str, location: str, header: ImageHeader, *, overwrite: bool = False
    ) -> NbdStorage:
        """Write ``header`` at the start of the export, returned claimed.

        The export's size is the server's: it must hold the header and data area. Refuses an
        export that already holds an image unless ``overwrite``, and never one held by another
        live process.
        """
        storage = cls.open(scheme, location)
        try:
            if storage.size < header.image_size:
                raise FuseblkError(
                    errno.ENOSPC,
                    f"cannot create {storage.reference}: the export has {storage.size} bytes, "
                    f"the image needs {header.image_size}",
                )
            existing = storage._current_header()
            if existing is not None and not overwrite:
                raise FuseblkError(errno.EEXIST, f"{storage.reference} already holds an image")
            storage.lock()
            write_headers(storage, replace(header, holder=storage._claimed))
        except OSError as exc:
            storage.close()
            raise FuseblkError(
                exc.errno or errno.EIO, f"cannot create {storage.reference}: {exc.strerror}"
            ) from None
        except BaseException:
            storage.close()
            raise
        return storage

    # --- Storage ------------------------------------------------------------------------------

    @property
    def reference(self) -> str:
        return self._reference

    @property
    def size(self) -> int:
        return self._size

    @property
    def network(self) -> NbdStorage:
        return self

    def read_into(self, buf: memoryview, offset: int) -> None:
        self._run_sync(self.aread_into, buf, offset)

    def write(self, data: Buffer, offset: int) -> None:
        self._run_sync(self.awrite, data, offset)

    def flush(self) -> None:
        self._run_sync(self.aflush)

    def discard(self, offset: int, length: int) -> None:
        self._run_sync(self.adiscard, offset, length)

    def read_header(self, offset: int, length: int) -> bytes:
        length = max(0, min(length, self._size - offset))
        buf = bytearray(length)
        self._run_sync(self.aread_into, memoryview(buf), offset)
        return bytes(buf)

    def write_header(self, offset: int, data: bytes) -> None:
        self._run_sync(self._write_durably, data, offset)

    def lock(self, *, take_over: bool = False) -> None:
        """Claim the image: refuse (EBUSY) one another live process holds, record this one.

        A claim whose process is gone on this host is taken over; one from another host only
        with ``take_over`` (the user vouches that daemon is gone); a live one here never.
        """
        if self._claimed is not None:
            return
        header = self._current_header()
        me = this_process()
        if header is None:  # nothing to claim yet (create writes the claim with the header)
            self._claimed = me
            return
        holder = header.holder
        if holder is not None and holder != me:
            if holder_is_live_here(holder):
                raise FuseblkError(
                    errno.EBUSY, f"{self.reference} is in use: attached by {holder.describe()}"
                )
            if not take_over and not holder_is_gone(holder):
                raise FuseblkError(
                    errno.EBUSY,
                    f"{self.reference} is in use: attached by {holder.describe()} "
                    "(if that daemon is gone, attach with --force-attach or take the image "
                    f"over with 'fuseblk image check --repair {self.reference}')",
                )
            log.warning("%s: taking over the claim of %s", self.reference, holder.describe())
        self._claimed = me
        write_headers(self, replace(header, holder=me))

    def close(self) -> None:
        """Disconnect. No I/O: the engine's last header (on a clean close) dropped the claim."""
        if self._closed:
            return
        self._closed = True
        self._state = "closed"
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.dead = "closed"  # the handle, and its socket, go with the last reference

    def _current_header(self) -> ImageHeader | None:
        try:
            return read_headers(self).current
        except FuseblkError:
            return None

    # --- NetworkIO ------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """The connection as ``fuseblk stats`` and the backend's info show it."""
        return {
            "server": self._reference,
            "state": self._state,
            "reconnects": self._reconnects,
            "timeout": self.timeout,
        }

    async def aread_into(self, buf: Buffer, offset: int) -> None:
        view = byte_view(buf)
        for start, length in self._chunks(offset, len(view)):
            nbuf = self._buffers.take(length, write=False)
            await self._command("read", nbd.NBD.aio_pread, nbuf, start)
            pos = start - offset
            view[pos : pos + length] = nbuf.to_bytearray()
            self._buffers.give(nbuf, write=False)

    async def awrite(self, data: Buffer, offset: int) -> None:
        view = byte_view(data)
        for start, length in self._chunks(offset, len(view)):
            pos = start - offset
            nbuf = self._buffers.take(length, write=True)
            nbuf.to_buffer()[:] = view[pos : pos + length]
            await self._command("write", nbd.NBD.aio_pwrite, nbuf, start)
            self._buffers.give(nbuf, write=True)

    async def aflush(self) -> None:
        if self._can_flush:
            await self._command("flush", nbd.NBD.aio_flush)

    async def adiscard(self, offset: int, length: int) -> None:
        for start, count in self._chunks(offset, length):
            if self._can_zero:
                await self._command("discard", nbd.NBD.aio_zero, count, start)
            else:
                await self.awrite(bytes(count), start)

    # --- the connection -------------------------------------------------------------------------

    def _chunks(self, offset: int, length: int) -> list[tuple[int, int]]:
        if offset < 0 or offset + length > self._size:
            raise OSError(errno.EIO, f"{self._reference}: I/O beyond the end of the export")
        step = self._max_request
        return [(offset + i, min(step, length - i)) for i in range(0, length, step)]

    async def _write_durably(self, data: bytes, offset: int) -> None:
        await self.awrite(data, offset)
        await self.aflush()

    async def _command(self, what: str, issue: Callable[..., Any], *args: Any) -> None:
        """Issue one command (``issue(handle, *args, completion)``, an ``aio_*`` method of
        libnbd's handle) and wait for its answer, at most ``timeout`` seconds."""
        self._token = trio.lowlevel.current_trio_token()
        conn = self._conn
        if conn is None or conn.dead:
            self._start_reconnecting()
            raise OSError(errno.EIO, f"{what} failed: not connected ({self._state})")
        done = _Completion()
        try:
            issue(conn.handle, *args, done)
        except nbd.Error as exc:
            if _connection_gone(conn):  # a request is never refused for the link's sake alone
                self._lose(conn, exc.string)
                raise OSError(errno.EIO, f"{what} failed: {exc.string}") from None
            raise OSError(exc.errnum or errno.EIO, f"{what} failed: {exc.string}") from None
        conn.kick()
        with trio.move_on_after(self.timeout):
            await conn.wait(lambda: done.finished)
        if not done.finished or (done.error and _connection_gone(conn)):
            # no answer, or libnbd retired the command when the connection died (ENOTCONN):
            # the block layer sees a media error, as from a disk that went away
            why = conn.dead or f"no answer in {self.timeout:g} s"
            self._lose(conn, why)
            raise OSError(errno.EIO, f"{what} failed: {why}")
        if done.error:  # the server's answer (an EIO of its disk, ENOSPC...)
            raise OSError(done.error, f"{what} failed: {os.strerror(done.error)}")

    def _lose(self, conn: _Connection, why: str) -> None:
        """Give ``conn`` up (timed out or hung up) and reconnect in the background."""
        if self._conn is not conn:
            return
        log.warning("%s: connection lost: %s", self._reference, why)
        self._conn = None
        self._state = f"disconnected ({why})"
        conn.dead = why
        conn.close()
        self._start_reconnecting()

    def _start_reconnecting(self) -> None:
        if not self._reconnecting and not self._closed:
            self._reconnecting = True
            trio.lowlevel.spawn_system_task(self._reconnect)

    async def _reconnect(self) -> None:
        delay = BACKOFF_FIRST
        try:
            while not self._closed and self._conn is None:
                await trio.sleep(delay)
                try:
                    conn = await self._connect()
                except OSError as exc:
                    self._state = f"disconnected ({exc.strerror}; retrying)"
                    delay = min(delay * 2, BACKOFF_MAX)
                    continue
                if self._closed:
                    conn.close()
                    return
                self._conn = conn
                self._reconnects += 1
                self._state = "connected"
                log.warning("%s: reconnected", self._reference)
        except Exception:  # a system task must not crash the run
            log.exception("%s: reconnecting failed", self._reference)
        finally:
            self._reconnecting = False

    async def _first_connect(self) -> None:
        conn = await self._connect()
        handle = conn.handle
        try:
            minimum = handle.get_block_size(nbd.SIZE_MINIMUM)
            maximum = handle.get_block_size(nbd.SIZE_MAXIMUM)
            if minimum > SECTOR_SIZE:
                raise OSError(
                    errno.EINVAL,
                    f"the export's minimum block size is {minimum} bytes: "
                    f"it cannot hold {SECTOR_SIZE}-byte sectors",
                )
            if maximum >= SECTOR_SIZE:
                self._max_request = min(NBD_MAX_REQUEST, maximum // SECTOR_SIZE * SECTOR_SIZE)
            self._size = handle.get_size()
            self._can_flush = bool(handle.can_flush())
            self._can_zero = bool(handle.can_zero())
            if handle.is_read_only():
                raise OSError(errno.EROFS, "the export is read-only")
        except nbd.Error as exc:
            conn.close()
            raise OSError(exc.errnum or errno.EIO, exc.string) from None
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._state = "connected"

    async def _connect(self) -> _Connection:
        """A new connection, handshake done, within ``timeout`` seconds."""
        handle = nbd.NBD()
        conn = _Connection(handle)
        try:
            handle.aio_connect_uri(self._reference)
            conn.fd = handle.aio_get_fd()
            with trio.move_on_after(self.timeout):
                await conn.wait(lambda: not handle.aio_is_connecting())
            if not handle.aio_is_ready():
                why = conn.dead or f"no handshake in {self.timeout:g} s"
                conn.close()
                raise OSError(errno.EIO, why)
            if self._size and handle.get_size() != self._size:
                conn.close()
                raise OSError(errno.EIO, "the export changed its size")
        except nbd.Error as exc:
            raise OSError(exc.errnum or errno.EIO, exc.string) from None
        return conn

    def _run_sync(self, afn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run a coroutine of this storage from blocking code: in the trio run that drives the
        connection if there is one (the caller is then one of its worker threads), else here."""
        token = self._token
        if token is not None:
            try:
                return trio.from_thread.run(afn, *args, trio_token=token)
            except trio.RunFinishedError:
                self._token = None
        try:
            return trio.run(afn, *args)
        finally:
            self._token = None
            if self._reconnecting:  # the private run ended the reconnecting task with it
                self._reconnecting = False

    def __repr__(self) -> str:
        return f"NbdStorage({self._reference!r})"
