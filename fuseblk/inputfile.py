"""Files a person names as input (config, table, profile and key files): read safely, or refused.

A plain ``open()`` waits forever on a FIFO with no writer, reads without end from ``/dev/zero``,
fails on a directory only at ``read()``, and text that is not UTF-8 raises UnicodeDecodeError
far from the code that knows which file it was. Here the file is opened without blocking, must
be a regular file, is read up to a limit, and text must be UTF-8: each failure is one
FuseblkError ``PATH: reason`` with the OS's errno, or EINVAL for a file of the wrong kind.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import BinaryIO

from fuseblk.errors import FuseblkError

MAX_TEXT_BYTES = 16 << 20  # far beyond any config, table or profile a person writes

_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def read_input_file(path: str | os.PathLike[str], limit: int) -> bytes:
    """Up to ``limit`` bytes of the regular file ``path`` (callers that must refuse a longer
    file ask for one byte more than they accept)."""
    name = os.fspath(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise FuseblkError(exc.errno or errno.EIO, f"{name}: {exc.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise FuseblkError(errno.EISDIR, f"{name}: {os.strerror(errno.EISDIR)}")
        if not stat.S_ISREG(mode):
            kind = next((k for test, k in _KINDS if test(mode)), "not a regular file")
            raise FuseblkError(errno.EINVAL, f"{name}: is {kind}, not a regular file")
        chunks: list[bytes] = []
        remaining = limit
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise FuseblkError(exc.errno or errno.EIO, f"{name}: {exc.strerror}") from None
    finally:
        os.close(fd)


def read_input_text(path: str | os.PathLike[str], limit: int = MAX_TEXT_BYTES) -> str:
    """The UTF-8 text of the regular file ``path``; EFBIG if it is longer than ``limit``."""
    return _text(read_input_file(path, limit + 1), os.fspath(path), limit)


def read_input_stream(stream: BinaryIO, name: str, limit: int = MAX_TEXT_BYTES) -> str:
    """The UTF-8 text of an open stream (standard input), checked as a file's would be."""
    try:
        data = stream.read(limit + 1)
    except OSError as exc:
        raise FuseblkError(exc.errno or errno.EIO, f"{name}: {exc.strerror}") from None
    return _text(data, name, limit)


def _text(data: bytes, name: str, limit: int) -> str:
    if len(data) > limit:
        raise FuseblkError(errno.EFBIG, f"{name}: longer than {limit} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FuseblkError(
            errno.EINVAL,
            f"{name}: not UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start})",
        ) from None
