"""Byte-granular reads and writes on a block device: the block layer's side of a file request.

A mapped device only accepts I/O in whole logical blocks (``BlockDevice.block_size``: 512, or
the ``sector_size`` of a default-key/crypt target), but files are read and written at any offset.
Like the kernel's block-device file operations, this module clamps requests to the device
(reads past the end are short, writes starting at the end are ``ENOSPC``) and serves unaligned
requests by read-modify-write of the whole blocks they touch.

Every write — aligned or not — holds a range lock over the whole blocks it covers, so a
read-modify-write never interleaves with another write to the same block and no block is ever
torn between two writers. (An aligned write needs the lock too: without it, one landing between
a read-modify-write's read and its write would be lost. Uncontended, taking it awaits nothing.) Reads take no lock: like a real disk, a read racing a write may see
either version of a block, but never a block that no writer wrote.
"""

from __future__ import annotations

import errno

from fuseblk.bio import Bio, BioOp
from fuseblk.device import BlockDevice
from fuseblk.errors import FuseblkError
from fuseblk.rangelock import RangeLock

_READ, _WRITE = BioOp.READ, BioOp.WRITE


class BlockIO:
    """Reads and writes any byte range of one device, in whole blocks underneath.

    The block size is asked for on every request because a table reload may change it.
    """

    def __init__(self, device: BlockDevice) -> None:
        self.device = device
        self.locks = RangeLock()

    async def read(self, offset: int, size: int) -> memoryview:
        """Up to ``size`` bytes at ``offset``: short at the end of the device, empty past it."""
        device = self.device
        dev_size = device.size
        if offset < 0:
            raise FuseblkError(errno.EINVAL, f"negative offset {offset}")
        if offset >= dev_size or size <= 0:
            return memoryview(b"")
        bs = device.block_size
        if offset % bs == 0 and size % bs == 0 and offset + size <= dev_size:
            # whole blocks inside the device (nearly every request): the bio's buffer is the reply
            view = memoryview(bytearray(size))
            await device.submit(Bio(_READ, offset, size, view))
            return view
        size = min(size, dev_size - offset)
        start = offset - offset % bs
        end = min(-(-(offset + size) // bs) * bs, dev_size)
        buf = bytearray(end - start)
        await device.submit(Bio.read(start, buf))
        view = memoryview(buf)
        if start == offset and end == offset + size:
            return view
        return view[offset - start : offset - start + size]

    async def write(self, offset: int, data: bytes | bytearray | memoryview) -> int:
        """Write ``data`` at ``offset``; the count written is short if it runs past the end.

        As for a block device, a write starting at or after the end is ``ENOSPC``.
        """
        length = len(data)
        device = self.device
        dev_size = device.size
        if offset < 0:
            raise FuseblkError(errno.EINVAL, f"negative offset {offset}")
        if length == 0:
            return 0
        if offset >= dev_size:
            raise FuseblkError(
                errno.ENOSPC,
                f"write at {offset} is past the end of {device.name} ({dev_size} bytes)",
            )
        if offset + length > dev_size:
            length = dev_size - offset
            data = memoryview(data)[:length]
        bs = device.block_size
        start = offset - offset % bs
        end = min(-(-(offset + length) // bs) * bs, dev_size)
        locks = self.locks
        hold = locks.try_acquire(start, end) or await locks.acquire(start, end)
        try:
            if start == offset and end == offset + length:
                await device.submit(Bio(_WRITE, offset, length, memoryview(data).cast("B")))
            else:
                await self._read_modify_write(start, end, offset, data, bs)
        finally:
            locks.release(hold)
        return length

    async def _read_modify_write(
        self, start: int, end: int, offset: int, data: bytes | bytearray | memoryview, bs: int
    ) -> None:
        """Merge ``data`` into the whole blocks ``[start, end)``, reading only the partial ends."""
        buf = bytearray(end - start)
        view = memoryview(buf)
        head_partial = offset != start
        tail_partial = offset + len(data) != end
        if head_partial:
            head_end = min(start + bs, end)
            await self.device.submit(Bio.read(start, view[: head_end - start]))
        else:
            head_end = start
        if tail_partial:
            tail_start = (offset + len(data) - 1) // bs * bs
            if tail_start >= head_end:  # not already read as the head block
                await self.device.submit(Bio.read(tail_start, view[tail_start - start :]))
        view[offset - start : offset - start + len(data)] = data
        await self.device.submit(Bio.write(start, buf))

    async def flush(self) -> None:
        """``REQ_PREFLUSH``: everything written so far is durable on every backend below."""
        await self.device.submit(Bio.flush())
