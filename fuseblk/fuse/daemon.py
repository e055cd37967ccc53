"""The mount's lifecycle: mount, serve requests and the control socket, shut down cleanly.

One trio nursery holds everything the daemon runs: pyfuse3's request workers, the control
server and the signal watcher. Every way out — SIGINT/SIGTERM, a ``shutdown`` control request,
an external ``umount``, an exception — goes through the same sequence, so the mount never goes
stale and the images always end clean:

1. suspended devices are resumed with their live table (held requests must finish), then
   ``pyfuse3.terminate()``: stop taking requests; requests in flight run to completion
   (pyfuse3's workers finish the request they hold before looking at the session again);
2. ``DeviceManager.flush_all()`` and ``close()``: every backend flushed, headers written;
3. ``pyfuse3.close(unmount=True)``: the mount disappears (libfuse detaches it lazily, so a
   still-open file cannot leave it stale).

``fuseblk mount`` returns only once the mount answers requests: without ``--foreground`` it
forks before trio starts and the parent waits on a pipe for the child's "mounted" (or its error),
for at most STARTUP_TIMEOUT. Trio's nurseries wrap what escapes them in exception groups
("Exceptions from Trio nursery (1 sub-exception)"); a startup failure leaves this module as the
FuseblkError it is (:func:`startup_error`), in the foreground and through the pipe alike.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import functools
import logging
import os
import select
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pyfuse3
import trio

from fuseblk.control.server import serve_control, socket_path_for
from fuseblk.errors import FuseblkError
from fuseblk.fuse.ops import DeviceFiles, ServedManager

log = logging.getLogger(__name__)

READY_TIMEOUT = 30.0  # seconds for the mount's first request to be answered
# seconds `fuseblk mount` waits for the daemon's "mounted": building the devices (images are
# sparse, so quick) and READY_TIMEOUT, with room to spare; then the daemon is stopped
STARTUP_TIMEOUT = 120.0
SHUTDOWN_IO_TIMEOUT = 5.0  # seconds shutdown waits for requests in flight before terminating


@dataclass(frozen=True)
class MountSettings:
    mountpoint: Path
    allow_other: bool = False
    min_tasks: int = 4  # idle pyfuse3 workers kept waiting for requests
    max_tasks: int = 64  # concurrent requests; a slow target stalls only its own requests

    def fuse_options(self) -> set[str]:
        options = {"fsname=fuseblk", "subtype=fuseblk", "default_permissions"}
        if self.allow_other:
            options.add("allow_other")
        return options


# -- mount table --------------------------------------------------------------------------------


def _unescape_mountinfo(field: str) -> str:
    r"""Mountinfo escapes space, tab, newline and backslash as ``\040``-style octal."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_type(path: str | os.PathLike[str]) -> str | None:
    """The filesystem type mounted at ``path`` (``fuse.fuseblk`` for ours), or None.

    Read from /proc/self/mountinfo: ``os.path.ismount`` stats the path, which hangs on a FUSE
    mount whose daemon hangs and fails on one whose daemon died; the mount table answers
    either way. The last mount on the path wins, as path lookup sees it.
    """
    target = os.path.abspath(os.fspath(path))
    with contextlib.suppress(OSError):
        target = os.path.join(os.path.realpath(os.path.dirname(target)), os.path.basename(target))
    found = None
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as table:
        for line in table:
            fields = line.rstrip("\n").split(" ")
            if len(fields) > 4 and _unescape_mountinfo(fields[4]) == target and "-" in fields:
                found = fields[fields.index("-", 6) + 1]
    return found


def is_mountpoint(path: str | os.PathLike[str]) -> bool:
    """Whether anything is mounted at ``path`` (see :func:`mount_type`)."""
    return mount_type(path) is not None


FUSEBLK_FSTYPE = "fuse.fuseblk"


# -- one running mount ----------------------------------------------------------------------------


class _Session:
    """The mount being served by this process (pyfuse3 allows one per process)."""

    def __init__(self) -> None:
        self.shutdown = trio.Event()
        self.fuse_done = trio.Event()
        self.reason = ""

    def request_shutdown(self, reason: str = "requested") -> None:
        if not self.shutdown.is_set():
            self.reason = reason
            self.shutdown.set()


_current: _Session | None = None


def request_shutdown(reason: str = "requested") -> None:
    """Ask the mount served by this process to shut down (from its trio thread)."""
    if _current is not None:
        _current.request_shutdown(reason)


async def _watch_signals(session: _Session) -> None:
    # SIGHUP too: a foreground daemon whose terminal closes must not leave a stale mount.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("received %s: shutting down", signal.Signals(signum).name)
            session.request_shutdown(signal.Signals(signum).name)


async def _run_fuse(session: _Session, settings: MountSettings) -> None:
    try:
        await pyfuse3.main(settings.min_tasks, settings.max_tasks)
    finally:
        session.fuse_done.set()
        session.request_shutdown("the mount went away")


