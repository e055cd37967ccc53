"""As a user sees them: an ``inlinecrypt`` device made with the CLI writes AES-256-XTS at its
DUNs, and ``MNT/.sys`` answers sysfs's questions the way ``fuseblk dm sysfs`` does."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from harness import FuseblkMount, MiB, run
from test_secure_ciphertext import stored, xts_reference

pytestmark = pytest.mark.integration

KEY = bytes(range(128, 192))
VAULT_START = 1024 * MiB - 64 * MiB  # the end of inline.img, past base's use of it (768 MiB)
SIZE = 4 * MiB


def vault_table() -> str:
    sectors, start = 32 * MiB // 512, VAULT_START // 512
    iv_offset = 8 * 1000  # sectors: DUN of the first data unit is 1000
    return (
        f"0 {sectors} inlinecrypt aes-xts-plain64 {KEY.hex()} {iv_offset} inline {start} "
        "3 keytype:raw sector_size:4096 iv_large_sectors"
    )


def test_inlinecrypt_made_with_the_cli_writes_xts_at_its_duns(
    default_setup: FuseblkMount, tmp_path: Path
) -> None:
    m = default_setup
    m.dm("create", "vault", "--table", vault_table())
    table = m.dm("table", "vault").stdout.decode()
    assert KEY.hex() not in table and "keytype:raw" in table
    plaintext = os.urandom(SIZE)
    src = tmp_path / "plain.bin"
    src.write_bytes(plaintext)
    run(["dd", f"if={src}", f"of={m.dev('vault')}", "bs=1M", "oflag=direct"])
    back = tmp_path / "back.bin"
    run(["dd", f"if={m.dev('vault')}", f"of={back}", "bs=1M", f"count={SIZE // MiB}"])
    assert back.read_bytes() == plaintext
    m.dm("remove", "vault")
    m.umount()
    on_disk = stored(m.image("inline.img"), VAULT_START, SIZE)
    assert on_disk == xts_reference(KEY, plaintext, first_dun=1000)


def test_sys_tree_matches_the_cli_and_hides_from_the_listing(
    default_setup: FuseblkMount,
) -> None:
    m = default_setup
    assert ".sys" not in os.listdir(m.mountpoint)
    m.dm("create", "lin", "--table", "0 2048 linear inline 0")
    via_cli = m.dm("sysfs").stdout.decode().splitlines()
    grep = run(["grep", "-r", ".", f"{m.mountpoint}/.sys/block"]).stdout.decode()
    via_mount = sorted(line.replace(f"{m.mountpoint}/.sys", "/sys") for line in grep.splitlines())
    assert via_mount == sorted(via_cli)
    assert "/sys/block/inline/queue/crypto/num_keyslots:32" in via_cli
    assert "/sys/block/lin/queue/crypto/num_keyslots:0" in via_cli
    assert "/sys/block/lin/queue/crypto/modes/AES-256-XTS:0x1e00" in via_cli
    assert not any("/sys/block/legacy/" in line for line in via_cli)
    assert not any("/sys/block/base/" in line for line in via_cli)  # inline + legacy: nothing
