"""DeviceManager: names, lifecycle verbs, holders, cycles, inspection and listeners."""

from __future__ import annotations

import errno

import pytest
import trio
from device_helpers import MemDevice
from dm_helpers import manager_over, pattern, read, write

from fuseblk.dm.events import DeviceAdded, DeviceRemoved, DeviceRenamed, DeviceResized
from fuseblk.errors import FuseblkError, TableError


def events_of(dm) -> list:
    events: list = []
    dm.listeners.append(events.append)
    return events


async def test_create_load_resume_rename_remove_notify_listeners():
    dm = manager_over(MemDevice("a"))
    events = events_of(dm)
    await dm.create("d", "")
    assert dm.info("d")["size"] == 0
    await dm.load("d", "0 16 linear a 0")
    assert dm.info("d")["tables"] == ["INACTIVE"] and dm.get("d").size == 0
    await dm.resume("d")
    assert dm.info("d")["tables"] == ["LIVE"] and dm.get("d").size == 16 * 512
    await dm.rename("d", "e")
    assert dm.names() == ["e"] and dm.get("e").name == "e"
    await dm.remove("e")
    assert dm.names() == []
    assert events == [
        DeviceAdded("d"),
        DeviceResized("d", 8192),
        DeviceRenamed("d", "e"),
        DeviceRemoved("e"),
    ]


async def test_info_reports_state_tables_and_events():
    dm = manager_over(MemDevice("a"))
    await dm.create("d", "0 16 linear a 0")
    await dm.load("d", "0 8 linear a 0\n8 8 zero")
    info = dm.info("d")
    assert info["state"] == "ACTIVE" and info["tables"] == ["LIVE", "INACTIVE"]
    await dm.suspend("d")
    assert dm.info("d")["state"] == "SUSPENDED"
    await dm.resume("d")
    info = dm.info("d")
    assert info["state"] == "ACTIVE" and info["tables"] == ["LIVE"] and info["event_nr"] == 2
    assert info["block_size"] == 512 and info["crypto"] is None and info["open_count"] == 0


@pytest.mark.parametrize(
    "name", ["", "a/b", ".", "..", "x" * 128, "é" * 64, "\ud800", "a\udcffb", "a\0b"]
)
async def test_invalid_names_are_einval(name: str):
    dm = manager_over(MemDevice("a"))
    with pytest.raises(FuseblkError) as info:
        await dm.create(name, "")
    assert info.value.errno == errno.EINVAL
    assert "\n" not in info.value.message
    await dm.create("d", "")
    with pytest.raises(FuseblkError) as info:
        await dm.rename("d", name)
    assert info.value.errno == errno.EINVAL
    assert dm.names() == ["d"]


async def test_a_name_with_a_lone_surrogate_says_it_is_not_utf8_text():
    dm = manager_over(MemDevice("a"))
    with pytest.raises(FuseblkError) as info:
        await dm.create("\ud800", "")
    assert "not valid UTF-8 text" in info.value.message
    info.value.message.encode("utf-8")  # the message itself is printable anywhere


async def test_names_up_to_dm_name_len_minus_one_bytes_are_valid_for_create_and_rename():
    dm = manager_over(MemDevice("a"))
    await dm.create("x" * 127, "")
    with pytest.raises(FuseblkError) as info:
        await dm.rename("x" * 127, "y" * 128)
    assert info.value.errno == errno.EINVAL
    assert dm.names() == ["x" * 127]


async def test_existing_names_are_eexist_and_unknown_names_enxio():
    dm = manager_over(MemDevice("a"))
    await dm.create("d", "")
    for name in ("d", "a"):
        with pytest.raises(FuseblkError) as info:
            await dm.create(name, "")
        assert info.value.errno == errno.EEXIST
    with pytest.raises(FuseblkError) as info:
        await dm.rename("d", "a")
    assert info.value.errno == errno.EEXIST
    with pytest.raises(FuseblkError) as info:
        await dm.resume("nope")
    assert info.value.errno == errno.ENXIO


async def test_unknown_fallback_policy_is_einval():
    with pytest.raises(FuseblkError) as info:
        await manager_over(MemDevice("a")).create("d", "0 8 zero", fallback="sometimes")
    assert info.value.errno == errno.EINVAL


async def test_remove_is_ebusy_while_a_live_or_inactive_table_stacks_on_it():
    dm = manager_over(MemDevice("a"))
    await dm.create("lower", "0 16 linear a 0")
    await dm.create("upper", "0 16 linear lower 0")
    with pytest.raises(FuseblkError) as info:
        await dm.remove("lower")
    assert info.value.errno == errno.EBUSY and "upper" in info.value.message
    await dm.create("other", "0 8 zero")
    await dm.load("other", "0 8 linear lower 8")
    await dm.load("upper", "0 16 zero")
    await dm.resume("upper")
    with pytest.raises(FuseblkError) as info:
        await dm.remove("lower")
    assert "other" in info.value.message
    await dm.clear("other")
    await dm.remove("lower")


