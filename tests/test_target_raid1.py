"""raid1: mirrored writes, degraded operation, hot-add with resync under a range lock."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import trio
import trio.testing
from device_helpers import MemDevice, MemKeyslotHardware, MiB, make_key
from dm_helpers import DeviceEnv, make_image

from fuseblk.bio import Bio, BioOp
from fuseblk.blkcrypto.keyslot_manager import CryptoProfile
from fuseblk.capabilities import CryptoCapabilities, dus_mask
from fuseblk.crypt_context import BioCryptContext
from fuseblk.device import BlockDevice
from fuseblk.dm.manager import DeviceManager
from fuseblk.dm.targets import raid1
from fuseblk.dm.targets.base import TargetArgError
from fuseblk.dm.targets.raid1 import Raid1Target
from fuseblk.dm.targets.registry import get_target
from fuseblk.errors import FuseblkError
from fuseblk.hw.factory import create_backend
from fuseblk.hw.profiles import load_profile
from fuseblk.key import KeyType
from fuseblk.modes import CryptoMode
from fuseblk.stats import Counters

DEV_SIZE = 1 << 20
LENGTH = 512 * 1024


class Leg(MemDevice):
    """A RAM leg that can die (every later I/O fails) and can hold its reads at a gate."""

    def __init__(self, name: str, profile: CryptoProfile | None = None) -> None:
        super().__init__(name, DEV_SIZE, profile=profile, noise=True)
        self.dead_errno: int | None = None
        self.die_after: int | None = None  # data bios still served before dying
        self.read_gate: trio.Event | None = None

    async def submit(self, bio: Bio) -> None:
        if self.die_after is not None and bio.op.has_data:
            if self.die_after == 0:
                self.dead_errno = errno.EIO
            self.die_after -= 1
        if self.dead_errno is not None:
            await trio.lowlevel.checkpoint()
            raise FuseblkError(self.dead_errno, f"{self.name}: dead")
        if bio.op is BioOp.READ and self.read_gate is not None:
            await self.read_gate.wait()
        await super().submit(bio)


def mirror(table: str, *legs: BlockDevice) -> Raid1Target:
    target = Raid1Target(
        DeviceEnv({leg.name: leg for leg in legs}, "mirror"), 0, LENGTH, table.split()
    )
    target.counters = Counters()
    return target


def xts_profile() -> CryptoProfile:
    caps = CryptoCapabilities({CryptoMode.AES_256_XTS: dus_mask(512, 4096)}, 8, KeyType.RAW)
    return CryptoProfile(caps, 4, MemKeyslotHardware(4))


def region(leg: MemDevice, offset: int = 0, length: int = LENGTH) -> bytes:
    return bytes(leg.data[offset : offset + length])


async def read(
    target: Raid1Target, offset: int, length: int, ctx: BioCryptContext | None = None
) -> bytes:
    buf = bytearray(length)
    await target.map(Bio.read(offset, buf, ctx))
    return bytes(buf)


def test_raid1_is_registered_and_passes_crypto() -> None:
    assert get_target("raid1") is Raid1Target
    assert Raid1Target.passes_crypto is True


@pytest.mark.parametrize(
    ("table", "field"),
    [
        ("", "#legs"),
        ("0", "#legs"),
        ("two l0 0 l1 0", "#legs"),
        ("2 l0 0 l1", "leg 1 offset"),
        ("2 l0 0", "leg 1 device"),
        ("2 l0 0 nosuch 0", "device"),
        ("2 l0 0 l1 x", "leg 1 offset"),
        ("2 l0 0 l1 1500", "leg 1 offset"),
        ("2 l0 0 l1 0 2 nosync", "#features"),
        ("2 l0 0 l1 0 1 fast", "feature 'fast'"),
    ],
)
def test_every_malformed_table_names_the_field(table: str, field: str) -> None:
    with pytest.raises(TargetArgError) as info:
        mirror(table, Leg("l0"), Leg("l1"))
    assert info.value.field == field


def test_table_and_status_describe_the_legs() -> None:
    target = mirror("2 l0 8 l1 0 1 nosync", Leg("l0"), Leg("l1"))
    assert target.table_args() == "2 l0 8 l1 0 1 nosync"
    assert target.status() == "2 AA 1024/1024 idle 2 optimal"


async def test_writes_reach_every_leg_and_reads_alternate() -> None:
    l0, l1 = Leg("l0"), Leg("l1")
    target = mirror("2 l0 0 l1 16 1 nosync", l0, l1)
    data = os.urandom(8192)
    await target.map(Bio.write(4096, data))
    assert region(l0, 4096, 8192) == data and region(l1, 16 * 512 + 4096, 8192) == data
    for _ in range(4):
        assert await read(target, 4096, 8192) == data
    reads = [len([b for b in leg.bios if b.op is BioOp.READ]) for leg in (l0, l1)]
    assert reads == [2, 2]


async def test_leg_failure_during_concurrent_writes_loses_nothing() -> None:
    l0, l1 = Leg("l0"), Leg("l1")
    target = mirror("2 l0 0 l1 0 1 nosync", l0, l1)
    l1.die_after = 10
    writes = {i * 4096: os.urandom(4096) for i in range(64)}
    async with trio.open_nursery() as nursery:
        for offset, data in writes.items():
            nursery.start_soon(target.map, Bio.write(offset, data))
    assert target.status().split()[1] == "AD"
    assert target.counters is not None and target.counters["leg_failures"] == 1
    assert target.counters["degraded_writes"] >= 1
    for offset, data in writes.items():
        assert await read(target, offset, 4096) == data
    assert target.devices() == [l0]


async def test_read_error_fails_the_leg_and_retries_on_another() -> None:
    l0, l1 = Leg("l0"), Leg("l1")
    target = mirror("2 l0 0 l1 0 1 nosync", l0, l1)
    data = os.urandom(4096)
    await target.map(Bio.write(0, data))
    l0.fail_next = errno.EIO
    assert await read(target, 0, 4096) == data
    assert target.status().split()[1] == "DA"
    assert target.counters is not None and target.counters["leg_failures"] == 1


async def test_non_media_errors_are_the_bios_fault_not_the_legs() -> None:
    l0, l1 = Leg("l0"), Leg("l1")
    target = mirror("2 l0 0 l1 0 1 nosync", l0, l1)
    l0.fail_next = errno.EINVAL
    with pytest.raises(FuseblkError) as info:
        await read(target, 0, 512)
    assert info.value.errno == errno.EINVAL
    assert target.status().split()[1] == "AA"


async def test_all_legs_failed_means_eio() -> None:
    l0, l1 = Leg("l0"), Leg("l1")
    target = mirror("2 l0 0 l1 0 1 nosync", l0, l1)
    l0.dead_errno = l1.dead_errno = errno.EIO
    with pytest.raises(FuseblkError) as info:
        await target.map(Bio.write(0, bytes(512)))
    assert info.value.errno == errno.EIO
    with pytest.raises(FuseblkError) as info:
        await read(target, 0, 512)
    assert info.value.errno == errno.EIO
    assert target.status() == "2 DD 1024/1024 idle 2 degraded"


async def test_fail_and_remove_messages() -> None:
    l0, l1 = Leg("l0"), Leg("l1")
    target = mirror("2 l0 0 l1 0 1 nosync", l0, l1)
    with pytest.raises(FuseblkError) as info:
        await target.message(["remove", "1"])
    assert info.value.errno == errno.EBUSY
    await target.message(["fail", "1"])
    assert target.status().split()[1] == "AD"
    await target.message(["remove", "1"])
    assert target.table_args() == "1 l0 0 1 nosync"
    for bad in (["fail", "1"], ["fail"], ["frobnicate"]):
        with pytest.raises(FuseblkError) as info:
            await target.message(bad)
        assert info.value.errno == errno.EINVAL


async def test_leg_numbers_in_messages_are_ascii_decimal() -> None:
    l0, l1 = Leg("l0"), Leg("l1")
    target = mirror("2 l0 0 l1 0 1 nosync", l0, l1)
    for bad in ("\u0661", "\uff11", "+1", "1" * 5000, "2"):
        with pytest.raises(FuseblkError) as info:
            await target.message(["fail", bad])
        assert info.value.errno == errno.EINVAL
        assert len(info.value.message) < 6000
    assert target.status().split()[1] == "AA"
    await target.message(["fail", "0001"])
    assert target.status().split()[1] == "AD"


async def test_hot_add_stops_at_max_legs() -> None:
    legs = [Leg(f"l{i}") for i in range(raid1.MAX_LEGS + 1)]
    table = f"{raid1.MAX_LEGS} " + " ".join(f"l{i} 0" for i in range(raid1.MAX_LEGS))
    target = mirror(table + " 1 nosync", *legs)
    with pytest.raises(FuseblkError) as info:
        await target.message(["add", legs[-1].name, "0"])
    assert info.value.errno == errno.EINVAL
    assert len(target.legs) == raid1.MAX_LEGS


async def test_initial_resync_copies_the_first_leg_to_the_others() -> None:
    l0, l1 = Leg("l0"), Leg("l1")
    target = mirror("2 l0 0 l1 0", l0, l1)
    assert target.status() == "2 Aa 0/1024 frozen 2 optimal"
    await target.resume()
    await target.wait_resync()
    assert region(l1) == region(l0)
    assert target.status() == "2 AA 1024/1024 idle 2 optimal"
    assert target.counters is not None and target.counters["resync_bytes"] == LENGTH


async def test_resync_message_makes_diverged_legs_identical_again() -> None:
    l0, l1 = Leg("l0"), Leg("l1")
    target = mirror("2 l0 0 l1 0 1 nosync", l0, l1)  # nosync: legs trusted, yet they differ
    await target.resume()
    assert region(l0) != region(l1)
    await target.message(["resync"])
    assert target.status().split()[1] == "Aa"
    await target.wait_resync()
    assert region(l0) == region(l1)
    assert target.status() == "2 AA 1024/1024 idle 2 optimal"


async def test_hot_add_with_concurrent_writes_produces_identical_legs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(raid1, "REGION_SIZE", 16 * 1024)
    l0, l1, l2 = Leg("l0"), Leg("l1"), Leg("l2")
    target = mirror("2 l0 0 l1 0 1 nosync", l0, l1)
    target._env.devices["l2"] = l2  # type: ignore[attr-defined]
    await target.resume()
    await target.map(Bio.write(0, os.urandom(LENGTH)))
    await target.message(["add", "l2", "0"])
    assert target.status().split()[1] == "AAa"
    written_during_resync = 0
    i = 0
    while "resync" in target.status():
        offset = (i * 7 % (LENGTH // 4096)) * 4096
        await target.map(Bio.write(offset, os.urandom(4096)))
        written_during_resync += 1
        i += 1
    await target.wait_resync()
    assert written_during_resync > 1
    assert region(l0) == region(l1) == region(l2)
    assert target.status() == "3 AAA 1024/1024 idle 3 optimal"
    assert target.table_args() == "3 l0 0 l1 0 l2 0 1 nosync"


async def test_resync_never_overwrites_a_newer_write() -> None:
    l0, l1, l2 = Leg("l0"), Leg("l1"), Leg("l2")
    target = mirror("2 l0 0 l1 0 1 nosync", l0, l1)
    target._env.devices["l2"] = l2  # type: ignore[attr-defined]
    await target.resume()
    await target.map(Bio.write(0, b"old!" * 1024))
    gate = trio.Event()
    l0.read_gate = l1.read_gate = gate
    await target.message(["add", "l2", "0"])
    async with trio.open_nursery() as nursery:
        await trio.testing.wait_all_tasks_blocked()  # resync holds region 0, waiting to read it
        nursery.start_soon(target.map, Bio.write(0, b"new!" * 1024))
        await trio.testing.wait_all_tasks_blocked()  # the write waits for the region
        assert region(l0, 0, 4096) == b"old!" * 1024
        gate.set()
    await target.wait_resync()
    assert region(l2, 0, 4096) == region(l0, 0, 4096) == b"new!" * 1024


async def test_suspend_freezes_resync_and_resume_continues_it() -> None:
    l0, l1 = Leg("l0"), Leg("l1")
    target = mirror("2 l0 0 l1 0", l0, l1)
    l0.read_gate = trio.Event()
    await target.resume()
    await trio.testing.wait_all_tasks_blocked()
    await target.presuspend()
    assert target.status() == "2 Aa 0/1024 frozen 2 optimal"
    l0.read_gate.set()
    await target.resume()
    await target.wait_resync()
    assert region(l1) == region(l0)


async def test_hot_add_needs_a_superset_of_the_crypto_capabilities() -> None:
    l0, l1 = Leg("l0", xts_profile()), Leg("l1", xts_profile())
    weak, strong = Leg("weak"), Leg("strong", xts_profile())
    target = mirror("2 l0 0 l1 0 1 nosync", l0, l1, weak, strong)
    await target.resume()
    with pytest.raises(FuseblkError, match="more restrictive") as info:
        await target.message(["add", "weak", "0"])
    assert info.value.errno == errno.EINVAL
    assert len(target.legs) == 2
    await target.message(["add", "strong", "0"])
    await target.wait_resync()
    assert target.status().split()[1] == "AAA"


async def test_contexts_pass_through_and_every_leg_stores_the_same_ciphertext() -> None:
    capable, incapable = Leg("hw", xts_profile()), Leg("plain")
    target = mirror("2 hw 0 plain 0 1 nosync", capable, incapable)
    ctx = BioCryptContext.at(make_key(9, dus=4096, dun_bytes=8), 77)
    data = os.urandom(8192)
    await target.map(Bio.write(4096, data, ctx))
    assert region(capable, 4096, 8192) == region(incapable, 4096, 8192) != data
    assert [b.crypt_ctx for b in incapable.bios] == [None]
    for _ in range(2):  # one read from each leg
        assert await read(target, 4096, 8192, ctx) == data


# ---- degraded writes: fewer legs than the array's width ------------------------------------------


def counted(target: Raid1Target) -> tuple[int, int]:
    assert target.counters is not None
    return target.counters["degraded_writes"], target.counters["degraded_bytes"]


async def test_writes_with_every_leg_taking_them_are_not_degraded() -> None:
    target = mirror("2 l0 0 l1 0 1 nosync", Leg("l0"), Leg("l1"))
    await target.map(Bio.write(0, os.urandom(8192)))
    await target.map(Bio.discard(8192, 4096))
    assert counted(target) == (0, 0)
    assert target.status().endswith(" 2 optimal")


async def test_writes_after_a_leg_is_failed_by_message_are_degraded_writes() -> None:
    l0, l1 = Leg("l0"), Leg("l1")
    target = mirror("2 l0 0 l1 0 1 nosync", l0, l1)
    await target.message(["fail", "1"])
    for i in range(8):
        await target.map(Bio.write(i * 4096, os.urandom(4096)))
    assert counted(target) == (8, 8 * 4096)
    assert target.counters is not None and target.counters["leg_failures"] == 1
    assert target.status() == "2 AD 1024/1024 idle 2 degraded"


async def test_a_leg_erroring_during_the_write_makes_that_write_degraded() -> None:
    l0, l1 = Leg("l0"), Leg("l1")
    target = mirror("2 l0 0 l1 0 1 nosync", l0, l1)
    l1.fail_next = errno.EIO
    await target.map(Bio.write(0, os.urandom(4096)))
    assert counted(target) == (1, 4096)
    assert target.status().split()[1] == "AD"


async def test_discards_count_as_degraded_writes_and_flushes_do_not() -> None:
    target = mirror("2 l0 0 l1 0 1 nosync", Leg("l0"), Leg("l1"))
    await target.message(["fail", "0"])
    await target.map(Bio.flush())
    assert counted(target) == (0, 0)
    await target.map(Bio.discard(0, 8192))
    assert counted(target) == (1, 8192)


async def test_removing_a_failed_leg_keeps_the_width_until_a_leg_is_added() -> None:
    l0, l1, l2 = Leg("l0"), Leg("l1"), Leg("l2")
    target = mirror("2 l0 0 l1 0 1 nosync", l0, l1, l2)
    await target.resume()
    await target.message(["fail", "1"])
    await target.message(["remove", "1"])
    await target.map(Bio.write(0, os.urandom(4096)))
    assert counted(target) == (1, 4096)
    assert target.status() == "1 A 1024/1024 idle 2 degraded"
    await target.message(["add", "l2", "0"])
    await target.map(Bio.write(0, os.urandom(4096)))  # the new leg takes it while resyncing
    assert counted(target) == (1, 4096)
    await target.wait_resync()
    assert target.status() == "2 AA 1024/1024 idle 2 optimal"


async def test_a_hot_add_widens_the_array_and_a_later_failure_degrades_it() -> None:
    l0, l1, l2 = Leg("l0"), Leg("l1"), Leg("l2")
    target = mirror("2 l0 0 l1 0 1 nosync", l0, l1, l2)
    await target.resume()
    await target.message(["add", "l2", "0"])
    await target.wait_resync()
    assert target.status() == "3 AAA 1024/1024 idle 3 optimal"
    await target.message(["fail", "2"])
    await target.map(Bio.write(0, os.urandom(4096)))
    assert counted(target) == (1, 4096)
    assert target.status().endswith(" 3 degraded")


async def test_writes_during_the_initial_resync_reach_every_leg_and_are_not_degraded() -> None:
    l0, l1 = Leg("l0"), Leg("l1")
    target = mirror("2 l0 0 l1 0", l0, l1)
    assert target.status().split()[1] == "Aa"
    await target.map(Bio.write(0, os.urandom(4096)))
    assert counted(target) == (0, 0)


def test_failed_legs_are_held_but_take_no_io() -> None:
    l0, l1 = Leg("l0"), Leg("l1")
    target = mirror("2 l0 0 l1 0 1 nosync", l0, l1)
    target._fail(target.legs[1], "test")
    assert target.devices() == [l0]
    assert target.held_devices() == [l0, l1]


# ---- end to end: DeviceManager over image files -------------------------------------------------


async def raw_bytes(dev: BlockDevice, length: int) -> bytes:
    buf = bytearray(length)
    await dev.submit(Bio.read(0, buf))
    return bytes(buf)


async def test_encrypted_mirror_over_images_survives_a_leg_and_hot_adds_another(
    manager: DeviceManager, tmp_path: Path
) -> None:
    """default-key over raid1 over inline-encryption images: contexts reach every leg's hardware."""
    ufs = load_profile("ufs")
    images = {
        n: create_backend(tmp_path / f"{n}.img", 1 << 20, ufs, name=n) for n in ("a", "b", "c")
    }
    plain = create_backend(tmp_path / "plain.img", 1 << 20, load_profile("none"), name="plain")
    for dev in (*images.values(), plain):
        manager.add_device(dev)
    mirror_md = await manager.create("mirror", "0 2048 raid1 2 a 0 b 0 1 nosync")
    assert mirror_md.crypto_profile is not None  # raid1 passes crypto: the legs' common profile
    secure = await manager.create(
        "secure", f"0 2048 default-key aes-xts-plain64 {'ab' * 64} 0 mirror 0"
    )

    data = os.urandom(256 * 1024)
    await secure.submit(Bio.write(0, data))
    assert (
        await raw_bytes(images["a"], len(data)) == await raw_bytes(images["b"], len(data)) != data
    )
    for name in ("a", "b"):
        profile = images[name].crypto_profile
        assert profile is not None and profile.counters["programs"] == 1

    await manager.message("mirror", 0, ["fail", "0"])
    assert manager.status("mirror") == "0 2048 raid1 2 DA 2048/2048 idle 2 degraded\n"
    back = bytearray(len(data))
    await secure.submit(Bio.read(0, back))
    assert back == data

    with pytest.raises(FuseblkError, match="more restrictive") as info:
        await manager.message("mirror", 0, ["add", "plain", "0"])
    assert info.value.errno == errno.EINVAL
    await manager.message("mirror", 0, ["add", "c", "0"])
    assert mirror_md.live is not None
    target = mirror_md.live.targets[0]
    assert isinstance(target, Raid1Target)
    await target.wait_resync()
    assert manager.status("mirror") == "0 2048 raid1 3 DAA 2048/2048 idle 3 degraded\n"
    assert await raw_bytes(images["c"], len(data)) == await raw_bytes(images["b"], len(data))
    assert manager.stats("mirror")["devices"]["mirror"]["resync_bytes"] == 1 << 20
    await manager.message("mirror", 0, ["remove", "0"])
    assert manager.table("mirror") == "0 2048 raid1 2 b 0 c 0 1 nosync\n"


