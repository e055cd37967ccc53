"""Logging for the daemon: to stderr in the foreground, to a file when daemonized.

Only ``fuseblk.*`` and ``pyfuse3`` loggers are configured. Nothing logged anywhere in fuseblk
carries key bytes (keys are named by their identifier), so no filtering happens here; pyfuse3's
own debug output is kept at WARNING unless DEBUG is asked for, since it logs every request.
A log file is made mode 0600 (it names devices, images and key identifiers), and one that
cannot be opened is a FuseblkError naming it, reported before the daemon detaches.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import sys
from pathlib import Path
from typing import TextIO

from fuseblk.errors import FuseblkError, einval

LEVELS = ("debug", "info", "warning", "error")
FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"


def parse_level(name: str) -> int:
    if name.lower() not in LEVELS:
        raise einval(f"unknown log level {name!r} (known: {', '.join(LEVELS)})")
    level: int = getattr(logging, name.upper())  # dynamic: a level's name, checked above
    return level


def setup_logging(level: str = "info", log_file: str | Path | None = None) -> None:
    """Send fuseblk's log records to ``log_file`` (appending) or stderr, at ``level``."""
    numeric = parse_level(level)
    handler: logging.Handler
    if log_file is not None:
        handler = _LogFileHandler(open_log_file(Path(log_file)))
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    for name, lvl in (
        ("fuseblk", numeric),
        ("pyfuse3", numeric if numeric <= logging.DEBUG else logging.WARNING),
    ):
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            logger.removeHandler(old)
            old.close()
        logger.addHandler(handler)
        logger.setLevel(lvl)
        logger.propagate = False


class _LogFileHandler(logging.StreamHandler[TextIO]):
    """A StreamHandler that owns its file: closing the handler closes it."""

    def close(self) -> None:
        try:
            self.stream.close()
        finally:
            super().close()


def open_log_file(path: Path) -> TextIO:
    """``path`` opened for appending, created 0600 (its directory 0700) if missing.

    Opened without blocking, so a FIFO without a reader fails (ENXIO) instead of hanging the
    daemon's start; writes block as usual afterwards.
    """
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(
            path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC, 0o600
        )
    except FileExistsError:  # a file where the directory should be
        raise FuseblkError(
            errno.ENOTDIR, f"log file {path}: {path.parent} is not a directory"
        ) from None
    except OSError as exc:
        raise FuseblkError(exc.errno or errno.EIO, f"log file {path}: {exc.strerror}") from None
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    return open(fd, "a", encoding="utf-8", errors="backslashreplace")
