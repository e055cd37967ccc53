"""``MNT/.sys/block/<dev>/queue/crypto/`` on a real mount: sysfs's files, read-only, hidden from
the device listing, following table changes."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio
from fuse_helpers import eventually, needs_fuse, serve_in_thread
from test_crypto_sysfs import BACKENDS, PROFILES, expected_from_toml

from fuseblk.dm.manager import DeviceManager
from fuseblk.hw.factory import create_backend
from fuseblk.hw.profiles import load_profile

pytestmark = [needs_fuse, pytest.mark.integration]

SIZE = 1 << 20


def crypto_files(crypto: Path) -> dict[str, str]:
    """Every file under a crypto/ directory, read with plain file I/O: path -> contents."""
    return {
        str(p.relative_to(crypto)): p.read_text() for p in sorted(crypto.rglob("*")) if p.is_file()
    }


@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[tuple[Path, DeviceManager]]:
    """One backend per profile in backends/ (named after it), ``stack`` (linear over ufs and
    emmc) and ``plain`` (linear over none), mounted."""
    dm = DeviceManager()
    for profile in PROFILES:
        dm.add_device(
            create_backend(tmp_path / f"{profile}.img", SIZE, load_profile(profile), name=profile)
        )
    trio.run(dm.create, "stack", "0 1024 linear ufs 0\n1024 1024 linear emmc 0")
    trio.run(dm.create, "plain", "0 1024 linear none 0")
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    try:
        with serve_in_thread(dm, mountpoint):
            yield mountpoint, dm
    finally:
        trio.run(dm.close)


def test_every_device_and_backend_has_its_sysfs_files(
    mounted: tuple[Path, DeviceManager],
) -> None:
    mnt, _ = mounted
    block = mnt / ".sys" / "block"
    assert sorted(os.listdir(block)) == sorted([*PROFILES, "plain", "stack"])
    for profile in PROFILES:
        crypto = block / profile / "queue" / "crypto"
        expected = expected_from_toml(BACKENDS / f"{profile}.toml")
        if expected is None:
            assert os.listdir(block / profile / "queue") == []
            assert not crypto.exists()
        else:
            assert crypto_files(crypto) == expected
            assert (crypto / "modes").is_dir()
    assert crypto_files(block / "stack" / "queue" / "crypto") == {
        "max_dun_bits": "32\n",
        "modes/AES-256-XTS": "0x1200\n",
        "num_keyslots": "0\n",
        "raw_keys": "supported\n",
    }
    assert not (block / "plain" / "queue" / "crypto").exists()


def test_sysfs_files_are_0444_of_size_4096_in_0555_directories(
    mounted: tuple[Path, DeviceManager],
) -> None:
    crypto = mounted[0] / ".sys" / "block" / "ufs" / "queue" / "crypto"
    st = os.stat(crypto / "max_dun_bits")
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o444
    assert st.st_size == 4096
    for directory in (crypto, crypto / "modes", crypto.parents[3]):
        st = os.stat(directory)
        assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o555
    assert os.stat(crypto.parents[3] / "..").st_ino == os.stat(mounted[0]).st_ino


def test_grep_over_the_glob_works_as_over_sys(mounted: tuple[Path, DeviceManager]) -> None:
    mnt, _ = mounted
    result = subprocess.run(
        ["sh", "-c", f"grep . {mnt}/.sys/block/*/queue/crypto/*"],
        capture_output=True,
        text=True,
        check=False,
    )
    lines = result.stdout.splitlines()
    assert f"{mnt}/.sys/block/ufs/queue/crypto/max_dun_bits:64" in lines
    assert f"{mnt}/.sys/block/stack/queue/crypto/num_keyslots:0" in lines
    assert f"{mnt}/.sys/block/ufs/queue/crypto/raw_keys:supported" in lines
    assert "Is a directory" in result.stderr  # grep on modes/, as on sysfs
    ls = subprocess.run(
        ["ls", f"{mnt}/.sys/block/ufs/queue/crypto/modes"], capture_output=True, text=True
    )
    assert ls.stdout.split() == ["AES-128-CBC-ESSIV", "AES-256-XTS"]


def test_sys_is_not_listed_as_a_device(mounted: tuple[Path, DeviceManager]) -> None:
    mnt, _ = mounted
    assert sorted(os.listdir(mnt)) == ["plain", "stack"]
    assert (mnt / ".sys").is_dir()


@pytest.mark.parametrize(
    "attempt",
    [
        lambda c: os.open(c / "max_dun_bits", os.O_WRONLY),
        lambda c: os.open(c / "max_dun_bits", os.O_RDWR),
        lambda c: os.open(c / "new_file", os.O_WRONLY | os.O_CREAT, 0o644),
        lambda c: os.mkdir(c / "newdir"),
        lambda c: os.unlink(c / "max_dun_bits"),
        lambda c: os.rename(c / "max_dun_bits", c / "other"),
        lambda c: os.chmod(c / "max_dun_bits", 0o666),
    ],
)
def test_writes_and_creates_fail_with_eacces(
    mounted: tuple[Path, DeviceManager], attempt: Callable[[Path], object]
) -> None:
    crypto = mounted[0] / ".sys" / "block" / "ufs" / "queue" / "crypto"
    with pytest.raises(OSError) as info:
        attempt(crypto)
    assert info.value.errno == errno.EACCES
    assert (crypto / "max_dun_bits").read_text() == "64\n"


def test_the_view_follows_table_changes(mounted: tuple[Path, DeviceManager]) -> None:
    mnt, dm = mounted
    block = mnt / ".sys" / "block"
    assert not (block / "later").exists()
    # the server runs in its own thread and trio loop; the manager is changed from here
    # only while no request touches it, which these plain calls guarantee
    trio.run(dm.create, "later", "0 1024 linear emmc 0")
    crypto = block / "later" / "queue" / "crypto"
    assert (crypto / "max_dun_bits").read_text() == "32\n"
    trio.run(dm.load, "later", "0 1024 linear ufs 0")
    trio.run(dm.resume, "later")
    assert (crypto / "max_dun_bits").read_text() == "64\n"
    assert (crypto / "modes" / "AES-128-CBC-ESSIV").read_text() == "0x1000\n"
    assert "later" in os.listdir(block)


def test_a_device_named_sys_wins_over_the_tree(mounted: tuple[Path, DeviceManager]) -> None:
    mnt, dm = mounted
    trio.run(dm.create, ".sys", "0 8 zero")
    assert os.stat(mnt / ".sys").st_size == 4096
    assert stat.S_ISREG(os.stat(mnt / ".sys").st_mode)
    trio.run(dm.remove, ".sys")
    eventually(lambda: (mnt / ".sys" / "block" / "ufs").is_dir())  # the kernel forgets the file
