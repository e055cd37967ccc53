"""``/sys/block/<dev>/queue/crypto/``: the kernel's names, formats and visibility, file by file,
for every hardware profile in backends/, for stacked devices, and through the control verb."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from control_helpers import DaemonThread, cli_run
from device_helpers import MemDevice, MemKeyslotHardware

from fuseblk.blkcrypto.crypto_sysfs import crypto_sysfs, grep_lines
from fuseblk.blkcrypto.keyslot_manager import CryptoProfile
from fuseblk.capabilities import CryptoCapabilities, dus_mask
from fuseblk.dm.manager import DeviceManager
from fuseblk.hw.factory import create_backend
from fuseblk.hw.profiles import load_profile
from fuseblk.key import KeyType
from fuseblk.modes import CryptoMode

BACKENDS = Path(__file__).parents[1] / "backends"
PROFILES = sorted(p.stem for p in BACKENDS.glob("*.toml"))
KERNEL_MODE_NAMES = {"AES-256-XTS", "AES-128-CBC-ESSIV", "Adiantum", "SM4-XTS"}
SIZE = 1 << 20

BOTH_KEY_TYPES = """\
name = "both"
description = "raw and hardware-wrapped keys"
kind = "keyslots"
keyslots = 8
max_dun_bytes = 8
key_types = ["raw", "hw_wrapped"]

