"""RAM disks: the storage of a backend that lives in this process's memory.

A RAM disk holds a whole image, header copies at its start exactly as in an image file, so an
engine over it behaves as over a real image: attaching is a reset, headers are kept up to date,
a second attach is EBUSY. Tests and tools use it to build real hardware without touching a file
system.

RAM disks are named ``memory://NAME`` and live in this process only, as long as some handle on
them exists (a backend over one, attached or closed): like the kernel's ``brd``, whose disks keep
their contents across opens until the module goes. ``memory://`` alone, when creating, picks a
fresh name. The memory is an anonymous mapping: untouched pages cost nothing, discarded pages are
given back to the kernel and read as zeroes.
"""

from __future__ import annotations

import errno
import itertools
import mmap
import weakref

from fuseblk.ciphers import Buffer, byte_view
from fuseblk.errors import FuseblkError
from fuseblk.hw.image_format import ImageHeader, write_headers

SCHEME = "memory"
_PAGE = mmap.PAGESIZE


class _RamDisk:
    """The memory itself, shared by every handle on one name."""

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.memory = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.view = memoryview(self.memory)
        self.owner: MemoryStorage | None = None  # the handle holding the lock


_disks: weakref.WeakValueDictionary[str, _RamDisk] = weakref.WeakValueDictionary()
_fresh_names = itertools.count(1)


class MemoryStorage:
    """A handle on a RAM disk (a :class:`fuseblk.hw.storage.Storage`)."""

    def __init__(self, disk: _RamDisk) -> None:
        self._disk = disk
        self._view = disk.view
        self._closed = False

    @classmethod
    def open(cls, name: str) -> MemoryStorage:
        """A new handle on the RAM disk ``memory://NAME``. Takes no lock."""
        disk = _disks.get(name)
        if disk is None:
            raise FuseblkError(
                errno.ENOENT, f"cannot open image {SCHEME}://{name}: no such RAM disk"
            )
        return cls(disk)

    @classmethod
    def create(cls, name: str, header: ImageHeader, *, overwrite: bool = False) -> MemoryStorage:
        """A new RAM disk holding ``header``, returned locked; an empty name picks a fresh one.

        Refuses a name in use unless ``overwrite``, and never one that is attached.
        """
        if not name:
            name = str(next(_fresh_names))
            while name in _disks:
                name = str(next(_fresh_names))
        old = _disks.get(name)
        if old is not None:
            if not overwrite:
                raise FuseblkError(errno.EEXIST, f"{SCHEME}://{name} already exists")
            if old.owner is not None:
                raise _busy(name)
        disk = _RamDisk(name, header.image_size)
        _disks[name] = disk
        storage = cls(disk)
        storage.lock()
        write_headers(storage, header)
        return storage

    # --- Storage ------------------------------------------------------------------------------

    network = None  # local: plain calls

    @property
    def reference(self) -> str:
        return f"{SCHEME}://{self._disk.name}"

    @property
    def size(self) -> int:
        return len(self._view)

    def read_into(self, buf: memoryview, offset: int) -> None:
        view = byte_view(buf)
        end = offset + len(view)
        self._check_range(offset, end)
        view[:] = self._view[offset:end]

    def write(self, data: Buffer, offset: int) -> None:
        view = byte_view(data)
        end = offset + len(view)
        self._check_range(offset, end)
        self._view[offset:end] = view

    def flush(self) -> None:
        self._check_range(0, 0)

    def discard(self, offset: int, length: int) -> None:
        """Zero the range; whole pages inside it go back to the kernel (they then read zeroes)."""
        end = offset + length
        self._check_range(offset, end)
        first = -(-offset // _PAGE) * _PAGE
        last = end // _PAGE * _PAGE
        if first >= last:
            self._view[offset:end] = bytes(length)
            return
        self._view[offset:first] = bytes(first - offset)
        self._disk.memory.madvise(mmap.MADV_DONTNEED, first, last - first)
        self._view[last:end] = bytes(end - last)

    def read_header(self, offset: int, length: int) -> bytes:
        self._check_range(0, 0)
        return bytes(self._view[offset : offset + length])

    def write_header(self, offset: int, data: bytes) -> None:
        self.write(data, offset)

    def lock(self, *, take_over: bool = False) -> None:
        self._check_range(0, 0)
        owner = self._disk.owner
        if owner is not None and owner is not self:
            raise _busy(self._disk.name)
        self._disk.owner = self

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._disk.owner is self:
                self._disk.owner = None

    def _check_range(self, start: int, end: int) -> None:
        if self._closed:
            raise OSError(errno.EBADF, f"{self.reference} is closed")
        if start < 0 or end > len(self._view):
            raise OSError(errno.EIO, f"{self.reference}: I/O beyond its end")

    def __repr__(self) -> str:
        return f"MemoryStorage({self.reference!r})"


def _busy(name: str) -> FuseblkError:
    return FuseblkError(errno.EBUSY, f"{SCHEME}://{name} is in use (attached by another open)")