async def test_remove_is_ebusy_while_open():
    dm = manager_over(MemDevice("a"))
    md = await dm.create("d", "0 8 zero")
    md.open()
    with pytest.raises(FuseblkError) as info:
        await dm.remove("d")
    assert info.value.errno == errno.EBUSY
    md.release()
    await dm.remove("d")


async def test_table_that_reaches_its_own_device_is_refused():
    dm = manager_over(MemDevice("a"))
    await dm.create("x", "0 16 linear a 0")
    await dm.create("y", "0 16 linear x 0")
    await dm.create("z", "0 16 linear y 0")
    for table in ("0 16 linear x 0", "0 16 linear z 0", "0 8 linear a 0\n8 8 striped 1 8 y 0"):
        with pytest.raises(TableError) as info:
            await dm.load("x", table)
        assert "cycles" in info.value.message
    with pytest.raises(TableError):
        await dm.create("w", "0 8 linear w 0")
    assert dm.info("x")["tables"] == ["LIVE"]


async def test_status_and_table_lines_per_target():
    dm = manager_over(MemDevice("a"), MemDevice("b"))
    await dm.create("d", "0 16 striped 2 4 a 0 b 0\n16 8 delay a 64 0\n24 8 error")
    assert dm.table("d") == "0 16 striped 2 4 a 0 b 0\n16 8 delay a 64 0\n24 8 error\n"
    assert dm.status("d") == "0 16 striped 2 a b 1 AA\n16 8 delay 0 0 0\n24 8 error\n"


async def test_message_goes_to_the_target_at_that_sector():
    dm = manager_over(MemDevice("a"))
    await dm.create("d", "0 8 linear a 0\n8 8 zero")
    with pytest.raises(FuseblkError) as info:
        await dm.message("d", 9, ["hello"])
    assert info.value.errno == errno.EINVAL and "zero" in info.value.message
    with pytest.raises(FuseblkError) as info:
        await dm.message("d", 16, ["hello"])
    assert info.value.errno == errno.EINVAL


async def test_stats_count_per_device_and_per_backend():
    a = MemDevice("a")
    dm = manager_over(a)
    md = await dm.create("d", "0 16 linear a 0\n16 16 linear a 16")
    await write(md, 0, pattern(32 * 512))
    assert await read(md, 0, 32 * 512) == pattern(32 * 512)
    stats = dm.stats()
    d = stats["devices"]["d"]
    assert (d["bios"], d["reads"], d["writes"], d["bytes"], d["splits"]) == (2, 1, 1, 32768, 2)
    assert stats["backends"]["a"]["bios"] == 4
    assert "fallback" in stats
    assert set(dm.stats("a")["backends"]) == {"a"} and dm.stats("a")["devices"] == {}


async def test_close_removes_devices_top_down():
    dm = manager_over(MemDevice("a"))
    events = events_of(dm)
    await dm.create("lower", "0 16 linear a 0")
    await dm.create("upper", "0 16 linear lower 0")
    await dm.close()
    assert [e for e in events if isinstance(e, DeviceRemoved)] == [
        DeviceRemoved("upper"),
        DeviceRemoved("lower"),
    ]


async def test_table_verbs_take_turns_so_concurrent_creates_of_one_name_are_eexist():
    disk = MemDevice("a")
    dm = manager_over(disk)
    events = events_of(dm)
    results: list[int | None] = []

    async def create() -> None:
        try:
            await dm.create("d", "0 8 linear a 0")
            results.append(None)
        except FuseblkError as err:
            results.append(err.errno)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(create)
        nursery.start_soon(create)
    assert results.count(None) == 1 and results.count(errno.EEXIST) == 1
    assert events == [DeviceAdded("d")]


@pytest.mark.parametrize(
    ("offset", "length"), [(100, 512), (0, 1000), (0, 0), (-512, 512), (0, 65 * 512)]
)
async def test_discard_outside_or_misaligned_is_einval(offset: int, length: int):
    disk = MemDevice("a")
    dm = manager_over(disk)
    await dm.create("d", "0 64 linear a 0")
    with pytest.raises(FuseblkError) as info:
        await dm.discard("d", offset, length)
    assert info.value.errno == errno.EINVAL
    assert disk.bios == []


async def test_discard_reaches_the_device_below():
    disk = MemDevice("a")
    disk.data[:] = b"\xa5" * len(disk.data)
    dm = manager_over(disk)
    await dm.create("d", "0 64 linear a 8")
    await dm.discard("d", 4096, 8192)
    assert disk.data[8 * 512 + 4096 : 8 * 512 + 12288] == bytes(8192)
    assert disk.data[: 8 * 512 + 4096] == b"\xa5" * (8 * 512 + 4096)
    assert dm.stats("d")["devices"]["d"]["discards"] == 1