async def _start_control(
    nursery: trio.Nursery, manager: ServedManager, mountpoint: Path, session: _Session
) -> None:
    socket_path = socket_path_for(mountpoint)  # resolves the path: before the mount is up
    await nursery.start(
        functools.partial(
            serve_control,
            manager,
            socket_path,
            on_shutdown=functools.partial(session.request_shutdown, "control request"),
            mountpoint=mountpoint,
        )
    )


async def serve(
    manager: ServedManager,
    settings: MountSettings,
    *,
    on_ready: Callable[[], object] | None = None,
    handle_signals: bool = True,
    control: bool = True,
) -> None:
    """Mount ``manager``'s devices at ``settings.mountpoint`` and serve until shut down.

    Owns ``manager`` from here on: it is flushed and closed on every way out. ``on_ready`` is
    called once the mount has answered its first request.
    """
    global _current
    mountpoint = Path(os.path.abspath(settings.mountpoint))
    ops: DeviceFiles | None = None
    mounted = False
    session = _Session()
    try:
        check_mountpoint(mountpoint)  # again: the caller's check may be a fork and a build ago
        ops = DeviceFiles(manager)
        _current = session
        async with trio.open_nursery() as nursery:
            if handle_signals:
                nursery.start_soon(_watch_signals, session)
            if control:
                await _start_control(nursery, manager, mountpoint, session)
            try:
                pyfuse3.init(ops, str(mountpoint), settings.fuse_options())
            except RuntimeError as exc:
                raise FuseblkError(errno.EIO, f"cannot mount {mountpoint}: {exc}") from None
            mounted = ops.mounted = True
            nursery.start_soon(_run_fuse, session, settings)
            with trio.move_on_after(READY_TIMEOUT) as ready:
                # The first request answered proves the kernel's INIT went through.
                await trio.to_thread.run_sync(os.stat, mountpoint, abandon_on_cancel=True)
            if ready.cancelled_caught:
                raise FuseblkError(
                    errno.ETIMEDOUT, f"{mountpoint} did not answer within {READY_TIMEOUT:g} s"
                )
            log.info("mounted %s: %s", mountpoint, ", ".join(manager.names()) or "no devices")
            if on_ready is not None:
                on_ready()
            await session.shutdown.wait()
            log.info("unmounting %s (%s)", mountpoint, session.reason)
            # Requests held by a suspended device would never finish, and terminate() waits
            # for requests in flight: let them complete against the live table first.
            for name in await manager.lift_suspensions():
                log.warning("shutdown: resumed suspended device %s so held I/O completes", name)
            with trio.move_on_after(SHUTDOWN_IO_TIMEOUT) as waited:
                await ops.wait_io_idle()
            if waited.cancelled_caught:
                log.warning("shutdown: I/O still in flight after %s s", SHUTDOWN_IO_TIMEOUT)
            if not session.fuse_done.is_set():
                pyfuse3.terminate()
            await session.fuse_done.wait()
            nursery.cancel_scope.cancel()
    finally:
        if ops is not None:
            ops.mounted = False
            ops.detach()
        with trio.CancelScope(shield=True):
            await _close_manager(manager)
        if mounted:
            pyfuse3.close(unmount=True)
            log.info("unmounted %s", mountpoint)
        if _current is session:
            _current = None


async def _close_manager(manager: ServedManager) -> None:
    """Flush and close every device and backend; failures are logged, never hide the unmount."""
    for step in (manager.flush_all, manager.close):
        try:
            await step()
        except Exception:
            log.exception("shutdown: %s failed", step.__name__)


# -- the daemon process ------------------------------------------------------------------------

_M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
_HEAP_KEEP = 256 << 20
_HEAP_ALLOC_BELOW = 32 << 20


