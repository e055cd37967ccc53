"""State files are made all or nothing: written to a temporary file, synced, then linked in place.

A file made once and read at every later start (the default setup's ``secure.key``) must never
exist half-written: a full disk or a crash while writing it would leave a file that every later
start refuses ("needs a 64-byte key, got 0 bytes"). So the bytes go to a temporary file in the
same directory and are synced first; only then does the file get its name, with link(2), which,
unlike rename(2), fails when the name exists: a state file is never replaced. The directory is
synced last, so the name survives a crash too.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path


def create_state_file(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Make ``path`` holding ``data`` with ``mode``, or raise OSError leaving nothing behind.

    FileExistsError when ``path`` exists; it is left as it was.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
