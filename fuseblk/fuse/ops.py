"""The FUSE layer: one regular file per mapped device; file requests become bios.

This module only translates. Reads and writes go to :class:`fuseblk.fuse.block_io.BlockIO` (which
owns alignment, clamping and read-modify-write), fsync and fdatasync become a FLUSH bio, close
flushes nothing (as closing a Linux block device), and the directory mirrors the device manager's
names, each a file name in UTF-8. Every operation's errors go through :func:`_fuse_error`, the
one place where :class:`FuseblkError` becomes ``FUSEError(errno)``: most operations under the
:func:`_fuse_errors` wrapper, read and write (the hot path) calling it themselves.

Files are opened with ``direct_io`` so the kernel's page cache neither hides the device nor
doubles memory use, and O_DIRECT users (fio, dd ``oflag=direct``, loop with ``--direct-io``)
get exactly the bios they asked for. Inode numbers follow a device for its whole life in the
mount (a rename keeps the inode, like renaming a file); a device created later never reuses a
number, so a stale kernel inode can never reach a different device.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, ParamSpec, Protocol, TypeVar

import pyfuse3
import trio

from fuseblk.device import BlockDevice
from fuseblk.dm.events import DeviceAdded, DeviceRemoved, DeviceRenamed, DeviceResized, DmEvent
from fuseblk.errors import FuseblkError
from fuseblk.fuse.block_io import BlockIO
from fuseblk.fuse.sys_tree import SYS_NAME, SysDirectory, read_only

log = logging.getLogger(__name__)

FILE_MODE = stat.S_IFREG | 0o600
DIR_MODE = stat.S_IFDIR | 0o755
ATTR_TIMEOUT = 1.0  # seconds; changes made through the manager invalidate explicitly

P = ParamSpec("P")
R = TypeVar("R")


class DeviceSource(Protocol):
    """What the FUSE layer needs from :class:`fuseblk.dm.DeviceManager`."""

    listeners: list[Callable[[DmEvent], Any]]

    def names(self) -> list[str]: ...

    def get(self, name: str) -> BlockDevice: ...

    def block_names(self) -> list[str]:
        """Mapped devices and backends: what ``.sys/block`` lists."""
        ...

    def block_device(self, name: str) -> BlockDevice: ...


class ServedManager(DeviceSource, Protocol):
    """What the daemon needs on top: releasing held I/O, flushing and closing at shutdown."""

    async def lift_suspensions(self) -> list[str]: ...

    async def flush_all(self) -> None: ...

    async def close(self) -> None: ...


def _fuse_errors(op: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """The FUSE boundary: FuseblkError → FUSEError(errno); a bug → EIO and a log line.

    pyfuse3 lets any other exception escape its main loop and take the mount down, so nothing
    but FUSEError may leave an operation.
    """

    @functools.wraps(op)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await op(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except Exception as exc:
            raise _fuse_error(op.__name__, exc) from None

    return wrapper


def _fuse_error(op_name: str, exc: Exception) -> pyfuse3.FUSEError:
    """What :func:`_fuse_errors` raises for ``exc`` (not a FUSEError) escaping ``op_name``."""
    if isinstance(exc, FuseblkError):
        # An I/O error is news to whoever reads the log (as the kernel's "I/O error, dev"
        # lines are); EPERM, ENOSPC and the like are the caller's business.
        level = logging.WARNING if exc.errno == errno.EIO else logging.DEBUG
        log.log(level, "%s: %s (%s)", op_name, exc.message, exc.errno_name)
        return pyfuse3.FUSEError(exc.errno)
    log.error("%s failed unexpectedly", op_name, exc_info=exc)
    return pyfuse3.FUSEError(errno.EIO)


class _RequestCount:
    """``with count:`` around a request; :meth:`wait_idle` until none is running.

    Every request pays ``with``, so the event is made only when someone waits (at shutdown):
    at queue depth 1 the count drops to zero after every request.
    """

    __slots__ = ("running", "_idle")

    def __init__(self) -> None:
        self.running = 0
        self._idle: trio.Event | None = None

    def __enter__(self) -> None:
        self.running += 1

    def __exit__(self, *exc: object) -> None:
        self.running -= 1
        if self.running == 0 and self._idle is not None:
            self._idle.set()
            self._idle = None

    async def wait_idle(self) -> None:
        if self.running:
            if self._idle is None:
                self._idle = trio.Event()
            await self._idle.wait()


def _file_name(name: str) -> bytes | None:
    """A device's name as a file name: its UTF-8 bytes; None for a name that has none (a lone
    surrogate), which ``os.fsencode`` would refuse with UnicodeEncodeError."""
    try:
        return name.encode("utf-8")
    except UnicodeEncodeError:
        return None


def _eperm(what: str) -> FuseblkError:
    return FuseblkError(
        errno.EPERM, f"{what}: the directory lists mapped devices; use 'fuseblk dm'"
    )


@dataclass(eq=False)
class DeviceFile:
    """The file of one mapped device."""

    inode: int
    name: str
    io: BlockIO
    ctime_ns: int = field(default_factory=time.time_ns)
    mtime_ns: int = 0

    def __post_init__(self) -> None:
        self.mtime_ns = self.ctime_ns

    @property
    def device(self) -> BlockDevice:
        return self.io.device


class DeviceFiles(pyfuse3.Operations):
    """pyfuse3 operations over a device manager's mapped devices."""

    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(
        self, manager: DeviceSource, *, uid: int | None = None, gid: int | None = None
    ) -> None:
        super().__init__()
        self.manager = manager
        self.uid = os.getuid() if uid is None else uid
        self.gid = os.getgid() if gid is None else gid
        self.mounted = False  # set by the daemon once the kernel knows our inodes
        self._files: dict[int, DeviceFile] = {}
        self._by_name: dict[str, DeviceFile] = {}
        self._next_inode = pyfuse3.ROOT_INODE + 1
        self._handles: dict[int, DeviceFile] = {}  # open files: a handle keeps its device
        self._next_fh = 1
        self._serving_io = _RequestCount()  # reads, writes, flushes: shutdown waits for them
        self._root_time_ns = time.time_ns()
        self.sys = SysDirectory(
            manager, self.uid, self.gid, lambda: self._attrs(pyfuse3.ROOT_INODE)
        )
        for name in manager.names():
            self._add(name)
        manager.listeners.append(self.on_device_event)

    def detach(self) -> None:
        """Stop following the manager (at shutdown)."""
        if self.on_device_event in self.manager.listeners:
            self.manager.listeners.remove(self.on_device_event)

    # -- following the device manager -------------------------------------------------------

    def _add(self, name: str) -> DeviceFile:
        entry = DeviceFile(self._next_inode, name, BlockIO(self.manager.get(name)))
        self._next_inode += 1
        self._files[entry.inode] = entry
        self._by_name[name] = entry
        return entry

    def on_device_event(self, event: DmEvent) -> None:
        """A DeviceManager listener: mirror adds, removals, renames and resizes.

        The kernel caches directory entries and attributes for ATTR_TIMEOUT; anything that
        changes under it is invalidated here. Entry invalidation goes through pyfuse3's notify
        thread because it may block until a related request finishes. A failure here is logged,
        never raised: the device manager's operation already happened.
        """
        try:
            self._follow(event)
        except Exception:
            log.exception("following device event %r", event)

    def _follow(self, event: DmEvent) -> None:
        match event:
            case DeviceAdded(name=name):
                if name in self._by_name:
                    self._forget_name(name)
                self._add(name)
                self._invalidate_entry(name)
            case DeviceRemoved(name=name):
                entry = self._by_name.get(name)
                if entry is not None:
                    self._forget_name(name)
                    self._invalidate_entry(name, deleted=entry.inode)
            case DeviceRenamed(old=old, new=new):
                entry = self._by_name.pop(old, None)
                if entry is not None:
                    if new in self._by_name:
                        self._forget_name(new)
                    entry.name = new
                    self._by_name[new] = entry
                    entry.ctime_ns = time.time_ns()
                self._invalidate_entry(old)
                self._invalidate_entry(new)
            case DeviceResized(name=name):
                entry = self._by_name.get(name)
                if entry is not None:
                    device = self.manager.get(name)
                    if device is not entry.io.device:  # keep the range locks unless it changed
                        entry.io = BlockIO(device)
                    entry.mtime_ns = entry.ctime_ns = time.time_ns()
                    self._invalidate_inode(entry.inode)

    def _forget_name(self, name: str) -> None:
        entry = self._by_name.pop(name)
        del self._files[entry.inode]

    def _invalidate_entry(self, name: str, deleted: int = 0) -> None:
        file_name = _file_name(name)
        if self.mounted and file_name is not None:
            pyfuse3.invalidate_entry_async(
                pyfuse3.ROOT_INODE, file_name, deleted, ignore_enoent=True
            )
        self._invalidate_inode(pyfuse3.ROOT_INODE)

    def _invalidate_inode(self, inode: int) -> None:
        if not self.mounted:
            return
        try:
            pyfuse3.invalidate_inode(inode, attr_only=True)
        except OSError as exc:
            if exc.errno != errno.ENOENT:  # the kernel never looked it up: nothing cached
                log.warning("invalidating inode %d: %s", inode, exc)

    # -- attributes -------------------------------------------------------------------------

    def _entry(self, inode: int) -> DeviceFile:
        try:
            return self._files[inode]
        except KeyError:
            raise FuseblkError(errno.ENOENT, f"no device file with inode {inode}") from None

    def _attrs(self, inode: int) -> pyfuse3.EntryAttributes:
        if self.sys.owns(inode):
            return self.sys.getattr(inode)
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = inode
        attrs.generation = 0
        attrs.entry_timeout = ATTR_TIMEOUT
        attrs.attr_timeout = ATTR_TIMEOUT
        attrs.st_uid = self.uid
        attrs.st_gid = self.gid
        if inode == pyfuse3.ROOT_INODE:
            attrs.st_mode = DIR_MODE
            attrs.st_nlink = 2
            attrs.st_size = 0
            attrs.st_blksize = 4096
            attrs.st_blocks = 0
            attrs.st_atime_ns = attrs.st_mtime_ns = attrs.st_ctime_ns = self._root_time_ns
            return attrs
        entry = self._entry(inode)
        size = entry.device.size
        attrs.st_mode = FILE_MODE
        attrs.st_nlink = 1
        attrs.st_size = size
        attrs.st_blksize = max(entry.device.block_size, 4096)
        attrs.st_blocks = size // 512
        attrs.st_atime_ns = entry.mtime_ns
        attrs.st_mtime_ns = entry.mtime_ns
        attrs.st_ctime_ns = entry.ctime_ns
        return attrs

    @_fuse_errors
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: Any = None
    ) -> pyfuse3.EntryAttributes:
        if self.sys.owns(parent_inode):
            return self.sys.lookup(parent_inode, name)
        if parent_inode != pyfuse3.ROOT_INODE:
            raise FuseblkError(errno.ENOTDIR, "device files have no entries")
        if name in (b".", b".."):
            return self._attrs(pyfuse3.ROOT_INODE)
        if name == SYS_NAME and SYS_NAME.decode() not in self._by_name:  # a device would win
            return self._attrs(self.sys.root_inode)
        text = name.decode("utf-8", "replace")
        entry = self._by_name.get(text) if _file_name(text) == name else None
        if entry is None:
            raise FuseblkError(errno.ENOENT, f"no device {text!r}")
        return self._attrs(entry.inode)

    @_fuse_errors
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attrs(inode)

    @_fuse_errors
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: Any,
    ) -> pyfuse3.EntryAttributes:
        """Only timestamps may change; a device's size is its table's (same size is a no-op)."""
        if inode == pyfuse3.ROOT_INODE:
            raise _eperm("setattr on the mount's root")
        if self.sys.owns(inode):
            raise read_only("setattr")
        entry = self._entry(inode)
        if fields.update_size and attr.st_size != entry.device.size:
            raise FuseblkError(
                errno.EPERM, f"{entry.name}: size is set by its table ({entry.device.size} bytes)"
            )
        if fields.update_mode or fields.update_uid or fields.update_gid:
            raise FuseblkError(errno.EPERM, f"{entry.name}: owner and mode are fixed")
        if fields.update_mtime:
            entry.mtime_ns = attr.st_mtime_ns
        return self._attrs(inode)

    @_fuse_errors
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        total = sum(entry.device.size for entry in self._files.values())
        data = pyfuse3.StatvfsData()
        data.f_bsize = 4096
        data.f_frsize = 512
        data.f_blocks = total // 512
        data.f_bfree = data.f_bavail = 0
        data.f_files = len(self._files) + 1
        data.f_ffree = data.f_favail = 0
        data.f_namemax = 255
        return data

    # -- the directory ------------------------------------------------------------------------

    @_fuse_errors
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        if self.sys.owns(inode):
            return self.sys.opendir(inode)
        if inode != pyfuse3.ROOT_INODE:
            raise FuseblkError(errno.ENOTDIR, "not a directory")
        return inode

    @_fuse_errors
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        """Entries in inode order; ``start_id`` is the last inode already returned.

        A name that is no file name is left out (and logged): one odd device must not make the
        whole directory unreadable. The device manager refuses such names; this is the backstop.
        """
        if self.sys.owns(fh):
            self.sys.readdir(fh, start_id, token)
            return
        for inode in sorted(i for i in self._files if i > start_id):
            entry = self._files[inode]
            file_name = _file_name(entry.name)
            if file_name is None:
                log.warning("not listing device %r: its name is not UTF-8 text", entry.name)
                continue
            if not pyfuse3.readdir_reply(token, file_name, self._attrs(inode), inode):
                return

    async def releasedir(self, fh: int) -> None:
        pass

    # -- the files ----------------------------------------------------------------------------

    @_fuse_errors
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        """A handle pins the device it opened (``open_count``: dm refuses to remove it)."""
        if inode == pyfuse3.ROOT_INODE:
            raise FuseblkError(errno.EISDIR, "is a directory")
        if self.sys.owns(inode):
            return self.sys.open(inode, flags)
        entry = self._entry(inode)
        # O_TRUNC is ignored, as opening a block device with it is (`dd of=DEV` passes it); only
        # an explicit truncate to another size is refused (setattr).
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = entry
        entry.device.open()
        return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False)

    def _handle(self, fh: int) -> DeviceFile:
        try:
            return self._handles[fh]
        except KeyError:
            raise FuseblkError(errno.EBADF, f"no open file with handle {fh}") from None

    # read and write are the hot path: _fuse_errors is written out in them rather than wrapped
    # around them, which saves a frame each.

    async def read(self, fh: int, off: int, size: int) -> memoryview:  # type: ignore[override]
        # pyfuse3 replies with any contiguous buffer; a view avoids copying the block buffer.
        try:
            if self.sys.owns(fh):
                return memoryview(self.sys.read(fh, off, size))
            entry = self._handles.get(fh) or self._handle(fh)
            with self._serving_io:
                return await entry.io.read(off, size)
        except pyfuse3.FUSEError:
            raise
        except Exception as exc:
            raise _fuse_error("read", exc) from None

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        try:
            entry = self._handles.get(fh) or self._handle(fh)
            with self._serving_io:
                written = await entry.io.write(off, buf)
            entry.mtime_ns = time.time_ns()
            return written
        except pyfuse3.FUSEError:
            raise
        except Exception as exc:
            raise _fuse_error("write", exc) from None

    async def flush(self, fh: int) -> None:
        """close(2) flushes nothing, as closing a Linux block device issues no cache flush
        (``blkdev_release``): only fsync does. A FLUSH here would fail the close of a device
        that fails writes, such as dm-flakey's ``error_writes`` while down, after mere reads."""

    @_fuse_errors
    async def fsync(self, fh: int, datasync: bool) -> None:
        """fsync and fdatasync: ``blkdev_fsync`` → ``blkdev_issue_flush``, a FLUSH bio."""
        with self._serving_io:
            await self._handle(fh).io.flush()

    async def wait_io_idle(self) -> None:
        """Until no read, write or flush is being served: the daemon's shutdown waits here, so
        that terminating the FUSE session never aborts a request that is still completing."""
        await self._serving_io.wait_idle()

    async def release(self, fh: int) -> None:
        if self.sys.owns(fh):
            self.sys.release(fh)
            return
        entry = self._handles.pop(fh, None)
        if entry is not None:
            entry.device.release()

    # -- the namespace is the device manager's ----------------------------------------------------

    def _refuse(self, parent_inode: int, what: str) -> FuseblkError:
        """EPERM in the mount's directory (use ``fuseblk dm``); EACCES under ``.sys``, as sysfs."""
        return read_only(what) if self.sys.owns(parent_inode) else _eperm(what)

    @_fuse_errors
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        raise self._refuse(parent_inode, f"create {os.fsdecode(name)!r}")

    @_fuse_errors
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise self._refuse(parent_inode, f"mknod {os.fsdecode(name)!r}")

    @_fuse_errors
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise self._refuse(parent_inode, f"mkdir {os.fsdecode(name)!r}")

    @_fuse_errors
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise self._refuse(parent_inode, f"unlink {os.fsdecode(name)!r}")

    @_fuse_errors
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise self._refuse(parent_inode, f"rmdir {os.fsdecode(name)!r}")

    @_fuse_errors
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: Any,
    ) -> None:
        raise self._refuse(parent_inode_old, f"rename {os.fsdecode(name_old)!r}")

    @_fuse_errors
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise self._refuse(parent_inode, f"symlink {os.fsdecode(name)!r}")

    @_fuse_errors
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise self._refuse(new_parent_inode, f"link {os.fsdecode(new_name)!r}")
