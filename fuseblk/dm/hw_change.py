"""Live hardware changes (``fuseblk hw set``) and how they reach every device stacked above.

The kernel fixes a device's crypto profile when it registers (hardware) or loads a table
(device-mapper): an upper device keeps the capabilities it computed at its own load, a reload may
only keep or grow them, and nothing propagates. fuseblk goes further on purpose, so that stacks
can be tested against hardware that changes under them:

* **Growth** (the new capabilities are a superset and no keyslot goes away): the hardware takes
  the new profile, then every mapped device above computes its profile again by intersection,
  bottom-up, so an upper device never advertises what the devices below it do not yet take.
  No I/O is held: a bio already decided keeps a context the devices below still take.
* **Shrink** (anything lost: a mode, a data unit size, DUN width, a key type, keyslots): every
  device above is suspended top-down as ``dm suspend`` does (in-flight bios complete, new ones
  wait at the gate), the hardware evicts the keys it can no longer take, profiles are computed
  again bottom-up, and the devices resume bottom-up. Devices the user had suspended stay
  suspended. The block layer decides inline or fallback again at every level, so a bio that
  waited is served by the software fallback wherever a device lost its context, with the same
  ciphertext; a wrapped key, which the fallback cannot take, fails with EOPNOTSUPP.
* A shrink that would break a live table's own rule (:meth:`Target.crypto_requirement`, e.g.
  raid1's promise to the layers above) or leave a key of a target without any way to be served
  (the fallback disabled, :meth:`Target.attached_keys`) is refused before anything is suspended
  or written: the plan is computed on the capabilities the devices *would* have.
* ``drain=False`` is the kernel's rule: a shrink under a live (table-loaded) device is EBUSY.

A device with I/O parked at a suspended device below it cannot drain (those bios complete only
once the user resumes that device): it is held instead, its gate closed but its in-flight bios
left where they wait, since they have not reached the hardware and will be decided again there.

A reload of a lower mapped device that changes its profile propagates the same way
(:func:`propagate_from`); a reload only grows (the kernel's rule at that device), so nothing is
held.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import Any

from fuseblk.capabilities import CryptoCapabilities, has_capabilities
from fuseblk.device import BlockDevice
from fuseblk.dm.mapped_device import MappedDevice
from fuseblk.dm.table import construct_crypto_caps, device_caps
from fuseblk.errors import FuseblkError
from fuseblk.hw.engine import InlineEncryptionEngine
from fuseblk.hw.profiles import HardwareProfile, build_profile, parse_key_types

Caps = CryptoCapabilities | None


@dataclass
class HardwareChange:
    """What ``hw set`` did: the kind of change and what it touched, for the reply."""

    backend: str
    hardware: HardwareProfile
    change: str  # "growth", "shrink" or "none"
    suspended: list[str] = field(default_factory=list)  # drained for the shrink, top-down
    evicted: int = 0  # keys the hardware dropped
    profiles: dict[str, Caps] = field(default_factory=dict)  # devices whose profile changed

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.backend,
            "hardware": self.hardware.describe(),
            "change": self.change,
            "suspended": self.suspended,
            "evicted": self.evicted,
            "profiles": {
                n: caps.to_json() if caps is not None else None for n, caps in self.profiles.items()
            },
        }


def build_hardware(
    base: HardwareProfile,
    *,
    modes: list[str] | None = None,
    keyslots: int | None = None,
    max_dun_bytes: int | None = None,
    key_types: list[str] | None = None,
) -> HardwareProfile:
    """``base`` with the parts ``hw set`` names replaced, validated as a profile file is (the
    kind stays: a controller does not grow keyslots or an engine at run time); EINVAL."""
    new = build_profile(base, keyslots=keyslots, modes=modes, max_dun_bytes=max_dun_bytes)
    if key_types is None:
        return new
    caps = CryptoCapabilities(new.caps.modes, new.caps.max_dun_bytes, parse_key_types(key_types))
    return HardwareProfile(
        new.kind, new.num_slots, caps, name=new.name, description=base.description
    )


def is_growth(old: HardwareProfile, new: HardwareProfile) -> bool:
    """Nothing is lost: every capability kept, no keyslot removed."""
    return has_capabilities(new.caps, old.caps) and new.num_slots >= old.num_slots


def stack_above(dev: BlockDevice, devices: list[MappedDevice]) -> list[MappedDevice]:
    """The mapped devices whose tables (live or inactive) reach ``dev``, bottom-up: a device
    comes after every device it stacks on."""
    depth: dict[int, int] = {}

    def reach(md: MappedDevice) -> int:
        """1 + the longest path from ``md`` down to ``dev``; 0 if it does not reach it."""
        if id(md) in depth:
            return depth[id(md)]
        depth[id(md)] = 0  # stacks are acyclic; this only guards the recursion
        best = 0
        for below in md.held_devices():
            if below is dev:
                best = max(best, 1)
            elif isinstance(below, MappedDevice):
                d = reach(below)
                if d:
                    best = max(best, d + 1)
        depth[id(md)] = best
        return best

    found = [(reach(md), md.name, md) for md in devices]
    return [md for d, _, md in sorted(found, key=lambda t: (t[0], t[1])) if d]


def plan_caps(dev: BlockDevice, new: Caps, above: list[MappedDevice]) -> dict[int, Caps]:
    """The capabilities every device of the stack would have if ``dev`` offered ``new``: by id,
    ``dev`` and each of ``above`` (bottom-up), computed without changing anything."""
    planned: dict[int, Caps] = {id(dev): new}

    def caps_of(d: BlockDevice) -> Caps:
        return planned[id(d)] if id(d) in planned else device_caps(d)

    for md in above:
        planned[id(md)] = (
            construct_crypto_caps(md.live.targets, caps_of) if md.live is not None else None
        )
    return planned


def check_plan(
    dev: BlockDevice, planned: dict[int, Caps], above: list[MappedDevice], fallback_enabled: bool
) -> None:
    """EINVAL naming the first live table the planned change would break (see the module)."""
    nothing = CryptoCapabilities.nothing()
    for md in above:
        if md.live is None:
            continue
        for target in md.live.targets:
            requirement = target.crypto_requirement()
            keys = target.attached_keys()
            for below in target.devices():
                if id(below) not in planned:
                    continue
                old = device_caps(below) or nothing
                new = planned[id(below)] or nothing
                if (
                    requirement is not None
                    and has_capabilities(old, requirement)
                    and not has_capabilities(new, requirement)
                ):
                    raise FuseblkError(
                        errno.EINVAL,
                        f"{dev.name}: change refused, nothing changed: {md.name}'s "
                        f"{target.name} needs {below.name} to keep "
                        f"{requirement.describe()} (it would offer {new.describe()})",
                    )
                if fallback_enabled:
                    continue
                for key in keys:
                    if old.supports(key.config) and not new.supports(key.config):
                        raise FuseblkError(
                            errno.EINVAL,
                            f"{dev.name}: change refused, nothing changed: {md.name}'s "
                            f"{target.name} key {key.key_id} would lose {below.name}'s inline "
                            "encryption and the software fallback is disabled",
                        )


def refresh(above: list[MappedDevice]) -> dict[str, Caps]:
    """Compute the profile of each device of ``above`` again, bottom-up; the changed ones."""
    changed: dict[str, Caps] = {}
    for md in above:
        if md.refresh_crypto_profile():
            changed[md.name] = device_caps(md)
    return changed


async def change_hardware(
    engine: InlineEncryptionEngine,
    new: HardwareProfile,
    devices: list[MappedDevice],
    *,
    fallback_enabled: bool,
    drain: bool = True,
) -> HardwareChange:
    """Give ``engine`` the hardware ``new`` and propagate it up ``devices`` (see the module).

    The caller holds the manager's table lock: no table is loaded, resumed or suspended by a
    user meanwhile.
    """
    old = engine.hardware
    if new == old:
        return HardwareChange(engine.name, old, "none")
    above = stack_above(engine, devices)
    growth = is_growth(old, new)
    if not growth and not drain:
        live = [md.name for md in above if md.live is not None]
        if live:
            raise FuseblkError(
                errno.EBUSY,
                f"{engine.name}: shrinking under live devices ({', '.join(live)}) is refused "
                "with --no-drain (the kernel's rule)",
            )
    planned = plan_caps(engine, new.caps, above)
    check_plan(engine, planned, above, fallback_enabled)
    if growth:
        evicted = await engine.set_hardware(new)
        return HardwareChange(engine.name, new, "growth", [], len(evicted), refresh(above))
    suspended = await _suspend_top_down(above)
    try:
        evicted = await engine.set_hardware(new)
        profiles = refresh(above)
    finally:
        for md in reversed(suspended):  # bottom-up
            await md.lift_suspension()
    return HardwareChange(
        engine.name, new, "shrink", [md.name for md in suspended], len(evicted), profiles
    )


async def _suspend_top_down(above: list[MappedDevice]) -> list[MappedDevice]:
    """Suspend every device of ``above`` the user has not suspended, top-down; those suspended.

    A device that reaches a suspended device is held rather than drained (see the module)."""
    done: list[MappedDevice] = []
    try:
        for md in reversed(above):
            if md.suspended:
                continue
            parked = any(other.suspended and other not in done for other in stack_below(md, above))
            if parked:
                await md.hold()
            else:
                await md.suspend()
            done.append(md)
    except BaseException:
        for md in reversed(done):
            await md.lift_suspension()
        raise
    return done


def stack_below(md: MappedDevice, devices: list[MappedDevice]) -> list[MappedDevice]:
    """The devices of ``devices`` that ``md``'s tables reach."""
    return [other for other in devices if other is not md and stack_above(other, [md])]


async def propagate_from(dev: BlockDevice, devices: list[MappedDevice]) -> dict[str, Caps]:
    """``dev`` (a reloaded mapped device) grew its profile: the devices above follow, bottom-up."""
    return refresh(stack_above(dev, devices))
