"""What the device manager tells its listeners (the FUSE layer) about its mapped devices.

The kernel announces these as uevents; a listener is called with one event after the change
happened, and must not raise (the change stands either way).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class DeviceAdded:
    name: str


@dataclass(frozen=True)
class DeviceRemoved:
    name: str


@dataclass(frozen=True)
class DeviceRenamed:
    old: str
    new: str


@dataclass(frozen=True)
class DeviceResized:
    """A resume swapped in a table of another size."""

    name: str
    size: int  # bytes


DmEvent = DeviceAdded | DeviceRemoved | DeviceRenamed | DeviceResized
Listener = Callable[[DmEvent], None]