async def test_evicting_through_the_mirror_reaches_a_hot_added_leg(
    manager: DeviceManager, tmp_path: Path
) -> None:
    ufs = load_profile("ufs")
    legs = {n: create_backend(tmp_path / f"{n}.img", 1 << 20, ufs, name=n) for n in "abc"}
    for leg in legs.values():
        manager.add_device(leg)
    mirror_md = await manager.create("mirror", "0 2048 raid1 2 a 0 b 0 1 nosync")
    await manager.message("mirror", 0, ["add", "c", "0"])
    assert mirror_md.live is not None
    target = mirror_md.live.targets[0]
    assert isinstance(target, Raid1Target)
    await target.wait_resync()

    key = make_key(3, dus=4096, dun_bytes=8)
    await mirror_md.submit(Bio.write(0, os.urandom(8192), BioCryptContext.at(key, 0)))
    leg_c = legs["c"].crypto_profile
    assert leg_c is not None and leg_c.find_slot(key) is not None

    await manager.evict_key("mirror", key)
    assert leg_c.find_slot(key) is None
    assert leg_c.counters["evictions"] == 1


# ---- images stay attached exactly while a table names them ------------------------------------------


async def images(tmp_path: Path, names: str | tuple[str, ...]) -> list[Path]:
    """Fresh images with UFS-like inline-encryption hardware, one per name."""
    return [await make_image(tmp_path, name, MiB) for name in names]


