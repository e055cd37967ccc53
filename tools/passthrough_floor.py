#!/usr/bin/env python3
"""The floor for fuseblk's per-request cost: the least a pyfuse3 + trio block file can do.

Mounts one file, ``disk``, whose reads and writes are ``os.preadv``/``os.pwrite`` on a region of
an image file: no bios, no tables, no crypto, no counters. It is what any pure-Python FUSE block
device pays for pyfuse3, trio and the kernel round trip, so tools/bench.py divides fuseblk's
figures by this one. Files are opened with ``direct_io``, as fuseblk's are.

Usage (foreground, until SIGINT/SIGTERM or ``fusermount3 -u MOUNTPOINT``)::

    python tools/passthrough_floor.py IMAGE MOUNTPOINT [--offset BYTES] [--size BYTES]
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import stat
import sys
from typing import Any

import pyfuse3
import trio

DISK_INODE = pyfuse3.ROOT_INODE + 1
DISK_NAME = b"disk"


class PassThrough(pyfuse3.Operations):  # type: ignore[misc]
    def __init__(self, fd: int, offset: int, size: int) -> None:
        super().__init__()
        self.fd, self.offset, self.size = fd, offset, size

    def _attr(self, inode: int) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = inode
        if inode == pyfuse3.ROOT_INODE:
            attr.st_mode, attr.st_nlink, attr.st_size = stat.S_IFDIR | 0o755, 2, 0
        else:
            attr.st_mode, attr.st_nlink, attr.st_size = stat.S_IFREG | 0o600, 1, self.size
        attr.st_uid, attr.st_gid = os.getuid(), os.getgid()
        attr.st_blksize = 4096
        attr.st_blocks = (attr.st_size + 511) // 512
        return attr

    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        if inode not in (pyfuse3.ROOT_INODE, DISK_INODE):
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(inode)

    async def lookup(self, parent: int, name: bytes, ctx: Any = None) -> pyfuse3.EntryAttributes:
        if parent != pyfuse3.ROOT_INODE or name != DISK_NAME:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(DISK_INODE)

    async def opendir(self, inode: int, ctx: Any) -> int:
        return inode

    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        if start_id == 0:
            pyfuse3.readdir_reply(token, DISK_NAME, self._attr(DISK_INODE), 1)

    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        if inode != DISK_INODE:
            raise pyfuse3.FUSEError(errno.EISDIR)
        return pyfuse3.FileInfo(fh=inode, direct_io=True, keep_cache=False)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        size = max(0, min(size, self.size - off))
        buf = bytearray(size)
        os.preadv(self.fd, [buf], self.offset + off)
        return bytes(buf)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        if off + len(buf) > self.size:
            raise pyfuse3.FUSEError(errno.ENOSPC)
        return os.pwrite(self.fd, buf, self.offset + off)

    async def fsync(self, fh: int, datasync: bool) -> None:
        os.fdatasync(self.fd)

    async def release(self, fh: int) -> None:
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("image")
    parser.add_argument("mountpoint")
    parser.add_argument("--offset", type=int, default=0, help="bytes into the image (default 0)")
    parser.add_argument("--size", type=int, help="bytes exposed (default: the rest of the image)")
    args = parser.parse_args()
    fd = os.open(args.image, os.O_RDWR | os.O_CLOEXEC)
    size = args.size if args.size is not None else os.fstat(fd).st_size - args.offset
    ops = PassThrough(fd, args.offset, size)
    pyfuse3.init(ops, args.mountpoint, {"fsname=passthrough-floor", "default_permissions"})

    async def stop_on_signal() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                pyfuse3.terminate()
                return

    async def serve() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stop_on_signal)
            await pyfuse3.main()  # returns on terminate() or when unmounted from outside
            nursery.cancel_scope.cancel()

    try:
        trio.run(serve)
    finally:
        pyfuse3.close(unmount=True)
        os.close(fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
