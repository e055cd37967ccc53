"""Live hardware changes (``fuseblk hw set``) propagating up a stack of mapped devices.

The stack is default-key (``secure``, 4096-byte data units) over linear (``base``) over a UFS
backend (``hw``): ``secure``'s key is served inline while the hardware takes 4096-byte data
units, and by the software fallback once it does not. Growth applies at once; a shrink drains
the devices above top-down, evicts what the hardware lost, recomputes bottom-up and resumes.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing
from control_helpers import cli_exit_status
from device_helpers import XTS, MiB, ciphertext
from dm_helpers import image_manager, make_image, pattern, read, write

from fuseblk.bio import Bio
from fuseblk.cli.hw_cmd import change_lines
from fuseblk.control.protocol import RequestError, decode_request, encode_request
from fuseblk.dm.events import CryptoProfileChanged
from fuseblk.dm.manager import DeviceManager
from fuseblk.dm.mapped_device import MappedDevice
from fuseblk.errors import FuseblkError
from fuseblk.hw.engine import InlineEncryptionEngine
from fuseblk.hw.factory import open_backend
from fuseblk.hw.profiles import HardwareProfile
from fuseblk.key import BlkCryptoKey

KEY_HEX = bytes(range(64)).hex()
SECTORS = 2 * MiB // 512
SECURE = (
    f"0 {SECTORS} default-key aes-xts-plain64 {KEY_HEX} 0 base 0 2 sector_size:4096 "
    "iv_large_sectors\n"
)
NO_4K = ["AES-256-XTS:512"]  # the hardware loses 4096-byte data units: secure's key
WITH_4K = ["AES-256-XTS:512,4096"]
UFS = ["AES-256-XTS:512,1024,2048,4096", "AES-128-CBC-ESSIV:4096"]  # backends/ufs.toml


def secure_key() -> BlkCryptoKey:
    return BlkCryptoKey.create(XTS, bytes(range(64)), 4096, 2)  # 512 units: 2-byte DUNs


async def stack(dm: DeviceManager) -> tuple[MappedDevice, MappedDevice]:
    base = await dm.create("base", f"0 {SECTORS} linear hw 0")
    secure = await dm.create("secure", SECURE)
    return base, secure


def engine(dm: DeviceManager, name: str = "hw") -> InlineEncryptionEngine:
    backend = dm.backends()[name]
    assert isinstance(backend, InlineEncryptionEngine)
    return backend


async def raw(dm: DeviceManager, backend: str, offset: int, length: int) -> bytes:
    """What the backend stores, read below every mapping and without a context."""
    buf = bytearray(length)
    await dm.backends()[backend].submit(Bio.read(offset, buf))
    return bytes(buf)


def expected_ciphertext(data: bytes, first_unit: int) -> bytes:
    """What hardware and fallback alike must store for ``data`` written through secure."""
    key = secure_key()
    return b"".join(
        ciphertext(key, data[i : i + 4096], first_unit + i // 4096)
        for i in range(0, len(data), 4096)
    )


def modes_of(md: MappedDevice) -> object:
    """The device's modes and data unit sizes as ``hw set`` reports them; None: no profile."""
    profile = md.crypto_profile
    return None if profile is None else profile.caps.to_json()["modes"]


# -- growth and shrink through a stack ------------------------------------------------------------


