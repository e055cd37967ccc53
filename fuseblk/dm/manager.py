"""The device manager: backends, mapped devices and their names (``dm-ioctl`` plus ``dmsetup``).

It owns every device: backends (emulated hardware, added by name or opened on first reference
by path), and mapped devices with their tables. Every verb of ``dmsetup`` the daemon exposes is
a method here; the FUSE layer follows changes through ``listeners``, called as
``listener(event, name, *details)`` with event ``"add"``, ``"remove"``, ``"rename"`` (old, new) or
``"resize"`` (name, new size).

Table references resolve, in order, to a mapped device name (stacking), a backend name, or an
image path (opened, attached, and named by its absolute path). A table whose devices would reach
the device being loaded is refused: stacks are acyclic.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from typing import Any

from fuseblk import SECTOR_SIZE
from fuseblk.blkcrypto.fallback import get_fallback
from fuseblk.device import Backend, BlockDevice
from fuseblk.dm.mapped_device import MappedDevice
from fuseblk.dm.table import Table
from fuseblk.dm.targets import TargetArgError
from fuseblk.errors import FuseblkError
from fuseblk.hw.factory import OwnMount, find_or_open_backend
from fuseblk.key import BlkCryptoKey

Listener = Callable[..., None]
DM_NAME_LEN = 128  # include/uapi/linux/dm-ioctl.h: names are at most 127 bytes
FALLBACK_POLICIES = ("device", "target")


class DeviceManager:
    """Every backend and mapped device of one daemon, by name.

    Table-changing verbs (create, load, clear, resume, suspend, remove, rename) must not
    interleave: create checks the name and registers the device on either side of an await, and
    a concurrent release of unused images would not see a table not yet installed. The control
    server serializes them; other callers must too.
    """

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        """``clock`` (seconds, monotonic) is what time-driven targets such as flakey see."""
        self.clock = clock or time.monotonic
        self._backends: dict[str, BlockDevice] = {}
        self._devices: dict[str, MappedDevice] = {}
        self._path_images: set[str] = set()  # backends a table opened by path (ours to detach)
        self.own_mount: OwnMount | None = None  # the daemon's mount: references into it refused
        self.listeners: list[Listener] = []

    # -- backends ------------------------------------------------------------------------------

    def add_backend(self, name: str, path: str | os.PathLike[str]) -> Backend:
        """Attach the image at ``path`` as backend ``name``."""
        self._check_new_name(name)
        backend, new = find_or_open_backend(
            path, self._attached(), name=name, own_mount=self.own_mount
        )
        if not new:
            raise FuseblkError(errno.EBUSY, f"image {path} is already attached as {backend.name}")
        self._backends[name] = backend
        return backend

    def add_device(self, dev: BlockDevice) -> None:
        """Register an already-open device (a Backend, or any BlockDevice) under ``dev.name``."""
        self._check_new_name(dev.name)
        self._backends[dev.name] = dev

    def backends(self) -> dict[str, BlockDevice]:
        return dict(self._backends)

    def _attached(self) -> list[Backend]:
        return [dev for dev in self._backends.values() if isinstance(dev, Backend)]

    # -- resolving table references --------------------------------------------------------------

    def resolve(self, ref: str, loading: str, opened: list[str] | None = None) -> BlockDevice:
        """The device a table line names; refuses references that would make a cycle.

        An image path not attached yet is opened; its name is appended to ``opened``."""
        if ref == loading:
            raise TargetArgError("device", f"a device other than {loading} itself (no cycles)", ref)
        md = self._devices.get(ref)
        if md is not None:
            if self._reaches(md, loading):
                raise TargetArgError(
                    "device", f"a device whose table does not reach {loading} (no cycles)", ref
                )
            return md
        dev = self._backends.get(ref)
        if dev is not None:
            return dev
        try:
            backend, new = find_or_open_backend(ref, self._attached(), own_mount=self.own_mount)
        except FuseblkError as err:
            if os.sep not in ref and err.errno == errno.ENOENT:
                raise TargetArgError(
                    "device", "a mapped device, a backend name or an image path", ref
                ) from None
            # backend errors usually start with the reference already: do not say it twice
            got = err.message if ref in err.message else f"{ref}: {err.message}"
            raise TargetArgError(
                "device", "an image that can be attached", got, err.errno
            ) from None
        if not new:
            return backend
        path = backend.name
        self._backends[path] = backend
        self._path_images.add(path)
        if opened is not None:
            opened.append(path)
        return backend

    def _reaches(self, md: MappedDevice, name: str) -> bool:
        """Whether ``md``'s tables (live or inactive) lead, directly or through stacks, to ``name``."""
        stack = [md]
        seen: set[int] = set()
        while stack:
            cur = stack.pop()
            if cur.name == name:
                return True
            if id(cur) in seen:
                continue
            seen.add(id(cur))
            for table in (cur.live, cur.inactive):
                if table is not None:
                    stack.extend(d for d in table.devices() if isinstance(d, MappedDevice))
        return False

    async def _parse(self, name: str, text: str) -> Table:
        """Construct a table; images it opened are detached again if it is refused."""
        env = _TableEnv(self, name)
        try:
            return await Table.parse(text, env)
        except BaseException:
            for path in env.opened:
                await self._detach(path)
            raise

    # -- mapped devices ----------------------------------------------------------------------------

    async def create(self, name: str, table: str, fallback: str = "device") -> MappedDevice:
        """``dmsetup create``: a new device with ``table`` live (an empty table: no table, size 0)."""
        self._check_new_name(name)
        if fallback not in FALLBACK_POLICIES:
            raise FuseblkError(
                errno.EINVAL,
                f"fallback must be one of {', '.join(FALLBACK_POLICIES)}, got {fallback!r}",
            )
        md = MappedDevice(name, fallback_per_target=fallback == "target")
        parsed = await self._parse(name, table)
        if parsed.is_empty:
            await parsed.destroy()
        else:
            await md.install(parsed)
        self._devices[name] = md
        self._notify("add", name)
        return md

    async def load(self, name: str, table: str) -> None:
        """``dmsetup load``: construct ``table`` into the inactive slot; the live one is untouched."""
        md = self.get(name)
        parsed = await self._parse(name, table)
        try:
            if parsed.is_empty:
                raise FuseblkError(errno.EINVAL, f"{name}: a table needs at least one target")
            replaced = md.set_inactive(parsed)
        except BaseException:
            await parsed.destroy()
            await self._release_unused_images()  # it may have opened images by path
            raise
        if replaced is not None:
            await replaced.destroy()
            await self._release_unused_images()

    async def clear(self, name: str) -> None:
        """``dmsetup clear``: drop the inactive table."""
        await self.get(name).clear_inactive()
        await self._release_unused_images()

    async def resume(self, name: str) -> None:
        md = self.get(name)
        old_size = md.size
        await md.resume()
        await self._release_unused_images()
        if md.size != old_size:
            self._notify("resize", name, md.size)

    async def suspend(self, name: str) -> None:
        await self.get(name).suspend()

    async def remove(self, name: str) -> None:
        """``dmsetup remove``: EBUSY while open or while another table stacks on it."""
        md = self.get(name)
        if md.open_count > 0:
            raise FuseblkError(errno.EBUSY, f"{name}: device is open ({md.open_count})")
        holders = [
            other.name for other in self._devices.values() if other is not md and other.holds(md)
        ]
        if holders:
            raise FuseblkError(errno.EBUSY, f"{name}: in use by {', '.join(sorted(holders))}")
        del self._devices[name]
        await md.shutdown()
        self._notify("remove", name)
        await self._release_unused_images()

    def rename(self, old: str, new: str) -> None:
        md = self.get(old)
        self._check_new_name(new)
        del self._devices[old]
        md.rename(new)
        self._devices[new] = md
        self._notify("rename", old, new)

    def get(self, name: str) -> MappedDevice:
        try:
            return self._devices[name]
        except KeyError:
            raise FuseblkError(errno.ENXIO, f"no mapped device named {name!r}") from None

    def names(self) -> list[str]:
        return sorted(self._devices)

    # -- inspection ----------------------------------------------------------------------------------

    def info(self, name: str) -> dict[str, Any]:
        """``dmsetup info``, as data."""
        md = self.get(name)
        profile = md.crypto_profile
        return {
            "name": md.name,
            "state": "SUSPENDED" if md.suspended else "ACTIVE",
            "tables": [
                label
                for label, t in (("LIVE", md.live), ("INACTIVE", md.inactive))
                if t is not None
            ],
            "open_count": md.open_count,
            "event_nr": md.event_nr,
            "size": md.size,
            "block_size": md.block_size,
            "fallback": "target" if md.fallback_per_target else "device",
            "targets": len(md.live.targets) if md.live is not None else 0,
            "crypto": profile.caps.to_json() if profile is not None else None,
        }

    def status(self, name: str) -> str:
        """``dmsetup status``: ``start length target status`` per live target."""
        md = self.get(name)
        if md.live is None:
            return ""
        out = []
        for target in md.live.targets:
            st = target.status()
            start, length = target.begin // SECTOR_SIZE, target.length // SECTOR_SIZE
            out.append(f"{start} {length} {target.name}{' ' + st if st else ''}\n")
        return "".join(out)

    def table(self, name: str, show_keys: bool = False) -> str:
        """``dmsetup table``: the live table (keys hidden unless asked)."""
        md = self.get(name)
        return md.live.format(show_keys) if md.live is not None else ""

    async def message(self, name: str, sector: int, args: list[str]) -> str:
        """``dmsetup message``: to the live target covering ``sector``."""
        md = self.get(name)
        if md.live is None:
            raise FuseblkError(errno.EINVAL, f"{name}: device has no live table")
        if not args:
            raise FuseblkError(errno.EINVAL, f"{name}: empty message")
        return await md.live.target_at_sector(sector).message(args)

    async def evict_key(self, name: str, key: BlkCryptoKey) -> None:
        await self.get(name).evict_key(key)

    def stats(self, name: str | None = None) -> dict[str, Any]:
        """Counters per mapped device and per backend (with its keyslot profile's counters)."""
        devices = {
            n: md.counters.snapshot() for n, md in self._devices.items() if name in (None, n)
        }
        backends = {}
        for n, dev in self._backends.items():
            if name not in (None, n):
                continue
            counters = getattr(dev, "counters", None)
            entry: dict[str, Any] = dict(counters.snapshot()) if counters is not None else {}
            if dev.crypto_profile is not None:
                entry["profile"] = dev.crypto_profile.counters.snapshot()
            backends[n] = entry
        if name is not None and not devices and not backends:
            raise FuseblkError(errno.ENXIO, f"no device named {name!r}")
        result: dict[str, Any] = {"devices": devices, "backends": backends}
        if name is None:
            fb = get_fallback()
            result["fallback"] = {
                **fb.counters.snapshot(),
                "profile": fb.profile.counters.snapshot(),
            }
        return result

    # -- lifecycle --------------------------------------------------------------------------------------

    async def flush_all(self) -> None:
        """Flush every backend (data durable, keyslot tables recorded)."""
        for dev in self._backends.values():
            flush = getattr(dev, "flush", None)
            if flush is not None:
                await flush()

    def open_devices(self) -> dict[str, int]:
        """Devices with open handles (a process, a loop device) and how many: what blocks umount."""
        return {name: md.open_count for name, md in self._devices.items() if md.open_count > 0}

    async def lift_suspensions(self) -> list[str]:
        """Resume every suspended device with its live table (daemon shutdown); their names."""
        return [name for name, md in list(self._devices.items()) if await md.lift_suspension()]

    async def close(self) -> None:
        """Remove every mapped device (upper ones first), then detach every backend."""
        while self._devices:
            held = {
                id(d)
                for md in self._devices.values()
                for t in (md.live, md.inactive)
                if t
                for d in t.devices()
            }
            top = [md for md in self._devices.values() if id(md) not in held] or list(
                self._devices.values()
            )
            for md in top:
                del self._devices[md.name]
                await md.shutdown()
                self._notify("remove", md.name)
        for name in list(self._backends):
            await self._detach(name)

    async def _release_unused_images(self) -> None:
        """``dm_put_device``: detach images opened by path once no table uses them.

        Otherwise an image stays attached (and locked) until unmount after its last device is
        removed or reloaded away: no other daemon, ``image check --repair`` or ``umount`` of its
        filesystem could have it. Detaching resets the emulated hardware, so no key is left in it
        and the devices that once reached it can forget it.
        """
        for path in sorted(self._path_images):
            dev = self._backends[path]
            if not any(md.holds(dev) for md in self._devices.values()):
                await self._detach(path)

    async def _detach(self, name: str) -> None:
        """Close backend ``name``; the devices that once reached it no longer evict keys there."""
        dev = self._backends.pop(name)
        self._path_images.discard(name)
        for md in self._devices.values():
            md.forget_device(dev)
        close = getattr(dev, "close", None)
        if close is not None:
            await close()

    # -- helpers ------------------------------------------------------------------------------------------

    def _check_new_name(self, name: str) -> None:
        if not name or "/" in name or name in (".", "..") or "\0" in name:
            raise FuseblkError(errno.EINVAL, f"invalid device name {name!r}")
        if len(name.encode("utf-8", "surrogatepass")) >= DM_NAME_LEN:
            # dm-ioctl's limit; a longer name would also be listed in the mount but could
            # never be opened there (NAME_MAX is 255)
            raise FuseblkError(
                errno.EINVAL, f"invalid device name: longer than {DM_NAME_LEN - 1} bytes"
            )
        if name in self._devices or name in self._backends:
            raise FuseblkError(errno.EEXIST, f"a device named {name!r} already exists")

    def _notify(self, event: str, *details: Any) -> None:
        for listener in list(self.listeners):
            listener(event, *details)


class _TableEnv:
    """What a target constructor may ask while a table for ``device_name`` is being parsed."""

    def __init__(self, manager: DeviceManager, device_name: str) -> None:
        self._manager = manager
        self.device_name = device_name
        self.clock = manager.clock
        self.opened: list[str] = []  # images attached for this table, detached if it fails

    def get_device(self, ref: str) -> BlockDevice:
        return self._manager.resolve(ref, self.device_name, self.opened)
