"""Holders of images: a claim is stale only when this host can tell its process is gone."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import replace

from fuseblk.hw.holder import holder_is_gone, process_start_ns, this_process


def test_this_process_holds() -> None:
    me = this_process()
    assert me.pid == os.getpid() and me.started_ns > 0
    assert not holder_is_gone(me)


def test_a_process_that_exited_is_gone() -> None:
    proc = subprocess.Popen(["sleep", "30"])
    try:
        started = process_start_ns(proc.pid)
        assert started is not None
        holder = replace(this_process(), pid=proc.pid, started_ns=started)
        assert not holder_is_gone(holder)
    finally:
        proc.kill()
    deadline = time.monotonic() + 10
    while not holder_is_gone(holder):  # a zombie until reaped: gone already
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.wait()
    assert holder_is_gone(holder)


def test_a_reused_pid_is_another_process() -> None:
    me = this_process()
    assert holder_is_gone(replace(me, started_ns=me.started_ns - 3_600_000_000_000))


def test_a_holder_on_another_host_is_never_judged_from_here() -> None:
    assert not holder_is_gone(replace(this_process(), host="elsewhere", pid=1 << 30))
