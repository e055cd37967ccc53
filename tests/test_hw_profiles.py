"""Hardware profiles: the TOML files in backends/ and profiles built from flags."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from fuseblk.capabilities import dus_list
from fuseblk.errors import FuseblkError
from fuseblk.hw.profiles import (
    MAX_KEYSLOTS,
    HardwareKind,
    available_profiles,
    build_profile,
    load_profile,
    parse_profile,
    profile_dirs,
)
from fuseblk.key import KeyType
from fuseblk.modes import CryptoMode
from fuseblk.sizes import format_size, parse_size

SOURCE_BACKENDS = Path(__file__).resolve().parents[1] / "backends"


def test_profiles_are_found_in_the_source_tree_backends_folder() -> None:
    assert profile_dirs()[0] == SOURCE_BACKENDS
    found = available_profiles()
    for name in ("ufs", "emmc", "direct", "none", "tiny"):
        assert found[name] == SOURCE_BACKENDS / f"{name}.toml"


def test_every_shipped_profile_loads_and_keeps_its_kind_invariants() -> None:
    for name in available_profiles():
        profile = load_profile(name)
        assert profile.name == name
        if profile.kind is HardwareKind.KEYSLOTS:
            assert profile.num_slots >= 1 and not profile.caps.is_empty
        else:
            assert profile.num_slots == 0


def test_ufs_profile_has_many_slots_aes_xts_512_to_4096_and_a_64_bit_dun() -> None:
    ufs = load_profile("ufs")
    assert ufs.kind is HardwareKind.KEYSLOTS and ufs.num_slots == 32
    assert dus_list(ufs.caps.modes[CryptoMode.AES_256_XTS]) == [512, 1024, 2048, 4096]
    assert len(ufs.caps.modes) > 1
    assert ufs.caps.max_dun_bytes == 8 and ufs.caps.key_types == KeyType.RAW


def test_emmc_has_few_slots_and_a_32_bit_dun_like_cqhci() -> None:
    emmc = load_profile("emmc")
    assert emmc.num_slots == 4 and emmc.caps.max_dun_bytes == 4


def test_tiny_has_two_slots_direct_none_and_kinds() -> None:
    assert load_profile("tiny").num_slots == 2
    direct = load_profile("direct")
    assert direct.kind is HardwareKind.DIRECT and set(direct.caps.modes) == set(CryptoMode)
    none = load_profile("none")
    assert none.kind is HardwareKind.NONE and none.caps.is_empty


def test_a_profile_can_be_given_as_a_file_path(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(
        'kind = "keyslots"\nkeyslots = 3\nmax_dun_bytes = 8\n[modes]\n"adiantum" = [4096]\n'
    )
    profile = load_profile(str(path))
    assert profile.name == "mine" and profile.num_slots == 3
    assert profile.caps.modes == {CryptoMode.ADIANTUM: 4096}


@pytest.mark.parametrize(
    "text, complaint",
    [
        ('kind = "quantum"\n', "unknown hardware kind"),
        ('kind = "keyslots"\nkeyslots = 0\n[modes]\n"aes-256-xts" = [512]\n', "keyslot count"),
        ('kind = "direct"\nkeyslots = 4\n[modes]\n"aes-256-xts" = [512]\n', "no keyslots"),
        ('kind = "keyslots"\nkeyslots = 2\n', "at least one mode"),
        ('kind = "keyslots"\nkeyslots = 2\n[modes]\n"rot13" = [512]\n', "unknown crypto mode"),
        ('kind = "keyslots"\nkeyslots = 2\n[modes]\n"aes-256-xts" = [1000]\n', "power of two"),
        ('kind = "keyslots"\nkeyslots = 2\n[modes]\n"aes-256-xts" = [131072]\n', "16..65536"),
        ('kind = "keyslots"\nkeyslots = 256\n[modes]\n"aes-256-xts" = [512]\n', "1..255"),
        ('kind = "none"\nslots = 2\n', "unknown field"),
        ("kind = = \n", "not valid TOML"),
    ],
)
def test_a_bad_profile_file_is_einval_naming_the_file(
    tmp_path: Path, text: str, complaint: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(FuseblkError) as err:
        load_profile(str(path))
    assert err.value.errno == errno.EINVAL
    assert complaint in err.value.message and "bad.toml" in err.value.message


def test_unknown_profile_name_lists_the_known_ones() -> None:
    with pytest.raises(FuseblkError, match="unknown hardware profile 'floppy'.*ufs"):
        load_profile("floppy")


def test_flags_build_a_profile_from_scratch() -> None:
    profile = build_profile(
        keyslots=3, modes=["AES-256-XTS:512,4096", "adiantum:4096"], max_dun_bytes=8
    )
    assert profile.kind is HardwareKind.KEYSLOTS and profile.num_slots == 3
    assert profile.caps.modes == {CryptoMode.AES_256_XTS: 512 | 4096, CryptoMode.ADIANTUM: 4096}
    assert profile.caps.max_dun_bytes == 8


def test_flags_replace_parts_of_a_named_profile() -> None:
    ufs = load_profile("ufs")
    fewer = build_profile(ufs, keyslots=5)
    assert fewer.num_slots == 5 and fewer.caps == ufs.caps
    direct = build_profile(ufs, kind="direct")
    assert direct.kind is HardwareKind.DIRECT and direct.num_slots == 0 and direct.caps == ufs.caps
    assert build_profile(ufs, kind="none").caps.is_empty


def test_mode_flag_without_sizes_is_einval() -> None:
    with pytest.raises(FuseblkError, match="MODE:DUS"):
        build_profile(keyslots=2, modes=["aes-256-xts"])


@pytest.mark.parametrize(
    "text, value",
    [
        ("4096", 4096),
        ("64K", 64 << 10),
        ("64M", 64 << 20),
        ("1g", 1 << 30),
        ("2T", 2 << 40),
        ("8MiB", 8 << 20),
    ],
)
def test_sizes_accept_binary_suffixes(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "-1", "1.5G", "12Q", "M"])
def test_bad_sizes_are_einval(text: str) -> None:
    with pytest.raises(FuseblkError) as err:
        parse_size(text)
    assert err.value.errno == errno.EINVAL


def test_format_size_picks_the_largest_exact_unit() -> None:
    assert format_size(64 << 20) == "64M"
    assert format_size(1536 << 10) == "1536K"
    assert format_size(1000) == "1000"


def test_flags_that_contradict_the_kind_are_einval() -> None:
    with pytest.raises(FuseblkError, match="--keyslots applies to kind 'keyslots' only"):
        build_profile(load_profile("ufs"), kind="direct", keyslots=4)
    with pytest.raises(FuseblkError, match="kind 'none' has no inline encryption"):
        build_profile(kind="none", modes=["aes-256-xts:512"])


@pytest.mark.parametrize("dun", [0, -1, 33, 40, 300])
def test_max_dun_bytes_outside_1_to_32_is_einval(dun: int) -> None:
    # a DUN is at most BLK_CRYPTO_MAX_IV_SIZE (32) bytes; 0 would support no key at all
    with pytest.raises(FuseblkError, match="max_dun_bytes must be 1..32"):
        build_profile(load_profile("ufs"), max_dun_bytes=dun)
    with pytest.raises(FuseblkError, match="max_dun_bytes must be 1..32"):
        parse_profile({"kind": "direct", "max_dun_bytes": dun, "modes": {"AES-256-XTS": [4096]}})


@pytest.mark.parametrize("size", [8, 1 << 17, 1 << 31, 1 << 32, 1 << 40])
def test_data_unit_sizes_no_key_can_have_are_einval(size: int) -> None:
    with pytest.raises(FuseblkError) as err:
        build_profile(keyslots=2, modes=[f"AES-256-XTS:512,{size}"])
    assert err.value.errno == errno.EINVAL
    assert f"data unit size {size} is not in 16..65536" in err.value.message


def test_every_data_unit_size_a_key_can_have_fits_a_profile() -> None:
    profile = build_profile(keyslots=2, modes=["AES-256-XTS:16,65536"])
    assert dus_list(profile.caps.modes[CryptoMode.AES_256_XTS]) == [16, 65536]


@pytest.mark.parametrize("count", [1, MAX_KEYSLOTS])
def test_keyslot_counts_up_to_max_keyslots_are_accepted(count: int) -> None:
    assert MAX_KEYSLOTS == 255  # as documented: a byte in UFSHCI and CQHCI, a row each in headers
    assert build_profile(keyslots=count, modes=["AES-256-XTS:512"]).num_slots == count


@pytest.mark.parametrize("count", [0, -1, MAX_KEYSLOTS + 1, 1 << 40])
def test_keyslot_counts_beyond_the_bound_are_einval(count: int) -> None:
    with pytest.raises(FuseblkError, match=f"keyslot count must be 1..{MAX_KEYSLOTS}"):
        build_profile(keyslots=count, modes=["AES-256-XTS:512"])
