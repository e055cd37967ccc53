"""Image files: the storage of a backend that lives on a file system.

An image is a regular (sparse) file holding the header copies and the data area at the offsets
:mod:`fuseblk.hw.image_format` gives. Its owner holds an exclusive ``flock``: a second attach, in
this process or another, fails at once with EBUSY, and the kernel drops the lock of a killed
owner. Discard punches holes, so discarded ranges read back as zeroes and free their space.

Only regular files are images: anything else is refused when opened, before a single byte is
read (a FIFO would block the opener forever, a directory fails with EISDIR).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import stat

from fuseblk.ciphers import Buffer
from fuseblk.errors import FuseblkError
from fuseblk.hw.image_format import ImageHeader, write_headers
from fuseblk.hw.profiles import HardwareProfile

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Deallocate a range, keeping the file size: later reads return zeroes."""
    if _libc.fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def lock_image(fd: int, path: str | os.PathLike[str]) -> None:
    """Take the image's exclusive owner lock, or fail at once with EBUSY.

    ``flock`` belongs to the open file description, so a second open in the same process conflicts
    too, and the kernel drops the lock when its holder dies: a killed owner leaves nothing behind.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise FuseblkError(
            errno.EBUSY, f"{os.fspath(path)} is in use (locked by another process or another open)"
        ) from None


class FileStorage:
    """An open image file (a :class:`fuseblk.hw.storage.Storage`)."""

    def __init__(self, fd: int, path: str) -> None:
        self._fd = fd  # -1 once closed: I/O then fails with EBADF
        self._path = path  # as given, for messages
        self._reference = os.path.abspath(path)

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, writable: bool = True) -> FileStorage:
        """Open an existing image, refusing anything but a regular file. Takes no lock."""
        shown = os.fspath(path)
        flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC | os.O_NOCTTY
        try:
            fd = os.open(path, flags | os.O_NONBLOCK)  # a FIFO must not block the opener
        except OSError as exc:
            raise _open_error(shown, exc.errno or errno.EIO, exc.strerror) from None
        try:
            mode = os.fstat(fd).st_mode
            if stat.S_ISDIR(mode):
                raise _open_error(shown, errno.EISDIR, os.strerror(errno.EISDIR))
            if not stat.S_ISREG(mode):
                raise _open_error(shown, errno.EINVAL, "not a regular file")
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        except OSError as exc:
            os.close(fd)
            raise _open_error(shown, exc.errno or errno.EIO, exc.strerror) from None
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, shown)

    @classmethod
    def create(
        cls, path: str | os.PathLike[str], header: ImageHeader, *, overwrite: bool = False
    ) -> FileStorage:
        """A new sparse image holding ``header``, returned open and locked.

        Refuses an existing file unless ``overwrite``, and never an attached one (the lock is
        taken before truncating). Both header copies and the directory entry are durable when
        this returns; the data area is a hole. A failed create leaves no half-made file behind.
        """
        shown = os.fspath(path)
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOCTTY
        try:
            fd = os.open(path, flags | (0 if overwrite else os.O_EXCL), 0o600)
        except FileExistsError:
            raise FuseblkError(errno.EEXIST, f"{shown} already exists") from None
        except OSError as exc:
            raise FuseblkError(
                exc.errno or errno.EIO, f"cannot create {shown}: {exc.strerror}"
            ) from None
        storage = cls(fd, shown)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise FuseblkError(errno.EINVAL, f"cannot create {shown}: not a regular file")
            storage.lock()
            try:
                os.ftruncate(fd, 0)
                os.ftruncate(fd, header.image_size)
                write_headers(storage, header)
                _fsync_parent(path)
            except OSError as exc:
                raise FuseblkError(
                    exc.errno or errno.EIO, f"cannot create {shown}: {exc.strerror}"
                ) from None
        except BaseException:
            storage.close()
            if not overwrite:  # we made this file: leave nothing half-made behind
                os.unlink(path)
            raise
        return storage

    # --- Storage ------------------------------------------------------------------------------

    network = None  # local: plain calls

    @property
    def reference(self) -> str:
        return self._reference

    @property
    def size(self) -> int:
        return os.fstat(self._fd).st_size

    def read_into(self, buf: memoryview, offset: int) -> None:
        fd = self._fd
        done = os.preadv(fd, [buf], offset)
        while done < len(buf):  # short reads only happen if the file shrank under us
            more = os.preadv(fd, [buf[done:]], offset + done)
            if more <= 0:
                raise OSError(errno.EIO, "image file is shorter than its header says")
            done += more

    def write(self, data: Buffer, offset: int) -> None:
        fd = self._fd
        done = os.pwrite(fd, data, offset)
        if done < len(data):  # a full disk or a signal: write the rest, or fail with ENOSPC
            view = memoryview(data).cast("B")
            while done < len(view):
                done += os.pwrite(fd, view[done:], offset + done)

    def flush(self) -> None:
        os.fdatasync(self._fd)

    def discard(self, offset: int, length: int) -> None:
        punch_hole(self._fd, offset, length)

    def read_header(self, offset: int, length: int) -> bytes:
        return os.pread(self._fd, length, offset)

    def write_header(self, offset: int, data: bytes) -> None:
        written = os.pwrite(self._fd, data, offset)
        if written != len(data):
            raise OSError(errno.EIO, f"short write: {written} of {len(data)} bytes")
        os.fsync(self._fd)

    def lock(self, *, take_over: bool = False) -> None:
        lock_image(self._fd, self._path)

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    # --- what ``fuseblk image`` needs beyond the engine's I/O ------------------------------------

    def in_use(self) -> bool:
        """Whether some process has the image attached (holds its owner lock)."""
        try:
            fcntl.flock(self._fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        return False

    def truncate(self, size: int) -> None:
        """Set the file's size (extending it leaves a hole)."""
        os.ftruncate(self._fd, size)

    def __repr__(self) -> str:
        return f"FileStorage({self._path!r})"


def create_image_file(
    path: str | os.PathLike[str],
    hardware: HardwareProfile,
    data_size: int,
    label: str = "",
    overwrite: bool = False,
) -> ImageHeader:
    """Make a new sparse image file (see :meth:`FileStorage.create`) and close it again."""
    header = ImageHeader(hardware, data_size, label=label, sequence=1, clean_shutdown=True)
    FileStorage.create(path, header, overwrite=overwrite).close()
    return header


def _open_error(path: str, err: int, why: str | None) -> FuseblkError:
    return FuseblkError(err, f"cannot open image {path}: {why}")


def _fsync_parent(path: str | os.PathLike[str]) -> None:
    """Make the new file's directory entry durable too (a crash must not lose the whole image)."""
    parent = os.path.dirname(os.path.abspath(path))
    dfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
