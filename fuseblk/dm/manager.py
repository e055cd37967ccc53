"""The device manager: backends, mapped devices and their names (``dm-ioctl`` plus ``dmsetup``).

It owns every device: backends (emulated hardware, added by name or opened on first reference
by path), and mapped devices with their tables; and the block layer (with the software
fallback) that every bio between them goes through. Every verb of ``dmsetup`` the daemon exposes
is a method here; the FUSE layer follows changes through ``listeners``, each called with a
:mod:`~fuseblk.dm.events` event.

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

import trio

from fuseblk import SECTOR_SIZE
from fuseblk.bio import Bio
from fuseblk.blkcrypto import wrapped_keys
from fuseblk.blkcrypto.block_layer import BlockLayer
from fuseblk.blkcrypto.fallback import DEFAULT_NUM_SLOTS, CryptoFallback
from fuseblk.device import Backend, BlockDevice
from fuseblk.dm.events import (
    CryptoProfileChanged,
    DeviceAdded,
    DeviceRemoved,
    DeviceRenamed,
    DeviceResized,
    DmEvent,
    Listener,
)
from fuseblk.dm.fallback_policy import falls_back_per_target
from fuseblk.dm.hw_change import build_hardware, change_hardware, propagate_from
from fuseblk.dm.mapped_device import MappedDevice
from fuseblk.dm.table import Table
from fuseblk.dm.targets.base import TargetArgError
from fuseblk.errors import FuseblkError, einval
from fuseblk.hw.engine import InlineEncryptionEngine
from fuseblk.hw.factory import OwnMount, find_or_open_backend
from fuseblk.hw.faults import FaultKind
from fuseblk.hw.profiles import HardwareKind
from fuseblk.key import BlkCryptoKey, KeyType
from fuseblk.modes import CryptoMode

DM_NAME_LEN = 128  # include/uapi/linux/dm-ioctl.h: names are at most 127 bytes


class DeviceManager:
    """Every backend and mapped device of one daemon, by name.

    Table-changing verbs (create, load, clear, resume, suspend, remove, rename) take turns, like
    the kernel's per-device locks: create checks the name and registers the device on either
    side of an await, and a concurrent release of unused images would not see a table not yet
    installed, so two callers must not interleave them.
    """

    def __init__(
        self,
        clock: Callable[[], float] | None = None,
        *,
        fallback_slots: int = DEFAULT_NUM_SLOTS,
        fallback_enabled: bool = True,
    ) -> None:
        """``clock`` (seconds, monotonic) is what time-driven targets such as flakey see;
        ``fallback_slots`` and ``fallback_enabled`` configure the software fallback (the
        kernel's module parameters), EINVAL for a slot count out of range."""
        self.clock = clock or time.monotonic
        self.block_layer = BlockLayer(CryptoFallback(fallback_slots, fallback_enabled))
        self._backends: dict[str, Backend] = {}
        self._devices: dict[str, MappedDevice] = {}
        self._path_images: set[str] = set()  # backends a table opened by path (ours to detach)
        self._table_lock = trio.Lock()  # table-changing verbs take turns (see the class)
        self.own_mount: OwnMount | None = None  # the daemon's mount: references into it refused
        self.listeners: list[Listener] = []

    # -- backends ------------------------------------------------------------------------------

    def add_backend(
        self, name: str, path: str | os.PathLike[str], *, take_over: bool = False
    ) -> Backend:
        """Attach the image at ``path`` as backend ``name``; ``take_over`` takes over a claim
        another host's daemon left (``--force-attach``)."""
        self._check_new_name(name)
        backend, new = find_or_open_backend(
            path, self._attached(), name=name, own_mount=self.own_mount, take_over=take_over
        )
        if not new:
            raise FuseblkError(errno.EBUSY, f"image {path} is already attached as {backend.name}")
        self._backends[name] = backend
        return backend

    def add_device(self, dev: Backend) -> None:
        """Register an already-open backend (attached hardware, or any device with the
        :class:`~fuseblk.device.Backend` protocol) under ``dev.name``."""
        self._check_new_name(dev.name)
        self._backends[dev.name] = dev

    def backends(self) -> dict[str, Backend]:
        return dict(self._backends)

    def _attached(self) -> list[Backend]:
        return list(self._backends.values())

    # -- resolving table references --------------------------------------------------------------

    def resolve(
        self,
        ref: str,
        loading: str,
        opened: list[str] | None = None,
        *,
        take_over: bool = False,
    ) -> BlockDevice:
        """The device a table line names; refuses references that would make a cycle.

        An image path not attached yet is opened (a claim another host's daemon left taken over
        if ``take_over``); its name is appended to ``opened``."""
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
            backend, new = find_or_open_backend(
                ref, self._attached(), own_mount=self.own_mount, take_over=take_over
            )
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
            stack.extend(d for d in cur.held_devices() if isinstance(d, MappedDevice))
        return False

    async def _parse(self, md: MappedDevice, text: str, take_over: bool = False) -> Table:
        """Construct a table for ``md``; images it opened are detached again if it is refused."""
        env = _TableEnv(self, md, take_over)
        try:
            return await Table.parse(text, env)
        except BaseException:
            await self._release_unused_images(env.opened)
            raise
        finally:
            env.take_over = False

    # -- mapped devices ----------------------------------------------------------------------------

    async def create(
        self, name: str, table: str, fallback: str = "device", *, take_over: bool = False
    ) -> MappedDevice:
        """``dmsetup create``: a new device with ``table`` live (an empty table: no table, size 0).

        ``take_over``: images the table attaches take over a claim another host's daemon left
        (``--force-attach``)."""
        async with self._table_lock:
            self._check_new_name(name)
            md = MappedDevice(name, self.block_layer, falls_back_per_target(fallback))
            parsed = await self._parse(md, table, take_over)
            if parsed.is_empty:
                await parsed.destroy()
            else:
                await md.install(parsed)
            self._devices[name] = md
            self._notify(DeviceAdded(name))
            return md

    async def load(self, name: str, table: str, *, take_over: bool = False) -> None:
        """``dmsetup load``: construct ``table`` into the inactive slot; the live one is untouched.
        ``take_over`` as for :meth:`create`."""
        async with self._table_lock:
            md = self.get(name)
            parsed = await self._parse(md, table, take_over)
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
        async with self._table_lock:
            await self.get(name).clear_inactive()
            await self._release_unused_images()

    async def resume(self, name: str) -> None:
        async with self._table_lock:
            md = self.get(name)
            old_size = md.size
            old_caps = md.crypto_profile.caps if md.crypto_profile is not None else None
            await md.resume()
            new_caps = md.crypto_profile.caps if md.crypto_profile is not None else None
            above = (
                {}
                if new_caps == old_caps
                else await propagate_from(md, list(self._devices.values()))
            )
            await self._release_unused_images()
            if md.size != old_size:
                self._notify(DeviceResized(name, md.size))
            for device in above:
                self._notify(CryptoProfileChanged(device))

    async def suspend(self, name: str) -> None:
        async with self._table_lock:
            await self.get(name).suspend()

    async def remove(self, name: str) -> None:
        """``dmsetup remove``: EBUSY while open or while another table stacks on it."""
        async with self._table_lock:
            md = self.get(name)
            if md.open_count > 0:
                raise FuseblkError(errno.EBUSY, f"{name}: device is open ({md.open_count})")
            holders = [
                other.name
                for other in self._devices.values()
                if other is not md and other.holds(md)
            ]
            if holders:
                raise FuseblkError(errno.EBUSY, f"{name}: in use by {', '.join(sorted(holders))}")
            del self._devices[name]
            await md.shutdown()
            self._notify(DeviceRemoved(name))
            await self._release_unused_images()

    async def rename(self, old: str, new: str) -> None:
        async with self._table_lock:
            md = self.get(old)
            self._check_new_name(new)
            del self._devices[old]
            md.rename(new)
            self._devices[new] = md
            self._notify(DeviceRenamed(old, new))

    def get(self, name: str) -> MappedDevice:
        try:
            return self._devices[name]
        except KeyError:
            raise FuseblkError(errno.ENXIO, f"no mapped device named {name!r}") from None

    def names(self) -> list[str]:
        return sorted(self._devices)

    def block_names(self) -> list[str]:
        """Every device with a ``/sys/block`` entry: mapped devices and backends."""
        return sorted({*self._devices, *self._backends})

    def block_device(self, name: str) -> BlockDevice:
        """A mapped device or a backend by name; ENXIO for neither."""
        dev: BlockDevice | None = self._devices.get(name)
        if dev is None:
            dev = self._backends.get(name)
        if dev is None:
            raise FuseblkError(errno.ENXIO, f"no device or backend named {name!r}")
        return dev

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
        """``dmsetup status``: ``start length target status`` per live target.

        A target whose devices reach a backend behind a server (an NBD export; through stacked
        devices too) is followed by one indented ``connection BACKEND: STATE`` line per such
        backend: a leg that fails with EIO shows why. The target's own line stays dmsetup's.
        """
        md = self.get(name)
        if md.live is None:
            return ""
        out = []
        for target in md.live.targets:
            st = target.status()
            start, length = target.begin // SECTOR_SIZE, target.length // SECTOR_SIZE
            out.append(f"{start} {length} {target.name}{' ' + st if st else ''}\n")
            for label, state in self._connections(target.held_devices()):
                out.append(f"  connection {label}: {state}\n")
        return "".join(out)

    def _connections(self, devices: list[BlockDevice]) -> list[tuple[str, str]]:
        """Each backend behind a server that ``devices`` reach (directly or through the live
        tables of stacked devices), as its name (and server, if named otherwise) and state."""
        backends = {id(dev): dev for dev in self._backends.values()}
        found: list[tuple[str, str]] = []
        seen: set[int] = set()
        stack = list(reversed(devices))
        while stack:
            dev = stack.pop()
            if id(dev) in seen:
                continue
            seen.add(id(dev))
            backend = backends.get(id(dev))
            if backend is not None:
                connection = backend.info().get("connection")
                if connection is not None:
                    server = str(connection.get("server", backend.name))
                    label = backend.name if server == backend.name else f"{backend.name} ({server})"
                    found.append((label, str(connection.get("state"))))
            elif isinstance(dev, MappedDevice) and dev.live is not None:
                below = [d for t in dev.live.targets for d in t.held_devices()]
                stack.extend(reversed(below))
        return found

    def table(self, name: str, show_keys: bool = False) -> str:
        """``dmsetup table``: the live table (keys hidden unless asked)."""
        md = self.get(name)
        return md.live.format(show_keys) if md.live is not None else ""

    async def message(self, name: str, sector: int, args: list[str]) -> str:
        """``dmsetup message``: to the live target covering ``sector``.

        A message may open an image (raid1 ``add``) or drop the last reference to one (raid1
        ``remove``): afterwards, refused or not, images no table names are detached.
        """
        md = self.get(name)
        if md.live is None:
            raise FuseblkError(errno.EINVAL, f"{name}: device has no live table")
        if not args:
            raise FuseblkError(errno.EINVAL, f"{name}: empty message")
        target = md.live.target_at_sector(sector)
        try:
            return await target.message(args)
        finally:
            with trio.CancelScope(shield=True):  # a cancelled message still drops what it opened
                async with self._table_lock:
                    await self._release_unused_images()

    async def evict_key(self, name: str, key: BlkCryptoKey) -> None:
        """Evict ``key`` from every device below ``name`` and from the fallback."""
        await self.get(name).evict_key(key)

    async def evict_raw_key(
        self,
        name: str,
        mode: CryptoMode,
        raw: bytes,
        data_unit_size: int,
        dun_bytes: int | None = None,
        key_type: KeyType = KeyType.RAW,
    ) -> None:
        """``dm evict-key``: a key is its bytes (a hardware-wrapped key's: its ephemeral blob),
        its type and its configuration. Without a DUN width it is evicted under every width the
        mode allows (default-key picks the width from the target's size, so the user may not
        know it)."""
        widths = range(1, mode.iv_size + 1) if dun_bytes is None else [dun_bytes]
        for width in widths:
            key = BlkCryptoKey.create(mode, raw, data_unit_size, width, key_type)
            await self.evict_key(name, key)

    async def discard(self, name: str, offset: int, length: int) -> None:
        """``BLKDISCARD``: ``length`` bytes at ``offset``, whole sectors inside the device."""
        dev = self.get(name)
        if offset < 0 or length <= 0:
            raise einval("discard: offset must be >= 0 and length > 0")
        if offset % SECTOR_SIZE or length % SECTOR_SIZE:
            raise einval(f"discard: offset and length must be multiples of {SECTOR_SIZE}")
        if offset + length > dev.size:
            raise einval(
                f"discard: range ends at {offset + length}, beyond the device's {dev.size} bytes"
            )
        await dev.submit(Bio.discard(offset, length))

    def stats(self, name: str | None = None) -> dict[str, Any]:
        """Counters per mapped device and per backend (with its keyslot profile's counters)."""
        devices = {
            n: md.counters.snapshot() for n, md in self._devices.items() if name in (None, n)
        }
        backends = {}
        for n, dev in self._backends.items():
            if name not in (None, n):
                continue
            entry: dict[str, Any] = dict(dev.counters.snapshot())
            if dev.crypto_profile is not None:
                entry["profile"] = dev.crypto_profile.counters.snapshot()
            connection = dev.info().get("connection")  # storage behind a server
            if connection is not None:
                entry["connection"] = connection
            backends[n] = entry
        if name is not None and not devices and not backends:
            raise FuseblkError(errno.ENXIO, f"no device named {name!r}")
        result: dict[str, Any] = {"devices": devices, "backends": backends}
        if name is None:
            fb = self.block_layer.fallback
            result["fallback"] = {
                **fb.counters.snapshot(),
                "profile": fb.profile.counters.snapshot(),
            }
        return result

    # -- lifecycle --------------------------------------------------------------------------------------

    # -- injected hardware faults ---------------------------------------------------------------

    def _engine(self, name: str) -> InlineEncryptionEngine:
        """Backend ``name`` as inline-encryption hardware that faults can be injected into."""
        dev = self._backends.get(name)
        if dev is None:
            raise FuseblkError(errno.ENXIO, f"no backend named {name!r}")
        if not isinstance(dev, InlineEncryptionEngine) or dev.hardware.kind is HardwareKind.NONE:
            raise FuseblkError(errno.EOPNOTSUPP, f"{name}: has no inline-encryption hardware")
        return dev

    async def hw_fault(
        self,
        name: str,
        fault: str,
        count: int | None = None,
        probability: float | None = None,
        seed: int | None = None,
        ms: int | None = None,
    ) -> dict[str, Any]:
        """``fuseblk hw fault``: arm a fault (:mod:`fuseblk.hw.faults`), reset the controller, or
        clear every fault. Returns the backend's :meth:`hw_status`."""
        engine = self._engine(name)
        if fault == "reset":
            await engine.reset()
        elif fault == "clear":
            engine.faults.clear()
        elif fault == "slow-program":
            self._need_keyslots(engine, fault)
            if ms is None:
                raise einval("slow-program: needs a delay in milliseconds")
            engine.faults.slow_program(ms)
        else:
            try:
                kind = FaultKind(fault)
            except ValueError:
                choices = ", ".join(
                    [*(k.value for k in FaultKind), "slow-program", "reset", "clear"]
                )
                raise einval(f"unknown fault {fault!r} (one of {choices})") from None
            if kind is FaultKind.PROGRAM_FAIL:
                self._need_keyslots(engine, fault)
            engine.faults.fail(kind, count=count, probability=probability, seed=seed)
        return self.hw_status(name)

    @staticmethod
    def _need_keyslots(engine: InlineEncryptionEngine, fault: str) -> None:
        if engine.hardware.kind is not HardwareKind.KEYSLOTS:
            raise FuseblkError(
                errno.EOPNOTSUPP, f"{engine.name}: {fault} needs hardware with keyslots"
            )

    def hw_status(self, name: str) -> dict[str, Any]:
        """``fuseblk hw status``: the hardware, its armed faults, keyslots (key ids, never keys)
        and the counters of faults that fired."""
        engine = self._engine(name)
        profile = engine.crypto_profile
        slots = profile.slot_table() if profile is not None else []
        counters = engine.counters.snapshot()
        return {
            "name": name,
            "hardware": engine.hardware.describe(),
            "faults": engine.faults.to_json(),
            "keyslots": [{"index": s.index, "key_id": s.key_id, "refs": s.refs} for s in slots],
            "counters": {
                k: counters.get(k, 0)
                for k in (
                    "fault_program_errors",
                    "fault_evict_errors",
                    "fault_slow_programs",
                    "resets",
                    "hw_changes",
                )
            },
        }

    # -- live hardware changes -----------------------------------------------------------------

    async def hw_set(
        self,
        name: str,
        *,
        modes: list[str] | None = None,
        keyslots: int | None = None,
        max_dun_bytes: int | None = None,
        key_types: list[str] | None = None,
        drain: bool = True,
    ) -> dict[str, Any]:
        """``fuseblk hw set``: change what backend ``name``'s hardware offers, live, and
        propagate it up every stack above (:mod:`fuseblk.dm.hw_change`)."""
        engine = self._engine(name)
        new = build_hardware(
            engine.hardware,
            modes=modes,
            keyslots=keyslots,
            max_dun_bytes=max_dun_bytes,
            key_types=key_types,
        )
        async with self._table_lock:
            change = await change_hardware(
                engine,
                new,
                list(self._devices.values()),
                fallback_enabled=self.block_layer.fallback.enabled,
                drain=drain,
            )
        if change.change != "none":
            self._notify(CryptoProfileChanged(name))
        for device in change.profiles:
            self._notify(CryptoProfileChanged(device))
        return change.to_json()

    # -- hardware-wrapped keys (BLKCRYPTOIMPORTKEY and its siblings) ----------------------------

    def wrapped_key_op(
        self,
        name: str,
        op: wrapped_keys.WrappedKeyOp,
        data: bytes = b"",
        buffer_size: int = wrapped_keys.DEFAULT_BUFFER_SIZE,
    ) -> bytes:
        """One of the four wrapped-key operations on backend or mapped device ``name``, with
        the kernel's checks in its order (:mod:`fuseblk.blkcrypto.wrapped_keys`); the result
        must fit ``buffer_size`` bytes (EOVERFLOW)."""
        dev: BlockDevice
        if name in self._devices:
            dev = self._devices[name]
        elif name in self._backends:
            dev = self._backends[name]
        else:
            raise FuseblkError(errno.ENXIO, f"no device named {name!r}")
        if dev.crypto_profile is None:  # blk_crypto_ioctl, before looking at the arguments
            wrapped_keys.check_profile(None, name, op)
        wrapped_keys.check_input(op, data)
        result = self._wrapped_key_call(dev, op, data)
        return wrapped_keys.check_output(op, result, buffer_size)

    def _wrapped_key_call(
        self, dev: BlockDevice, op: wrapped_keys.WrappedKeyOp, data: bytes
    ) -> bytes:
        """The operation on ``dev``'s hardware. A mapped device passes it to its devices in
        table order and returns the first success, or the last device's error; with none below,
        EOPNOTSUPP (drivers/md/dm-table.c, ``dm_exec_wrappedkey_op``: its profile lists
        ``hw_wrapped`` only when every device below does, so they all hold the same keys)."""
        wrapped_keys.check_profile(dev.crypto_profile, dev.name, op)
        if isinstance(dev, InlineEncryptionEngine):
            return wrapped_keys.call(dev, op, data)
        if not isinstance(dev, MappedDevice):
            raise FuseblkError(errno.EOPNOTSUPP, f"{dev.name}: {op.kernel_name}: no key manager")
        below = dev.live.devices() if dev.live is not None else []
        if not below:
            raise FuseblkError(
                errno.EOPNOTSUPP,
                f"{dev.name}: {op.kernel_name}: the table has no underlying device to pass it to",
            )
        error: FuseblkError | None = None
        for child in below:
            try:
                return self._wrapped_key_call(child, op, data)
            except FuseblkError as err:
                error = err
        assert error is not None
        raise error

    async def flush_all(self) -> None:
        """Flush every backend (data durable, keyslot tables recorded)."""
        for dev in self._backends.values():
            await dev.flush()

    def open_devices(self) -> dict[str, int]:
        """Devices with open handles (a process, a loop device) and how many: what blocks umount."""
        return {name: md.open_count for name, md in self._devices.items() if md.open_count > 0}

    async def lift_suspensions(self) -> list[str]:
        """Resume every suspended device with its live table (daemon shutdown); their names."""
        return [name for name, md in list(self._devices.items()) if await md.lift_suspension()]

    async def close(self) -> None:
        """Remove every mapped device (upper ones first), then detach every backend."""
        while self._devices:
            held = {id(d) for md in self._devices.values() for d in md.held_devices()}
            top = [md for md in self._devices.values() if id(md) not in held] or list(
                self._devices.values()
            )
            for md in top:
                del self._devices[md.name]
                await md.shutdown()
                self._notify(DeviceRemoved(md.name))
        for name in list(self._backends):
            await self._detach(name)

    async def _release_unused_images(self, paths: list[str] | None = None) -> None:
        """``dm_put_device``: detach images opened by path once no table names them (of
        ``paths`` if given, else of every one); an image another device names stays.

        Otherwise an image stays attached (and locked) until unmount after its last device is
        removed or reloaded away: no other daemon, ``image check --repair`` or ``umount`` of its
        filesystem could have it. Detaching resets the emulated hardware, so no key is left in it
        and the devices that once reached it can forget it.
        """
        for path in sorted(self._path_images if paths is None else self._path_images & set(paths)):
            dev = self._backends[path]
            if not any(md.holds(dev) for md in self._devices.values()):
                await self._detach(path)

    async def _detach(self, name: str) -> None:
        """Close backend ``name``; the devices that once reached it no longer evict keys there."""
        dev = self._backends.pop(name)
        self._path_images.discard(name)
        for md in self._devices.values():
            md.forget_device(dev)
        await dev.close()

    # -- helpers ------------------------------------------------------------------------------------------

    def _check_new_name(self, name: str) -> None:
        """A name is a file name in the mount: UTF-8 text, one path component, dm's length."""
        if not name or "/" in name or name in (".", "..") or "\0" in name:
            raise FuseblkError(errno.EINVAL, f"invalid device name {name!r}")
        try:
            encoded = name.encode("utf-8")
        except UnicodeEncodeError:
            # a lone surrogate (JSON can carry "\ud800"): no file name, no dm name spells it
            raise FuseblkError(
                errno.EINVAL, f"invalid device name {name!r}: not valid UTF-8 text"
            ) from None
        if len(encoded) >= DM_NAME_LEN:
            # dm-ioctl's limit; a longer name would also be listed in the mount but could
            # never be opened there (NAME_MAX is 255)
            raise FuseblkError(
                errno.EINVAL, f"invalid device name: longer than {DM_NAME_LEN - 1} bytes"
            )
        if name in self._devices or name in self._backends:
            raise FuseblkError(errno.EEXIST, f"a device named {name!r} already exists")

    def _notify(self, event: DmEvent) -> None:
        for listener in list(self.listeners):
            listener(event)


class _TableEnv:
    """What a target may ask of the table it belongs to: while it is parsed, and later (a raid1
    hot-add resolves its leg through it, under the device's name at that time)."""

    def __init__(self, manager: DeviceManager, md: MappedDevice, take_over: bool = False) -> None:
        self._manager = manager
        self._md = md
        self.take_over = take_over  # while the table is parsed: a later raid1 hot-add never
        self.block_layer = manager.block_layer
        self.clock = manager.clock
        self.opened: list[str] = []  # images attached for this table, detached if it fails

    @property
    def device_name(self) -> str:
        return self._md.name

    def get_device(self, ref: str) -> BlockDevice:
        return self._manager.resolve(ref, self.device_name, self.opened, take_over=self.take_over)