async def test_shrink_moves_the_stack_to_the_fallback_and_growth_back_inline(tmp_path: Path):
    async with image_manager(tmp_path, {"hw": (2 * MiB, "ufs")}) as dm:
        base, secure = await stack(dm)
        await write(secure, 0, pattern(8192, 1))
        assert base.counters["inline_bios"] == 1 and base.counters["fallback_bios"] == 0

        change = await dm.hw_set("hw", modes=NO_4K)
        assert change["change"] == "shrink"
        assert change["suspended"] == ["secure", "base"]  # top-down
        assert change["evicted"] == 1  # secure's key left its keyslot
        assert modes_of(base) == {"AES-256-XTS": [512]}
        assert modes_of(secure) == {"AES-256-XTS": [512]}
        await write(secure, 8192, pattern(8192, 2))
        assert base.counters["fallback_bios"] == 1 and base.counters["inline_bios"] == 1

        change = await dm.hw_set("hw", modes=WITH_4K)
        assert change["change"] == "growth" and change["suspended"] == []
        await write(secure, 16384, pattern(8192, 3))
        assert base.counters["inline_bios"] == 2 and base.counters["fallback_bios"] == 1
        assert not base.suspended and not secure.suspended

        data = pattern(8192, 1) + pattern(8192, 2) + pattern(8192, 3)
        assert await read(secure, 0, len(data)) == data
        assert await raw(dm, "hw", 0, len(data)) == expected_ciphertext(data, 0)
        assert dm.hw_status("hw")["counters"]["hw_changes"] == 2


async def test_three_levels_suspend_top_down_and_recompute_bottom_up(tmp_path: Path):
    async with image_manager(tmp_path, {"hw": (2 * MiB, "ufs")}) as dm:
        await dm.create("low", f"0 {SECTORS} linear hw 0")
        await dm.create("base", f"0 {SECTORS} linear low 0")
        secure = await dm.create("secure", SECURE)
        await dm.create("aside", f"0 {SECTORS} zero")  # not above hw: untouched
        change = await dm.hw_set("hw", modes=NO_4K)
        assert change["suspended"] == ["secure", "base", "low"]
        assert list(change["profiles"]) == ["low", "base", "secure"]
        await write(secure, 0, pattern(4096))
        assert dm.get("base").counters["fallback_bios"] == 1
        change = await dm.hw_set("hw", modes=UFS)
        assert list(change["profiles"]) == ["low", "base", "secure"]
        await write(secure, 4096, pattern(4096, 1))
        assert dm.get("base").counters["inline_bios"] == 1
        assert dm.get("aside").counters["profile_changes"] == 0
        assert await raw(dm, "hw", 0, 8192) == expected_ciphertext(
            pattern(4096) + pattern(4096, 1), 0
        )


async def test_growth_propagates_bottom_up_to_a_device_that_had_no_profile(tmp_path: Path):
    async with image_manager(tmp_path, {"hw": (2 * MiB, "ufs")}) as dm:
        await dm.hw_set("hw", modes=NO_4K)
        base, secure = await stack(dm)
        await write(secure, 0, pattern(4096))
        assert base.counters["fallback_bios"] == 1

        change = await dm.hw_set("hw", modes=WITH_4K)
        assert change["profiles"]["base"]["modes"] == {"AES-256-XTS": [512, 4096]}
        assert list(change["profiles"]) == ["base", "secure"]  # bottom-up
        await write(secure, 4096, pattern(4096, 1))
        assert base.counters["inline_bios"] == 1


async def test_growth_does_not_hold_io_in_flight(tmp_path: Path):
    async with image_manager(tmp_path, {"hw": (2 * MiB, "ufs")}) as dm:
        _, secure = await stack(dm)
        engine(dm).faults.slow_program(1000)  # far longer than the change takes
        done = trio.Event()

        async def writer() -> None:
            await write(secure, 0, pattern(4096))
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            await trio.testing.wait_all_tasks_blocked()
            change = await dm.hw_set("hw", modes=[*UFS, "Adiantum:4096"])
            assert change["change"] == "growth"
            assert not done.is_set()  # the change did not wait for the write
        assert done.is_set() and secure.counters["waited_for_resume"] == 0