def attached(manager: DeviceManager, *images: Path) -> list[bool]:
    return [str(img.resolve()) in manager.backends() for img in images]


@pytest.mark.parametrize(
    ("leg_offset", "message"),
    [("0", "more restrictive"), ("999999", "new leg offset")],
)
async def test_a_refused_hot_add_detaches_the_image_it_opened(
    manager: DeviceManager, tmp_path: Path, leg_offset: str, message: str
) -> None:
    a, b = await make_image(tmp_path, "a", MiB, "ufs"), await make_image(tmp_path, "b", MiB, "ufs")
    plain = await make_image(tmp_path, "plain", MiB, "none" if leg_offset == "0" else "ufs")
    await manager.create("mirror", f"0 1024 raid1 2 {a} 0 {b} 0 1 nosync")
    with pytest.raises(FuseblkError, match=message) as info:
        await manager.message("mirror", 0, ["add", str(plain), leg_offset])
    assert info.value.errno == errno.EINVAL
    assert attached(manager, a, b, plain) == [True, True, False]
    manager.add_backend("plain", plain)  # its image lock was released


async def test_a_hot_added_image_stays_attached_while_the_leg_is_in_the_table(
    manager: DeviceManager, tmp_path: Path
) -> None:
    a, b, c = await images(tmp_path, "abc")
    md = await manager.create("mirror", f"0 1024 raid1 2 {a} 0 {b} 0 1 nosync")
    await manager.message("mirror", 0, ["add", str(c), "0"])
    assert attached(manager, c) == [True]
    assert md.live is not None and isinstance(target := md.live.targets[0], Raid1Target)
    await target.wait_resync()
    assert manager.status("mirror") == "0 1024 raid1 3 AAA 1024/1024 idle 3 optimal\n"


