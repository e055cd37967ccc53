"""The inline hardware under a live stack shrinks, grows and resets while fio verifies through it.

``secure`` is default-key over ``base``, whose first 768 MiB are inline.img (UFS: AES-256-XTS with
4096-byte data units, secure's key). This test stacks a second default-key device, ``stacked``,
over a linear ``mid`` over ``base`` at 600 MiB: three levels above the hardware. Taking 4096-byte
data units away (``hw set inline --mode AES-256-XTS:512``) drains every device above, and their
keys go to the software fallback; giving them back moves them inline again. Neither fio nor the
image can tell: fio verifies every block, and the image holds exactly the AES-XTS ciphertext of
what was written (the oracle: OpenSSL through ``cryptography``, and ``fuseblk crypt``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from harness import (
    BackgroundFio,
    FuseblkMount,
    MiB,
    fallback_counters,
    fio_bytes,
    fio_command,
    fuseblk,
    inline_counters,
    require_tools,
)
from test_dm_live_changes import dd_read, dd_write
from test_secure_ciphertext import cli_encrypt, stored, xts_reference

pytestmark = pytest.mark.integration

SECTORS_PER_MIB = MiB // 512
FIO_JOB = 2 * MiB  # 4 jobs each, on secure and on stacked
FIO_SECONDS = 8
STACKED_AT = 600 * MiB  # mid's start in base (on inline.img), away from secure's fio region
STACKED_SIZE = 16 * MiB
SHRUNK = ["--mode", "AES-256-XTS:512"]  # secure's and stacked's 4096-byte data units are gone
UFS = ["--mode", "AES-256-XTS:512,1024,2048,4096", "--mode", "AES-128-CBC-ESSIV:4096"]


@pytest.fixture
def m(default_setup: FuseblkMount) -> FuseblkMount:
    require_tools("fio", "dd")
    return default_setup


def hw_set(m: FuseblkMount, *args: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(m.cli("hw", "set", "inline", *args, "--json").stdout)
    return result


def hardware(m: FuseblkMount) -> str:
    return str(json.loads(m.cli("hw", "status", "inline", "--json").stdout)["hardware"])


def make_stack(m: FuseblkMount) -> bytes:
    """mid = linear over base at STACKED_AT; stacked = default-key over mid; its key."""
    key = os.urandom(64)
    sectors = STACKED_SIZE // 512
    m.dm("create", "mid", "--table", f"0 {sectors} linear base {STACKED_AT // 512}")
    table = (
        f"0 {sectors} default-key aes-xts-plain64 {key.hex()} 0 mid 0 2 sector_size:4096 "
        "iv_large_sectors"
    )
    m.dm("create", "stacked", "--table", table)
    return key


def write_and_count(m: FuseblkMount, data_file: Path, offset: int) -> tuple[int, int]:
    """Bios the hardware and the fallback served for one write to secure."""
    before = m.stats()
    dd_write(m.dev("secure"), data_file, offset)
    after = m.stats()
    return (
        inline_counters(after)[0] - inline_counters(before)[0],
        fallback_counters(after)[0] - fallback_counters(before)[0],
    )


def test_fio_verifies_across_shrink_growth_and_reset_and_the_image_matches_the_oracle(
    m: FuseblkMount, tmp_path: Path
) -> None:
    stacked_key = make_stack(m)
    secure_fio = fio_command(m.dev("secure"), rw="randwrite", size=FIO_JOB, runtime=FIO_SECONDS)
    stacked_fio = fio_command(m.dev("stacked"), rw="randwrite", size=FIO_JOB, runtime=FIO_SECONDS)
    changes = {"shrink": 0, "growth": 0, "reset": 0}
    with BackgroundFio(secure_fio) as on_secure, BackgroundFio(stacked_fio) as on_stacked:
        deadline = time.monotonic() + FIO_SECONDS + 30
        while on_secure.running() or on_stacked.running():
            assert time.monotonic() < deadline, "fio did not finish"
            change = hw_set(m, *SHRUNK)
            assert change["change"] == "shrink"
            assert {"secure", "base", "mid", "stacked"} <= set(change["suspended"])
            changes["shrink"] += 1
            time.sleep(0.2)
            assert hw_set(m, *UFS)["change"] == "growth"
            changes["growth"] += 1
            time.sleep(0.2)
            m.cli("hw", "fault", "inline", "reset")
            changes["reset"] += 1
            time.sleep(0.1)
        for report in (on_secure.finish(), on_stacked.finish()):  # 0 verify errors
            assert fio_bytes(report, "write") > 0
    assert min(changes.values()) >= 2, changes

    # The counters prove the switch: inline, then fallback after the shrink, inline after growth.
    data_file = tmp_path / "one.bin"
    data_file.write_bytes(os.urandom(MiB))
    inline, fallback = write_and_count(m, data_file, 64 * MiB)
    assert inline > 0 and fallback == 0
    hw_set(m, *SHRUNK)
    inline, fallback = write_and_count(m, data_file, 65 * MiB)
    assert inline == 0 and fallback > 0
    hw_set(m, *UFS)
    inline, fallback = write_and_count(m, data_file, 66 * MiB)
    assert inline > 0 and fallback == 0

    # What the devices hold now, read back under shrunk hardware (the fallback decrypts).
    hw_set(m, *SHRUNK)
    secure_plain, _ = dd_read(m.dev("secure"), 8 * MiB)
    stacked_plain, _ = dd_read(m.dev("stacked"), 8 * MiB)
    one_plain, _ = dd_read(m.dev("secure"), MiB, offset=65 * MiB)
    assert one_plain == data_file.read_bytes()

    # The change is in the header: it outlives the daemon.
    m.restart()
    after_restart = hardware(m)
    assert "AES-256-XTS:512 max_dun_bytes=8" in after_restart and "4096" not in after_restart
    m.umount()

    image = m.image("inline.img")
    info = json.loads(fuseblk("image", "inspect", "--json", image).stdout)
    assert info["header"]["hardware"]["modes"] == {"AES-256-XTS": [512]}
    secure_disk = stored(image, 0, 8 * MiB)
    stacked_disk = stored(image, STACKED_AT, 8 * MiB)
    assert secure_disk == xts_reference(m.key_file.read_bytes(), secure_plain, first_dun=0)
    assert stacked_disk == xts_reference(stacked_key, stacked_plain, first_dun=0)
    assert cli_encrypt(m.key_file, secure_plain[:MiB]) == secure_disk[:MiB]


def test_no_drain_refuses_the_shrink_under_live_devices_and_the_image_keeps_its_hardware(
    m: FuseblkMount,
) -> None:
    before = hardware(m)
    proc = m.cli("hw", "set", "inline", *SHRUNK, "--no-drain", check=False)
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert "EBUSY" in err or "refused" in err
    assert err.count("\n") == 1
    assert hardware(m) == before