async def test_keyslot_shrink_evicts_the_keys_in_the_removed_slots(tmp_path: Path):
    async with image_manager(tmp_path, {"hw": (2 * MiB, "ufs")}) as dm:
        _, secure = await stack(dm)
        hw = engine(dm)
        profile = hw.crypto_profile
        assert profile is not None
        await write(secure, 0, pattern(4096))
        assert profile.find_slot(secure_key()) == 0
        await dm.hw_set("hw", keyslots=4)
        assert profile.find_slot(secure_key()) == 0  # slot 0 stays, and its key with it
        others = [BlkCryptoKey.create(XTS, bytes([i]) * 64, 4096, 1) for i in range(1, 4)]
        for key in others:
            async with profile.keyslot(key):
                pass
        assert [profile.find_slot(k) for k in others] == [1, 2, 3]

        change = await dm.hw_set("hw", keyslots=3)
        assert change["change"] == "shrink" and change["evicted"] == 1
        assert profile.num_slots == 3 and profile.find_slot(others[2]) is None
        assert len(hw.header.slots) == 3 and hw.header.hardware.num_slots == 3
        await write(secure, 4096, pattern(4096, 5))
        assert await read(secure, 4096, 4096) == pattern(4096, 5)


async def test_keyslot_growth_adds_empty_slots_used_before_cached_keys(tmp_path: Path):
    async with image_manager(tmp_path, {"hw": (2 * MiB, "tiny")}) as dm:
        profile = engine(dm).crypto_profile
        assert profile is not None
        keys = [BlkCryptoKey.create(XTS, bytes([i]) * 64, 4096, 1) for i in range(3)]
        for key in keys[:2]:
            async with profile.keyslot(key):
                pass
        change = await dm.hw_set("hw", keyslots=3)
        assert change["change"] == "growth"
        async with profile.keyslot(keys[2]) as slot:
            assert slot is not None and slot.index == 2
        assert {profile.find_slot(k) for k in keys} == {0, 1, 2}


async def test_dropping_a_busy_keyslot_is_ebusy_and_changes_nothing(tmp_path: Path):
    async with image_manager(tmp_path, {"hw": (2 * MiB, "tiny")}) as dm:
        hw = engine(dm)
        profile = hw.crypto_profile
        assert profile is not None
        first, held = (BlkCryptoKey.create(XTS, bytes([i]) * 64, 4096, 1) for i in (1, 2))
        async with profile.keyslot(first):
            pass
        header = hw.header
        async with profile.keyslot(held) as slot:
            assert slot is not None and slot.index == 1
            with pytest.raises(FuseblkError) as info:
                await dm.hw_set("hw", keyslots=1)
        assert info.value.errno == errno.EBUSY
        assert profile.num_slots == 2 and profile.find_slot(held) == 1
        assert hw.header == header and hw.hardware.num_slots == 2


# -- refused changes --------------------------------------------------------------------------------


async def test_raid1_leg_shrinking_below_the_array_promise_is_refused_and_changes_nothing(
    tmp_path: Path,
):
    async with image_manager(tmp_path, {"a": (2 * MiB, "ufs"), "b": (2 * MiB, "ufs")}) as dm:
        mirror = await dm.create("mirror", f"0 {SECTORS} raid1 2 a 0 b 0 1 nosync")
        before = engine(dm, "a").header
        with pytest.raises(FuseblkError) as info:
            await dm.hw_set("a", modes=NO_4K)
        assert info.value.errno == errno.EINVAL
        assert "mirror" in info.value.message and "raid1" in info.value.message
        assert "\n" not in info.value.message
        assert engine(dm, "a").header == before and engine(dm, "a").hardware == before.hardware
        assert not mirror.suspended and mirror.counters["profile_changes"] == 0


async def test_raid1_leg_may_lose_what_the_array_never_promised(tmp_path: Path):
    async with image_manager(tmp_path, {"a": (2 * MiB, "ufs"), "b": (2 * MiB, "tiny")}) as dm:
        mirror = await dm.create("mirror", f"0 {SECTORS} raid1 2 a 0 b 0 1 nosync")
        assert modes_of(mirror) == {"AES-256-XTS": [512, 1024, 2048, 4096]}
        change = await dm.hw_set("a", modes=["AES-256-XTS:512,1024,2048,4096"])  # drops ESSIV
        assert change["change"] == "shrink" and change["suspended"] == ["mirror"]
        assert modes_of(mirror) == {"AES-256-XTS": [512, 1024, 2048, 4096]}