async def test_a_failed_legs_image_survives_removing_an_unrelated_device(
    manager: DeviceManager, tmp_path: Path
) -> None:
    a, b, other = await images(tmp_path, ("a", "b", "other"))
    await manager.create("mirror", f"0 1024 raid1 2 {a} 0 {b} 0 1 nosync")
    await manager.create("unrelated", f"0 8 linear {other} 0")
    await manager.message("mirror", 0, ["fail", "1"])
    await manager.remove("unrelated")
    assert attached(manager, a, b, other) == [True, True, False]
    assert str(b.resolve()) in manager.stats()["backends"]
    assert str(b.resolve()) in manager.table("mirror")
    with pytest.raises(FuseblkError) as info:
        manager.add_backend("b", b)  # still locked: the table names it
    assert info.value.errno == errno.EBUSY


async def test_writes_to_a_mirror_of_images_with_a_failed_leg_are_counted_as_degraded(
    manager: DeviceManager, tmp_path: Path
) -> None:
    a, b = await images(tmp_path, "ab")
    md = await manager.create("mirror", f"0 1024 raid1 2 {a} 0 {b} 0 1 nosync")
    await md.submit(Bio.write(0, os.urandom(8192)))
    await manager.message("mirror", 0, ["fail", "1"])
    await md.submit(Bio.write(0, os.urandom(8192)))
    counters = manager.stats("mirror")["devices"]["mirror"]
    assert (counters["degraded_writes"], counters["degraded_bytes"]) == (1, 8192)
    assert manager.status("mirror") == "0 1024 raid1 2 AD 1024/1024 idle 2 degraded\n"


