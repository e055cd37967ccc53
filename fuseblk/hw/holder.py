"""Who holds an image: this process as a :class:`~fuseblk.hw.image_format.Holder`, and whether
a recorded holder is gone.

Storage shared between machines (an NBD export) has no kernel lock that spans them, so the
process that attaches it records itself in the header. A pid alone is not a process: pids are
reused, so a holder also records when its process started, and a process with that pid but
another start time is not the holder.
"""

from __future__ import annotations

import os
import socket

from fuseblk.hw.image_format import HOST_SIZE, Holder

NS = 1_000_000_000
START_TOLERANCE_NS = NS  # start times agree to 1/CLK_TCK; a second covers rounding


def this_host() -> str:
    return socket.gethostname()[:HOST_SIZE]


def this_process() -> Holder:
    return Holder(this_host(), os.getpid(), process_start_ns(os.getpid()) or 0)


def process_start_ns(pid: int) -> int | None:
    """When process ``pid`` started (ns since the epoch), None if no such process runs."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/stat") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith("btime "))
    except (OSError, StopIteration, IndexError):
        return None
    if fields[0] in ("Z", "X"):  # exited, not yet reaped: gone all the same
        return None
    ticks = int(fields[19])  # starttime: field 22 of stat, the split starts at field 3
    return btime * NS + ticks * NS // os.sysconf("SC_CLK_TCK")


def holder_is_gone(holder: Holder) -> bool:
    """True only for a holder on this host whose process has ended: a holder on another host
    is never judged from here."""
    if holder.host != this_host():
        return False
    started = process_start_ns(holder.pid)
    return started is None or abs(started - holder.started_ns) > START_TOLERANCE_NS


def holder_is_live_here(holder: Holder) -> bool:
    """True for a holder on this host whose process still runs: never a stale claim, whatever
    the user asks."""
    return holder.host == this_host() and not holder_is_gone(holder)