def tune_malloc() -> None:
    """Keep freed request buffers in the heap instead of returning them to the kernel.

    Every request allocates buffers of up to 1 MiB (pyfuse3's copy of a write, read buffers,
    bounce buffers). With glibc's defaults such sizes are mmapped or trimmed from the heap top
    on free, so each request pays hundreds of page faults, which dominate large sequential I/O
    through the FUSE layer. The cost is that the heap stays at its peak (a few MiB per
    concurrent request).
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc: nothing to tune
        return
    mallopt(_M_TRIM_THRESHOLD, _HEAP_KEEP)
    mallopt(_M_MMAP_THRESHOLD, _HEAP_ALLOC_BELOW)


def run_foreground(build: Callable[[], Awaitable[ServedManager]], settings: MountSettings) -> int:
    """Build the devices and serve in this process until shut down."""
    check_mountpoint(settings.mountpoint)
    tune_malloc()
    _run_mount(build, settings, None)
    return 0


def startup_error(exc: BaseException) -> FuseblkError | None:
    """The FuseblkError ``exc`` is, or the first one of an exception group holding nothing
    else (nested groups included); None for anything else, which stays a bug to report."""
    if isinstance(exc, FuseblkError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        errors = [startup_error(e) for e in exc.exceptions]
        if errors and all(errors):
            return errors[0]
    return None


def _run_mount(
    build: Callable[[], Awaitable[ServedManager]],
    settings: MountSettings,
    on_ready: Callable[[], object] | None,
) -> None:
    try:
        trio.run(_build_and_serve, build, settings, on_ready)
    except BaseExceptionGroup as group:
        err = startup_error(group)
        if err is None:
            raise
        raise err from None


async def _build_and_serve(
    build: Callable[[], Awaitable[ServedManager]],
    settings: MountSettings,
    on_ready: Callable[[], object] | None,
) -> None:
    await serve(await build(), settings, on_ready=on_ready)


def run_daemon(
    build: Callable[[], Awaitable[ServedManager]],
    settings: MountSettings,
    *,
    setup_child: Callable[[], None] | None = None,
    startup_timeout: float = STARTUP_TIMEOUT,
) -> int:
    """Fork; the child serves, the parent returns once the mount is ready (or with its error).

    The fork happens before trio or pyfuse3 start, so the child owns a clean process. Startup
    errors come back through the pipe as one line and are raised here as FuseblkError; a child
    silent for ``startup_timeout`` seconds is stopped (SIGTERM: before the mount that ends it,
    after it the daemon unmounts cleanly) and reported as ETIMEDOUT.
    """
    check_mountpoint(settings.mountpoint)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write_fd)
        return _await_child(read_fd, pid, startup_timeout)
    os.close(read_fd)
    pipe = _ReadyPipe(write_fd)
    status = 1
    try:
        os.setsid()
        os.chdir("/")
        if setup_child is not None:
            setup_child()
        _detach_stdio()
        tune_malloc()
        status = _child_main(build, settings, pipe)
    except BaseException as exc:  # nothing may escape a forked child
        # dynamic: any exception; OSError and FuseblkError carry an errno, the others do not
        pipe.send(f"error {getattr(exc, 'errno', None) or errno.EIO} {exc}")
    finally:
        os._exit(status)


class _ReadyPipe:
    """The child's one line to the waiting parent: "mounted" or "error ERRNO MESSAGE".

    Closed after the first line, and never written again: the descriptor number may by then
    belong to an image file.
    """

    def __init__(self, fd: int) -> None:
        self.fd: int | None = fd

    def send(self, message: str) -> None:
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        with contextlib.suppress(OSError):
            os.write(fd, message.replace("\n", " ").encode() + b"\n")
        os.close(fd)


def _child_main(
    build: Callable[[], Awaitable[ServedManager]], settings: MountSettings, pipe: _ReadyPipe
) -> int:
    try:
        _run_mount(build, settings, lambda: pipe.send("mounted"))
    except FuseblkError as err:
        log.error("%s", err.message)
        pipe.send(f"error {err.errno} {err.message}")
        return 1
    except BaseException as exc:
        log.exception("daemon failed")
        pipe.send(f"error {errno.EIO} {type(exc).__name__}: {exc}")
        return 1
    return 0


def _await_child(read_fd: int, pid: int, timeout: float) -> int:
    line = _read_line(read_fd, timeout)
    if line is None:
        _stop(pid)
        raise FuseblkError(
            errno.ETIMEDOUT,
            f"the daemon did not report ready within {timeout:g} s; stopped it (see its log)",
        )
    if line == "mounted":
        return 0
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    if line.startswith("error "):
        _, code, message = (line.split(" ", 2) + ["", ""])[:3]
        raise FuseblkError(int(code) if code.isascii() and code.isdigit() else errno.EIO, message)
    raise FuseblkError(errno.EIO, "the daemon exited before the mount was ready (see its log)")


def _read_line(fd: int, timeout: float) -> str | None:
    """The child's one line ("" if it exited without one), or None after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    data = b""
    try:
        while not data.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    return data.decode(errors="replace").strip()


def _stop(pid: int, grace: float = 10.0) -> None:
    """SIGTERM the child and reap it if it goes within ``grace`` seconds."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:
                return
        except ChildProcessError:
            return
        time.sleep(0.05)


def _detach_stdio() -> None:
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    sys.stderr = open(os.devnull, "w")  # noqa: SIM115


def check_mountpoint(mountpoint: Path) -> None:
    """Refuse, with a clear message, a mountpoint that is already a mount or not a directory."""
    if is_mountpoint(mountpoint):
        raise FuseblkError(errno.EBUSY, f"{mountpoint} is already a mount point")
    if not os.path.isdir(mountpoint):
        raise FuseblkError(errno.ENOTDIR, f"mount point {mountpoint} is not a directory")