async def test_shrink_under_a_key_is_refused_when_the_fallback_is_disabled(tmp_path: Path):
    dm = DeviceManager(fallback_enabled=False)
    try:
        dm.add_backend("hw", await make_image(tmp_path, "hw", 2 * MiB, "ufs"))
        base, secure = await stack(dm)
        await write(secure, 0, pattern(4096))
        with pytest.raises(FuseblkError) as info:
            await dm.hw_set("hw", modes=NO_4K)
        assert info.value.errno == errno.EINVAL and "fallback is disabled" in info.value.message
        assert modes_of(base) == {
            "AES-256-XTS": [512, 1024, 2048, 4096],
            "AES-128-CBC-ESSIV": [4096],
        }
        profile = engine(dm).crypto_profile
        assert profile is not None and profile.find_slot(secure_key()) is not None
        await dm.hw_set("hw", modes=["AES-256-XTS:4096"])  # keeps what the key needs
        assert await read(secure, 0, 4096) == pattern(4096)
    finally:
        await dm.close()


async def test_no_drain_refuses_a_shrink_under_a_live_device_with_ebusy(tmp_path: Path):
    async with image_manager(tmp_path, {"hw": (2 * MiB, "ufs")}) as dm:
        base, _ = await stack(dm)
        header = engine(dm).header
        with pytest.raises(FuseblkError) as info:
            await dm.hw_set("hw", modes=NO_4K, drain=False)
        assert info.value.errno == errno.EBUSY and "base" in info.value.message
        assert engine(dm).header == header
        change = await dm.hw_set("hw", modes=[*UFS, "SM4-XTS:4096"], drain=False)
        assert change["change"] == "growth"
        assert "SM4-XTS" in (modes_of(base) or {})


async def test_no_drain_shrinks_hardware_with_no_live_device_above(tmp_path: Path):
    async with image_manager(tmp_path, {"hw": (2 * MiB, "ufs")}) as dm:
        change = await dm.hw_set("hw", modes=NO_4K, drain=False)
        assert change["change"] == "shrink" and change["suspended"] == []


async def test_kind_and_profile_rules_are_enforced(tmp_path: Path):
    async with image_manager(
        tmp_path, {"hw": (MiB, "ufs"), "d": (MiB, "direct"), "n": (MiB, "none")}
    ) as dm:
        cases = [
            ("d", {"keyslots": 4}, errno.EINVAL),  # a direct engine has no keyslots
            ("n", {"modes": WITH_4K}, errno.EOPNOTSUPP),  # `none` never gains an engine
            ("hw", {"modes": ["AES-256-XTS:3000"]}, errno.EINVAL),
            ("hw", {"key_types": ["green"]}, errno.EINVAL),
            ("hw", {"max_dun_bytes": 0}, errno.EINVAL),
            ("nope", {"keyslots": 1}, errno.ENXIO),
        ]
        for name, args, code in cases:
            with pytest.raises(FuseblkError) as info:
                await dm.hw_set(name, **args)
            assert info.value.errno == code, (name, args)
        change = await dm.hw_set("d", modes=WITH_4K, max_dun_bytes=16)
        assert change["change"] == "shrink" and engine(dm, "d").hardware.caps.max_dun_bytes == 16
        change = await dm.hw_set("hw", key_types=["raw", "hw_wrapped"])
        assert change["change"] == "growth"
        assert (await dm.hw_set("hw", key_types=["raw", "hw_wrapped"]))["change"] == "none"


# -- suspend ordering ---------------------------------------------------------------------------


