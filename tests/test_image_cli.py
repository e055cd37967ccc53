"""``fuseblk image create|inspect|check`` end to end, each run as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from fuseblk.bio import Bio
from fuseblk.crypt_context import BioCryptContext
from fuseblk.hw.factory import create_backend, open_backend, open_storage
from fuseblk.hw.image_format import (
    BACKUP_OFFSET,
    DATA_OFFSET,
    HEADER_SIZE,
    read_headers,
    write_copy,
)
from fuseblk.hw.profiles import load_profile
from fuseblk.key import BlkCryptoKey

MiB = 1 << 20


def fuseblk(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fuseblk", "image", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def inspect(path: Path) -> dict:  # type: ignore[type-arg]
    result = fuseblk("inspect", path, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def damage(path: Path, offset: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset + 200)
        f.write(b"\x00\xff\x00\xff")


def test_create_with_a_named_profile_makes_a_sparse_image(tmp_path: Path) -> None:
    path = tmp_path / "ufs.img"
    result = fuseblk("create", path, "--size", "64M", "--profile", "ufs", "--label", "phone")
    assert result.returncode == 0, result.stderr
    assert path.stat().st_size == DATA_OFFSET + 64 * MiB
    assert path.stat().st_blocks * 512 < MiB
    info = inspect(path)
    header = info["header"]
    assert header["label"] == "phone" and header["data_size"] == 64 * MiB
    assert header["data_offset"] == DATA_OFFSET and header["clean_shutdown"] is True
    assert header["hardware"]["kind"] == "keyslots" and header["hardware"]["keyslots"] == 32
    assert header["hardware"]["modes"]["AES-256-XTS"] == [512, 1024, 2048, 4096]
    assert [c["valid"] for c in info["copies"]] == [True, True] and info["problems"] == []
    assert info["in_use"] is False


def test_create_from_flags_and_from_a_profile_file(tmp_path: Path) -> None:
    path = tmp_path / "flags.img"
    result = fuseblk(
        "create", path, "--size", "1G", "--keyslots", "3",
        "--mode", "AES-256-XTS:512,4096", "--mode", "AES-128-CBC-ESSIV:4096", "--max-dun-bytes", "8",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    hw = inspect(path)["header"]["hardware"]
    assert hw["keyslots"] == 3 and hw["max_dun_bytes"] == 8
    assert hw["modes"] == {"AES-256-XTS": [512, 4096], "AES-128-CBC-ESSIV": [4096]}

    profile = tmp_path / "odd.toml"
    profile.write_text('kind = "direct"\nmax_dun_bytes = 16\n[modes]\n"SM4-XTS" = [4096]\n')
    path2 = tmp_path / "file.img"
    assert fuseblk("create", path2, "--size", "8M", "--profile", profile).returncode == 0
    assert inspect(path2)["header"]["hardware"]["kind"] == "direct"


def test_flags_replace_parts_of_a_profile(tmp_path: Path) -> None:
    path = tmp_path / "few.img"
    assert (
        fuseblk("create", path, "--size", "8M", "--profile", "ufs", "--keyslots", "6").returncode
        == 0
    )
    hw = inspect(path)["header"]["hardware"]
    assert hw["keyslots"] == 6 and hw["max_dun_bytes"] == 8


def test_create_refuses_an_existing_file_without_force(tmp_path: Path) -> None:
    path = tmp_path / "x.img"
    path.write_bytes(b"precious")
    result = fuseblk("create", path, "--size", "8M", "--profile", "tiny")
    assert result.returncode == 1 and "already exists (use --force to overwrite)" in result.stderr
    assert path.read_bytes() == b"precious"
    assert fuseblk("create", path, "--size", "8M", "--profile", "tiny", "--force").returncode == 0
    assert inspect(path)["header"]["hardware"]["keyslots"] == 2


@pytest.mark.parametrize(
    "args, complaint",
    [
        (["--size", "8M"], "--profile"),
        (["--size", "eight", "--profile", "tiny"], "invalid size"),
        (["--size", "1000", "--profile", "tiny"], "multiple of 512"),
        (["--size", "8M", "--profile", "floppy"], "unknown hardware profile"),
        (["--size", "8M", "--keyslots", "2", "--mode", "rot13:512"], "unknown crypto mode"),
        (["--size", "１６M", "--profile", "tiny"], "invalid size '１６M'"),
        (["--size", "8M", "--keyslots", "2", "--mode", "AES-256-XTS:４０９６"], "ASCII digits"),
        (["--size", "8M", "--keyslots", "２", "--mode", "AES-256-XTS:4096"], "--keyslots"),
        (["--size", "8M", "--profile", "tiny", "--max-dun-bytes", "８"], "--max-dun-bytes"),
        (["--size", str(1 << 63), "--profile", "tiny"], "larger than the largest file offset"),
        (["--size", str((1 << 63) - 1), "--profile", "tiny"], "an image holds at most"),
        (["--size", str((1 << 63) - 1024), "--profile", "tiny"], "an image holds at most"),
        (
            ["--size", "8M", "--keyslots", "2", "--mode", "AES-256-XTS:4294967296"],
            "data unit size 4294967296 is not in 16..65536",
        ),
        (["--size", "8M", "--keyslots", "256", "--mode", "AES-256-XTS:512"], "1..255"),
    ],
)
def test_bad_create_arguments_exit_2_with_a_reason(
    tmp_path: Path, args: list[str], complaint: str
) -> None:
    result = fuseblk("create", tmp_path / "bad.img", *args)
    assert result.returncode == 2 and complaint in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert not (tmp_path / "bad.img").exists()


def test_a_profile_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    profile = tmp_path / "bad.toml"
    profile.write_bytes(b'kind = "none\xff"\n')
    result = fuseblk("create", tmp_path / "x.img", "--size", "8M", "--profile", profile)
    assert result.returncode == 2
    assert result.stderr == (
        f"fuseblk image: cannot read hardware profile {profile}: "
        "not UTF-8 text (byte 0xff at offset 12)\n"
    )


def test_a_fifo_as_profile_file_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    result = fuseblk("create", tmp_path / "x.img", "--size", "8M", "--profile", fifo)
    assert result.returncode == 2
    assert result.stderr == (
        f"fuseblk image: cannot read hardware profile {fifo}: is a FIFO, not a regular file\n"
    )


def test_inspect_shows_slots_with_key_identifiers_never_keys(tmp_path: Path) -> None:
    path = tmp_path / "used.img"
    key = BlkCryptoKey.create("AES-256-XTS", os.urandom(64), 4096, 8)

    async def use() -> None:
        backend = create_backend(path, 8 * MiB, load_profile("tiny"))
        await backend.submit(Bio.write(0, bytes(4096), BioCryptContext.at(key, 0)))
        await backend.close()

    trio.run(use)
    text = fuseblk("inspect", path)
    assert text.returncode == 0
    assert "0: programmed" in text.stdout and f"Key identifier: {key.key_id}" in text.stdout
    assert "1: empty" in text.stdout
    assert key.raw.hex() not in text.stdout
    slots = inspect(path)["header"]["keyslots"]
    assert slots[0]["key_id"] == key.key_id and slots[0]["data_unit_size"] == 4096


def test_check_passes_a_healthy_image(tmp_path: Path) -> None:
    path = tmp_path / "ok.img"
    fuseblk("create", path, "--size", "8M", "--profile", "emmc")
    result = fuseblk("check", path)
    assert result.returncode == 0 and result.stdout.strip().endswith(": ok")


@pytest.mark.parametrize("offset, name", [(0, "primary"), (BACKUP_OFFSET, "backup")])
def test_check_finds_a_damaged_copy_and_repair_rewrites_it(
    tmp_path: Path, offset: int, name: str
) -> None:
    path = tmp_path / "hurt.img"
    fuseblk("create", path, "--size", "8M", "--profile", "tiny", "--label", "keep me")
    damage(path, offset)
    info = inspect(path)
    assert info["problems"] == [f"{name} header copy is damaged: bad checksum"]
    assert info["header"]["label"] == "keep me"

    result = fuseblk("check", path)
    assert result.returncode == 1 and "damaged" in result.stdout

    result = fuseblk("check", path, "--repair")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"rewrote the {name} header" in result.stdout
    assert fuseblk("check", path).returncode == 0
    with path.open("rb") as f:
        primary = f.read(HEADER_SIZE)
        f.seek(BACKUP_OFFSET)
        assert f.read(HEADER_SIZE) == primary


def test_check_with_both_copies_damaged_fails_and_names_both(tmp_path: Path) -> None:
    path = tmp_path / "dead.img"
    fuseblk("create", path, "--size", "8M", "--profile", "tiny")
    damage(path, 0)
    damage(path, BACKUP_OFFSET)
    result = fuseblk("check", path, "--repair")
    assert result.returncode == 1
    assert "primary copy at offset 0: bad checksum" in result.stderr
    assert "backup copy at offset 524288: bad checksum" in result.stderr
    assert fuseblk("inspect", path).returncode == 1


def test_check_refuses_to_repair_an_attached_image(tmp_path: Path) -> None:
    path = tmp_path / "busy.img"
    fuseblk("create", path, "--size", "8M", "--profile", "tiny")
    backend = open_backend(path)
    try:
        assert inspect(path)["in_use"] is True
        result = fuseblk("check", path, "--repair")
        assert result.returncode == 1 and "in use" in result.stderr
    finally:
        backend.abandon()


def test_profiles_lists_every_shipped_profile() -> None:
    result = fuseblk("profiles")
    assert result.returncode == 0
    names = {
        line.split()[0] for line in result.stdout.splitlines() if line and not line[0].isspace()
    }
    assert {"ufs", "emmc", "direct", "none", "tiny"} <= names


def test_check_reports_a_stale_copy_left_by_an_interrupted_update_and_repairs_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "stale.img"
    fuseblk("create", path, "--size", "8M", "--profile", "tiny", "--label", "old")
    storage = open_storage(path)
    try:
        current = read_headers(storage).current
        newer = replace(current, sequence=current.sequence + 1, label="new")
        write_copy(storage, "primary", newer.to_bytes())  # the crash came before the backup
    finally:
        storage.close()
    result = fuseblk("check", path)
    assert result.returncode == 1 and "backup header copy is stale" in result.stdout
    assert fuseblk("check", path, "--repair").returncode == 0
    assert inspect(path)["header"]["label"] == "new" and inspect(path)["problems"] == []


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The single line a failed command prints: never a traceback."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


@pytest.mark.parametrize("verb", [["inspect"], ["check"], ["check", "--repair"]])
def test_a_directory_is_refused_in_one_line_as_a_directory(tmp_path: Path, verb: list[str]) -> None:
    result = fuseblk(*verb, tmp_path)
    assert result.returncode == 1
    assert one_line_error(result).endswith(f"cannot open image {tmp_path}: Is a directory")


@pytest.mark.parametrize("verb", [["inspect"], ["check"]])
def test_a_fifo_is_refused_at_once_as_not_a_regular_file(tmp_path: Path, verb: list[str]) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    result = fuseblk(*verb, fifo)  # an open waiting for a writer would hit the timeout
    assert result.returncode == 2
    assert one_line_error(result).endswith("not a regular file")
