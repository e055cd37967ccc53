"""Calling code that may block on a FIFO, without a test that hangs when it does."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


def returns_within(seconds: float, func: Callable[..., Any], *args: Any, unblock: Path) -> Any:
    """``func(*args)`` in a thread, its result or its exception; if it is still blocked after
    ``seconds``, open the FIFO ``unblock`` for writing (releasing a reader stuck in open) and
    fail the test."""
    result: dict[str, Any] = {}

    def call() -> None:
        try:
            result["value"] = func(*args)
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        fd = os.open(unblock, os.O_WRONLY)
        os.close(fd)
        thread.join()
        pytest.fail(f"{func!r} blocked on {unblock}")
    if "error" in result:
        raise result["error"]
    return result.get("value")