[modes]
"AES-256-XTS" = [4096]
"""


def expected_from_toml(path: Path) -> dict[str, str] | None:
    """The files the kernel would show for a profile file, worked out from its TOML alone."""
    data = tomllib.loads(path.read_text())
    if data["kind"] == "none":
        return None
    files = {
        "max_dun_bits": f"{8 * data['max_dun_bytes']}\n",
        "num_keyslots": f"{data.get('keyslots', 0)}\n",
    }
    key_types = data.get("key_types", ["raw"])
    if "raw" in key_types:
        files["raw_keys"] = "supported\n"
    if "hw_wrapped" in key_types:
        files["hw_wrapped_keys"] = "supported\n"
    for name, sizes in data["modes"].items():
        mask = 0
        for size in sizes:
            mask |= size  # bit log2(size) set
        files[f"modes/{name}"] = f"0x{mask:x}\n"
    return files


def profile_of(caps: CryptoCapabilities, slots: int = 0) -> CryptoProfile:
    return CryptoProfile(caps, slots, MemKeyslotHardware(slots) if slots else None)


# ---- rendering a profile ---------------------------------------------------------------------------


def test_no_profile_has_no_crypto_directory() -> None:
    assert crypto_sysfs(None) is None
    assert grep_lines("legacy", None) == []


def test_ufs_shows_the_kernels_files_and_formats() -> None:
    view = crypto_sysfs(create_ufs_profile())
    assert view is not None
    assert view.dirs == ("modes",)
    assert view.files == {
        "max_dun_bits": "64\n",
        "num_keyslots": "32\n",
        "raw_keys": "supported\n",
        "modes/AES-256-XTS": "0x1e00\n",  # 512, 1024, 2048, 4096
        "modes/AES-128-CBC-ESSIV": "0x1000\n",  # 4096
    }


def create_ufs_profile() -> CryptoProfile:
    hw = load_profile("ufs")
    return CryptoProfile(hw.caps, hw.num_slots, MemKeyslotHardware(hw.num_slots))


def test_modes_without_data_unit_sizes_have_no_file_but_the_modes_directory_stays() -> None:
    caps = CryptoCapabilities({CryptoMode.ADIANTUM: dus_mask(4096)}, 32, KeyType.HW_WRAPPED)
    view = crypto_sysfs(profile_of(caps, 2))
    assert view is not None and view.dirs == ("modes",)
    assert view.files == {
        "hw_wrapped_keys": "supported\n",
        "max_dun_bits": "256\n",
        "num_keyslots": "2\n",
        "modes/Adiantum": "0x1000\n",
    }


def test_mode_files_use_the_kernels_names() -> None:
    everything = CryptoCapabilities.everything()
    view = crypto_sysfs(profile_of(everything))
    assert view is not None
    assert {p.split("/")[1] for p in view.files if p.startswith("modes/")} == KERNEL_MODE_NAMES
    assert view.files["raw_keys"] == view.files["hw_wrapped_keys"] == "supported\n"
    assert view.files["num_keyslots"] == "0\n"


def test_grep_lines_look_like_grep_over_sysfs() -> None:
    view = crypto_sysfs(create_ufs_profile())
    assert view is not None
    assert grep_lines("inline", view.files) == [
        "/sys/block/inline/queue/crypto/max_dun_bits:64",
        "/sys/block/inline/queue/crypto/modes/AES-128-CBC-ESSIV:0x1000",
        "/sys/block/inline/queue/crypto/modes/AES-256-XTS:0x1e00",
        "/sys/block/inline/queue/crypto/num_keyslots:32",
        "/sys/block/inline/queue/crypto/raw_keys:supported",
    ]


# ---- every profile in backends/, and stacks, through the manager -----------------------------------


@pytest.mark.parametrize("profile", PROFILES)
async def test_each_backend_profile_shows_what_its_toml_says(
    manager: DeviceManager, tmp_path: Path, profile: str
) -> None:
    backend = create_backend(tmp_path / "d.img", SIZE, load_profile(profile), name="disk")
    manager.add_device(backend)
    view = crypto_sysfs(manager.block_device("disk").crypto_profile)
    expected = expected_from_toml(BACKENDS / f"{profile}.toml")
    assert (None if view is None else view.files) == expected


async def test_a_mapped_device_shows_the_intersection_with_no_keyslots(
    manager: DeviceManager, tmp_path: Path
) -> None:
    for name, profile in (("ufs", "ufs"), ("emmc", "emmc"), ("direct", "direct")):
        manager.add_device(
            create_backend(tmp_path / f"{name}.img", SIZE, load_profile(profile), name=name)
        )
    await manager.create(
        "stack", "0 1024 linear ufs 0\n1024 1024 linear emmc 0\n2048 1024 linear direct 0"
    )
    view = crypto_sysfs(manager.block_device("stack").crypto_profile)
    assert view is not None
    assert view.files == {
        "max_dun_bits": "32\n",  # eMMC's 4 bytes
        "num_keyslots": "0\n",
        "raw_keys": "supported\n",
        "modes/AES-256-XTS": "0x1200\n",  # 512 and 4096: what all three share
    }
    await manager.create("upper", "0 3072 linear stack 0")
    upper = crypto_sysfs(manager.block_device("upper").crypto_profile)
    assert upper is not None and upper.files == view.files


async def test_key_types_intersect_in_a_stack(manager: DeviceManager, tmp_path: Path) -> None:
    both = tmp_path / "both.toml"
    both.write_text(BOTH_KEY_TYPES)
    manager.add_device(create_backend(tmp_path / "a.img", SIZE, load_profile(str(both)), name="a"))
    manager.add_device(create_backend(tmp_path / "b.img", SIZE, load_profile(str(both)), name="b"))
    manager.add_device(create_backend(tmp_path / "u.img", SIZE, load_profile("ufs"), name="u"))
    await manager.create("wrapped", "0 1024 linear a 0\n1024 1024 linear b 0")
    view = crypto_sysfs(manager.block_device("wrapped").crypto_profile)
    assert view is not None
    assert view.files["hw_wrapped_keys"] == view.files["raw_keys"] == "supported\n"
    await manager.create("mixed", "0 1024 linear a 0\n1024 1024 linear u 0")
    mixed = crypto_sysfs(manager.block_device("mixed").crypto_profile)
    assert mixed is not None
    assert "hw_wrapped_keys" not in mixed.files
    assert mixed.files["raw_keys"] == "supported\n"


async def test_a_table_that_consumes_or_lacks_crypto_has_no_crypto_directory(
    manager: DeviceManager, tmp_path: Path
) -> None:
    manager.add_device(create_backend(tmp_path / "u.img", SIZE, load_profile("ufs"), name="u"))
    manager.add_device(create_backend(tmp_path / "n.img", SIZE, load_profile("none"), name="n"))
    await manager.create("mixed", "0 1024 linear u 0\n1024 1024 linear n 0")
    key = bytes(64).hex()
    await manager.create("vault", f"0 1024 inlinecrypt aes-xts-plain64 {key} 0 u 0")
    await manager.create("zeroes", "0 1024 zero")
    for name in ("mixed", "vault", "n"):
        assert crypto_sysfs(manager.block_device(name).crypto_profile) is None
    zero = crypto_sysfs(manager.block_device("zeroes").crypto_profile)
    assert zero is None  # zero does not pass crypto: nothing to offer


async def test_the_view_follows_a_reload_and_resume(manager: DeviceManager, tmp_path: Path) -> None:
    manager.add_device(create_backend(tmp_path / "e.img", SIZE, load_profile("emmc"), name="e"))
    manager.add_device(create_backend(tmp_path / "u.img", SIZE, load_profile("ufs"), name="u"))
    await manager.create("dev", "0 1024 linear e 0")
    before = crypto_sysfs(manager.block_device("dev").crypto_profile)
    assert before is not None and before.files["max_dun_bits"] == "32\n"
    await manager.load("dev", "0 1024 linear u 0")
    assert crypto_sysfs(manager.block_device("dev").crypto_profile) == before  # not live yet
    await manager.resume("dev")
    after = crypto_sysfs(manager.block_device("dev").crypto_profile)
    assert after is not None and after.files["max_dun_bits"] == "64\n"
    assert after.files["modes/AES-128-CBC-ESSIV"] == "0x1000\n"


# ---- the control verb and the CLI ------------------------------------------------------------------


def dm(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    return cli_run(capsys, "dm", *argv)


def test_cli_prints_grep_lines_for_a_backend(
    daemon: DaemonThread, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = dm(capsys, "sysfs", "inline")
    assert status == 0
    assert out.splitlines() == [
        "/sys/block/inline/queue/crypto/max_dun_bits:64",
        "/sys/block/inline/queue/crypto/modes/AES-128-CBC-ESSIV:0x1000",
        "/sys/block/inline/queue/crypto/modes/AES-256-XTS:0x1e00",
        "/sys/block/inline/queue/crypto/num_keyslots:32",
        "/sys/block/inline/queue/crypto/raw_keys:supported",
    ]


def test_cli_lists_every_device_and_says_which_have_no_crypto(
    daemon: DaemonThread, capsys: pytest.CaptureFixture[str]
) -> None:
    assert dm(capsys, "create", "lin", "--table", "0 64 linear inline 0")[0] == 0
    status, out, err = dm(capsys, "sysfs")
    assert status == 0
    assert "/sys/block/lin/queue/crypto/num_keyslots:0" in out.splitlines()
    assert not any(line.startswith("/sys/block/legacy/") for line in out.splitlines())
    assert "legacy: no queue/crypto/" in err
    status, out, _ = dm(capsys, "sysfs", "--json")
    entries = {e["name"]: e["crypto"] for e in json.loads(out)}
    assert sorted(entries) == ["inline", "legacy", "lin"]
    assert entries["legacy"] is None
    assert entries["lin"]["modes/AES-256-XTS"] == "0x1e00\n"


def test_cli_unknown_device_fails_with_enxio(
    daemon: DaemonThread, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = dm(capsys, "sysfs", "nothere")
    assert status == 1 and "nothere" in err


def test_mem_device_profiles_render_too() -> None:
    """Any BlockDevice's profile renders: the view needs nothing but the profile."""
    dev = MemDevice(caps=CryptoCapabilities({CryptoMode.SM4_XTS: dus_mask(512)}, 4, KeyType.RAW))
    view = crypto_sysfs(dev.crypto_profile)
    assert view is not None and view.files["modes/SM4-XTS"] == "0x200\n"
