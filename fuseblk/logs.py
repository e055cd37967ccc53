"""Logging for the daemon: to stderr in the foreground, to a file when daemonized.

Only ``fuseblk.*`` and ``pyfuse3`` loggers are configured. Nothing logged anywhere in fuseblk
carries key bytes (keys are named by their identifier), so no filtering happens here; pyfuse3's
own debug output is kept at WARNING unless DEBUG is asked for, since it logs every request.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from fuseblk.errors import einval

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
        path = Path(log_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, encoding="utf-8")
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