async def test_shrink_lets_io_in_flight_complete_first_and_holds_new_io_until_resume(
    tmp_path: Path,
):
    async with image_manager(tmp_path, {"hw": (2 * MiB, "ufs")}) as dm:
        base, secure = await stack(dm)
        hw = engine(dm)
        hw.faults.slow_program(100)  # the first write waits in keyslot programming
        log: list[str] = []
        real_set = hw.set_hardware

        async def set_hardware(new: HardwareProfile) -> list[BlkCryptoKey]:
            log.append("swap")
            for md in (base, secure):
                assert md.suspended and md._gate.inflight == 0
            return await real_set(new)

        hw.set_hardware = set_hardware
        for md in (base, secure):
            real_refresh = md.refresh_crypto_profile

            def refresh(md: MappedDevice = md, real: Callable[[], bool] = real_refresh) -> bool:
                assert md.suspended and md._gate.inflight == 0, md.name
                log.append(f"refresh {md.name}")
                return real()

            md.refresh_crypto_profile = refresh

        async def writer(offset: int, seed: int, label: str) -> None:
            await write(secure, offset, pattern(4096, seed))
            log.append(label)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer, 0, 1, "in-flight write done")
            await trio.testing.wait_all_tasks_blocked()

            async def change() -> None:
                await dm.hw_set("hw", modes=NO_4K)
                log.append("changed")

            nursery.start_soon(change)
            await trio.testing.wait_all_tasks_blocked()
            assert secure.suspended  # gate closed, waiting for the write in flight
            nursery.start_soon(writer, 4096, 2, "new write done")
        assert log == [
            "in-flight write done",
            "swap",
            "refresh base",
            "refresh secure",
            "changed",
            "new write done",
        ]
        assert secure.counters["waited_for_resume"] == 1
        assert base.counters["inline_bios"] == 1 and base.counters["fallback_bios"] == 1
        data = pattern(4096, 1) + pattern(4096, 2)
        assert await raw(dm, "hw", 0, 8192) == expected_ciphertext(data, 0)


async def test_a_device_the_user_suspended_stays_suspended_after_a_shrink(tmp_path: Path):
    async with image_manager(tmp_path, {"hw": (2 * MiB, "ufs")}) as dm:
        base, secure = await stack(dm)
        await dm.suspend("base")
        done = trio.Event()

        async def writer() -> None:
            await write(secure, 0, pattern(4096))
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)  # admitted by secure, parked at base's gate
            await trio.testing.wait_all_tasks_blocked()
            change = await dm.hw_set("hw", modes=NO_4K)
            assert change["suspended"] == ["secure"]
            assert base.suspended and not secure.suspended and not done.is_set()
            await dm.resume("base")
        assert done.is_set()
        # decided inline at base before the shrink, it falls back at the hardware's level
        assert base.counters["inline_bios"] == 1 and engine(dm).counters["fallback_bios"] == 1
        assert await read(secure, 0, 4096) == pattern(4096)
        assert await raw(dm, "hw", 0, 4096) == expected_ciphertext(pattern(4096), 0)


# -- persistence, reloads, events ---------------------------------------------------------------


async def test_change_is_recorded_in_the_header_and_survives_reattach(tmp_path: Path):
    async with image_manager(tmp_path, {"hw": (2 * MiB, "ufs")}) as dm:
        path = Path(engine(dm).path)
        await dm.hw_set("hw", modes=NO_4K, keyslots=8, max_dun_bytes=4)
        assert engine(dm).header.hardware == engine(dm).hardware
    again = open_backend(path)
    try:
        assert again.hardware.num_slots == 8 and again.hardware.caps.max_dun_bytes == 4
        assert again.hardware.caps.to_json()["modes"] == {"AES-256-XTS": [512]}
        assert len(again.header.slots) == 8
    finally:
        await again.close()
    dm = DeviceManager()
    try:
        dm.add_backend("hw", path)
        base = await dm.create("base", f"0 {SECTORS} linear hw 0")
        assert modes_of(base) == {"AES-256-XTS": [512]}
    finally:
        await dm.close()


async def test_reloading_a_lower_device_propagates_to_the_devices_above(tmp_path: Path):
    async with image_manager(tmp_path, {"hw": (2 * MiB, "ufs"), "legacy": (2 * MiB, "none")}) as dm:
        base = await dm.create("base", f"0 {SECTORS} linear legacy 0")
        secure = await dm.create("secure", SECURE)
        events: list[object] = []
        dm.listeners.append(events.append)
        assert secure.crypto_profile is None
        await write(secure, 0, pattern(4096))
        assert base.counters["fallback_bios"] == 1

        await dm.load("base", f"0 {SECTORS} linear hw 0")
        await dm.resume("base")
        assert modes_of(base) is not None and modes_of(secure) == modes_of(base)
        assert CryptoProfileChanged("secure") in events
        await write(secure, 4096, pattern(4096, 1))
        assert base.counters["inline_bios"] == 1


