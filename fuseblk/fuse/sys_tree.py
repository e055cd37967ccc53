"""``MNT/.sys``: the kernel's ``/sys/block/<dev>/queue/crypto/`` for every device, read-only.

Scripts written against sysfs (``grep . /sys/block/*/queue/crypto/*``, xfstests' inline
encryption checks) can be pointed at ``MNT/.sys`` instead of ``/sys``. The tree holds
``block/<dev>/queue/`` for every mapped device and backend, and under it the ``crypto/``
directory exactly as :mod:`fuseblk.blkcrypto.crypto_sysfs` renders the device's profile (none
for a device without one). It is rebuilt from the devices on every request and the kernel is
told to cache nothing of it, so it follows table loads, resumes and renames at once.

``.sys`` answers a lookup by name but is not listed in the mount's directory: a listing of the
mount is a listing of devices, and tools that walk it must not find a device called ``.sys``.
A mapped device that is itself named ``.sys`` hides the tree (its file is what the name opens);
``fuseblk dm sysfs`` still prints it.
Like sysfs attributes, every file is ``0444`` with a size of 4096 whatever it holds, and opening
one for writing, or creating anything under ``.sys``, fails with EACCES.

Inodes and file handles of the tree are numbers from :data:`SYS_INODE_BASE` up, far above the
device files' (which count up from 2), so the FUSE operations tell them apart by number alone.
A path keeps its inode for the life of the mount.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable
from typing import Protocol

import pyfuse3

from fuseblk.blkcrypto.crypto_sysfs import CRYPTO_DIR, crypto_sysfs
from fuseblk.device import BlockDevice
from fuseblk.errors import FuseblkError

SYS_NAME = b".sys"
SYS_INODE_BASE = 1 << 48
DIR_MODE = stat.S_IFDIR | 0o555
FILE_MODE = stat.S_IFREG | 0o444
ATTRIBUTE_SIZE = 4096  # what sysfs reports as the size of every attribute file

SysPath = tuple[str, ...]  # components below .sys; () is .sys itself


class BlockDevices(Protocol):
    """What the tree needs from the device manager: every device with a ``/sys/block`` entry."""

    def block_names(self) -> list[str]: ...

    def block_device(self, name: str) -> BlockDevice: ...


def sys_tree(devices: BlockDevices) -> dict[SysPath, str | None]:
    """Every path of ``.sys`` now: a directory maps to None, a file to its contents.

    A backend attached by path is named by that path, which is no directory entry: it has none.
    """
    tree: dict[SysPath, str | None] = {(): None, ("block",): None}
    crypto_parts = tuple(CRYPTO_DIR.split("/"))
    for name in devices.block_names():
        if "/" in name or name in (".", ".."):
            continue
        queue = ("block", name, *crypto_parts[:-1])
        tree[("block", name)] = None
        tree[queue] = None
        view = crypto_sysfs(devices.block_device(name).crypto_profile)
        if view is None:
            continue
        crypto = ("block", name, *crypto_parts)
        tree[crypto] = None
        for sub in view.dirs:
            tree[crypto + tuple(sub.split("/"))] = None
        for path, content in view.files.items():
            tree[crypto + tuple(path.split("/"))] = content
    return tree


def read_only(what: str) -> FuseblkError:
    return FuseblkError(errno.EACCES, f"{what}: .sys is a read-only view of sysfs")


class SysDirectory:
    """The ``.sys`` tree's side of the FUSE operations (lookup, attributes, listing, reading)."""

    def __init__(
        self,
        devices: BlockDevices,
        uid: int,
        gid: int,
        mount_root: Callable[[], pyfuse3.EntryAttributes],
    ) -> None:
        self.devices = devices
        self._mount_root = mount_root  # what ".." of .sys is
        self.uid = uid
        self.gid = gid
        self.root_inode = SYS_INODE_BASE
        self._inodes: dict[SysPath, int] = {(): SYS_INODE_BASE}
        self._paths: dict[int, SysPath] = {SYS_INODE_BASE: ()}
        self._next_inode = SYS_INODE_BASE + 1
        self._handles: dict[int, bytes] = {}  # an open file reads what it held when opened
        self._next_fh = SYS_INODE_BASE
        self._time_ns = time.time_ns()

    @staticmethod
    def owns(number: int) -> bool:
        """Whether an inode or file handle number belongs to the tree."""
        return number >= SYS_INODE_BASE

    def _inode(self, path: SysPath) -> int:
        inode = self._inodes.get(path)
        if inode is None:
            inode = self._inodes[path] = self._next_inode
            self._paths[inode] = path
            self._next_inode += 1
        return inode

    def _node(self, inode: int) -> tuple[SysPath, str | None, dict[SysPath, str | None]]:
        """The path of ``inode``, its contents (None: a directory) and the tree; ENOENT if the
        path is gone (its device was removed, or no longer has a crypto profile)."""
        path = self._paths.get(inode)
        tree = sys_tree(self.devices)
        if path is None or path not in tree:
            raise FuseblkError(errno.ENOENT, f"no .sys entry with inode {inode}")
        return path, tree[path], tree

    def _attrs(self, inode: int, content: str | None) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = inode
        attrs.generation = 0
        attrs.entry_timeout = 0  # the tree changes with tables: the kernel must ask every time
        attrs.attr_timeout = 0
        attrs.st_uid = self.uid
        attrs.st_gid = self.gid
        attrs.st_mode = DIR_MODE if content is None else FILE_MODE
        attrs.st_nlink = 2 if content is None else 1
        attrs.st_size = 0 if content is None else ATTRIBUTE_SIZE
        attrs.st_blksize = 4096
        attrs.st_blocks = 0
        attrs.st_atime_ns = attrs.st_mtime_ns = attrs.st_ctime_ns = self._time_ns
        return attrs

    def getattr(self, inode: int) -> pyfuse3.EntryAttributes:
        _, content, _ = self._node(inode)
        return self._attrs(inode, content)

    def lookup(self, parent_inode: int, name: bytes) -> pyfuse3.EntryAttributes:
        parent, content, tree = self._node(parent_inode)
        if content is not None:
            raise FuseblkError(errno.ENOTDIR, f".sys/{'/'.join(parent)} is not a directory")
        if name == b".":
            return self._attrs(parent_inode, None)
        if name == b"..":
            if not parent:
                return self._mount_root()
            return self._attrs(self._inode(parent[:-1]), None)
        try:
            path = (*parent, name.decode("utf-8"))
        except UnicodeDecodeError:
            raise FuseblkError(errno.ENOENT, "no such .sys entry") from None
        if path not in tree:
            raise FuseblkError(errno.ENOENT, f"no .sys/{'/'.join(path)}")
        return self._attrs(self._inode(path), tree[path])

    def opendir(self, inode: int) -> int:
        path, content, _ = self._node(inode)
        if content is not None:
            raise FuseblkError(errno.ENOTDIR, f".sys/{'/'.join(path)} is not a directory")
        return inode

    def readdir(self, inode: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        """Children in name order; ``start_id`` is how many were already returned."""
        parent, _, tree = self._node(inode)
        children = sorted(p for p in tree if len(p) == len(parent) + 1 and p[:-1] == parent)
        for index in range(start_id, len(children)):
            path = children[index]
            attrs = self._attrs(self._inode(path), tree[path])
            if not pyfuse3.readdir_reply(token, path[-1].encode("utf-8"), attrs, index + 1):
                return

    def open(self, inode: int, flags: int) -> pyfuse3.FileInfo:
        path, content, _ = self._node(inode)
        if content is None:
            raise FuseblkError(errno.EISDIR, f".sys/{'/'.join(path)} is a directory")
        if flags & os.O_ACCMODE != os.O_RDONLY:
            raise read_only(f"open .sys/{'/'.join(path)} for writing")
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = content.encode("ascii")
        return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False)

    def read(self, fh: int, off: int, size: int) -> bytes:
        try:
            data = self._handles[fh]
        except KeyError:
            raise FuseblkError(errno.EBADF, f"no open .sys file with handle {fh}") from None
        return data[off : off + size]

    def release(self, fh: int) -> None:
        self._handles.pop(fh, None)