async def test_removing_a_failed_leg_detaches_its_image_unless_another_device_names_it(
    manager: DeviceManager, tmp_path: Path
) -> None:
    a, b, c = await images(tmp_path, "abc")
    await manager.create("m1", f"0 1024 raid1 2 {a} 0 {b} 0 1 nosync")
    await manager.create("m2", f"0 1024 raid1 2 {a} 1024 {c} 0 1 nosync")
    await manager.message("m1", 0, ["fail", "1"])
    await manager.message("m1", 0, ["remove", "1"])
    assert attached(manager, a, b, c) == [True, False, True]
    manager.add_backend("b", b)  # its image lock was released
    await manager.message("m2", 0, ["fail", "0"])
    await manager.message("m2", 0, ["remove", "0"])
    assert attached(manager, a, c) == [True, True]  # m1 still names a


async def test_a_mapped_device_that_is_a_failed_leg_cannot_be_removed(
    manager: DeviceManager, tmp_path: Path
) -> None:
    a, b = await images(tmp_path, "ab")
    await manager.create("lower", f"0 1024 linear {b} 0")
    await manager.create("mirror", f"0 1024 raid1 2 {a} 0 lower 0 1 nosync")
    await manager.message("mirror", 0, ["fail", "1"])
    with pytest.raises(FuseblkError) as info:
        await manager.remove("lower")
    assert info.value.errno == errno.EBUSY
    await manager.message("mirror", 0, ["remove", "1"])
    await manager.remove("lower")
    assert attached(manager, a, b) == [True, False]


async def test_a_failed_leg_still_counts_when_refusing_a_cycle(
    manager: DeviceManager, tmp_path: Path
) -> None:
    a = await make_image(tmp_path, "a", MiB)
    await manager.create("lower", f"0 1024 linear {a} 0")
    await manager.create("mirror", f"0 1024 raid1 2 {a} 0 lower 0 1 nosync")
    await manager.message("mirror", 0, ["fail", "1"])
    with pytest.raises(FuseblkError) as info:
        await manager.load("lower", "0 1024 linear mirror 0")
    assert "no cycles" in info.value.message


async def test_a_renamed_mirror_cannot_hot_add_itself_as_a_leg(
    manager: DeviceManager, tmp_path: Path
) -> None:
    a, b = await images(tmp_path, "ab")
    await manager.create("old", f"0 1024 raid1 2 {a} 0 {b} 0 1 nosync")
    await manager.rename("old", "new")
    with pytest.raises(FuseblkError, match="no cycles") as info:
        await manager.message("new", 0, ["add", "new", "0"])
    assert info.value.errno == errno.EINVAL
    assert manager.table("new") == f"0 1024 raid1 2 {a.resolve()} 0 {b.resolve()} 0 1 nosync\n"