async def test_hw_set_announces_the_backend_and_every_device_that_changed(tmp_path: Path):
    async with image_manager(tmp_path, {"hw": (2 * MiB, "ufs")}) as dm:
        await stack(dm)
        events: list[object] = []
        dm.listeners.append(events.append)
        await dm.hw_set("hw", modes=NO_4K)
        assert events == [
            CryptoProfileChanged("hw"),
            CryptoProfileChanged("base"),
            CryptoProfileChanged("secure"),
        ]
        assert engine(dm).counters["hw_changes"] == 1


# -- control verb and command line ------------------------------------------------------------------


def test_hw_set_request_takes_lists_of_modes_and_key_types() -> None:
    req = decode_request(
        encode_request(
            1,
            "hw_set",
            {"name": "hw", "modes": NO_4K, "keyslots": 4, "key_types": ["raw"], "drain": False},
        )
    )
    assert req.args["modes"] == NO_4K and req.args["drain"] is False
    with pytest.raises(RequestError) as info:
        decode_request(encode_request(1, "hw_set", {"name": "hw", "modes": "AES-256-XTS:512"}))
    assert info.value.err.errno == errno.EINVAL


def test_hw_set_text_names_the_change_and_the_devices_that_followed() -> None:
    lines = change_lines(
        {
            "name": "hw",
            "hardware": "keyslots 32 slots: AES-256-XTS:512 max_dun_bytes=8",
            "change": "shrink",
            "suspended": ["secure", "base"],
            "evicted": 1,
            "profiles": {"base": {"modes": {"AES-256-XTS": [512]}, "max_dun_bytes": 8}},
        }
    )
    assert lines == [
        "hw: keyslots 32 slots: AES-256-XTS:512 max_dun_bytes=8",
        "change: shrink",
        "drained: secure, base",
        "evicted keys: 1",
        "base: AES-256-XTS:512 max_dun_bytes=8",
    ]


@pytest.mark.parametrize(
    "argv",
    [
        ["hw", "set", "inline", "--keyslots", "0"],
        ["hw", "set", "inline", "--keyslots", "256"],
        ["hw", "set", "inline", "--max-dun-bytes", "33"],
        ["hw", "set"],
    ],
)
def test_bad_hw_set_command_lines_are_usage_errors(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_exit_status(argv) == 2
    assert capsys.readouterr().err.strip()


# -- hardware-wrapped keys ----------------------------------------------------------------------


async def test_losing_wrapped_keys_fails_their_io_with_eopnotsupp_until_they_come_back(
    tmp_path: Path,
):
    """The fallback takes raw keys only: a wrapped key's contexts the hardware lost are refused,
    not served in software, and nothing written before is touched."""
    async with image_manager(tmp_path, {"hw": (2 * MiB, "ufs-wrapped")}) as dm:
        hw = engine(dm)
        eph = hw.prepare_key(hw.import_key(bytes(range(32))))
        await dm.create("base", f"0 {SECTORS} linear hw 0")
        vault = await dm.create(
            "vault",
            f"0 {SECTORS} default-key aes-xts-plain64 {eph.hex()} 0 base 0 "
            "3 wrappedkey_v0 sector_size:4096 iv_large_sectors\n",
        )
        await write(vault, 0, pattern(8192, 1))

        change = await dm.hw_set("hw", key_types=["raw"])
        assert change["change"] == "shrink" and change["evicted"] == 1
        with pytest.raises(FuseblkError) as lost:
            await write(vault, 8192, pattern(8192, 2))
        assert lost.value.errno == errno.EOPNOTSUPP
        assert vault.counters["errors"] >= 1

        assert (await dm.hw_set("hw", key_types=["raw", "hw_wrapped"]))["change"] == "growth"
        await write(vault, 8192, pattern(8192, 2))
        assert await read(vault, 0, 16384) == pattern(8192, 1) + pattern(8192, 2)
