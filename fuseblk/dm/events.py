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


@dataclass(frozen=True)
class CryptoProfileChanged:
    """A device's inline-encryption capabilities changed without a table of its own being
    loaded: the hardware below it changed (``fuseblk hw set``), or a device below was reloaded.
    ``name`` is a mapped device or, for the hardware itself, a backend."""

    name: str


DmEvent = DeviceAdded | DeviceRemoved | DeviceRenamed | DeviceResized | CryptoProfileChanged
Listener = Callable[[DmEvent], None]
