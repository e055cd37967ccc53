"""Key files: raw key bytes, or exactly their hex with at most one trailing newline."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from fifo_helpers import returns_within

from fuseblk.config.default_setup import default_config
from fuseblk.errors import FuseblkError
from fuseblk.keyfile import KeyFileError, read_key_file

KEY = bytes(range(0x40, 0x60))  # 32 bytes


def _file(tmp_path: Path, content: bytes) -> Path:
    path = tmp_path / "key"
    path.write_bytes(content)
    return path


@pytest.mark.parametrize(
    "content",
    [KEY, KEY.hex().encode(), KEY.hex().encode() + b"\n", KEY.hex().upper().encode()],
    ids=["raw", "hex", "hex-newline", "hex-uppercase"],
)
def test_raw_bytes_or_their_hex_give_the_key(tmp_path: Path, content: bytes) -> None:
    assert read_key_file(_file(tmp_path, content), 32, "Adiantum") == KEY


@pytest.mark.parametrize(
    "content",
    [
        KEY[:31],
        KEY + b"\n",  # raw bytes take no newline
        KEY.hex().encode() + b"\n\n",
        b" " + KEY.hex().encode(),
        KEY.hex().encode()[:-2] + b" 0",  # fromhex would skip the space and give 31 bytes
        KEY.hex().encode()[:-1] + b"g",
        b"",
    ],
    ids=[
        "short",
        "raw-newline",
        "two-newlines",
        "leading-space",
        "inner-space",
        "not-hex",
        "empty",
    ],
)
def test_anything_else_is_a_key_file_error_naming_sizes_not_content(
    tmp_path: Path, content: bytes
) -> None:
    with pytest.raises(KeyFileError) as info:
        read_key_file(_file(tmp_path, content), 32, "Adiantum")
    assert info.value.errno == errno.EINVAL
    message = info.value.message
    got = f"{len(content)} bytes" if len(content) <= 65 else "more than 65 bytes"
    assert f"Adiantum needs a 32-byte key, got {got}" in message
    assert "32 raw key bytes or 64 hex digits" in message
    assert KEY.hex()[:8] not in message and KEY.hex().upper()[:8] not in message


def test_a_large_file_is_refused_after_reading_only_its_start(tmp_path: Path) -> None:
    path = _file(tmp_path, KEY * 1024)
    with pytest.raises(KeyFileError, match="got more than 65 bytes"):
        read_key_file(path, 32, "Adiantum")


def test_an_unreadable_file_carries_the_os_errno(tmp_path: Path) -> None:
    with pytest.raises(FuseblkError) as info:
        read_key_file(tmp_path / "missing", 32, "Adiantum")
    assert not isinstance(info.value, KeyFileError)
    assert info.value.errno == errno.ENOENT


def test_default_setup_reads_its_key_file_the_same_way(tmp_path: Path) -> None:
    key = os.urandom(64)
    state = tmp_path / "state"
    state.mkdir()
    (state / "secure.key").write_text(key.hex() + "\n")
    config = default_config(state)
    secure = next(d for d in config.devices if d.name == "secure")
    assert key.hex() in secure.table
    (state / "secure.key").write_bytes(key[:63])
    with pytest.raises(KeyFileError, match="got 63 bytes"):
        default_config(state)


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "key.fifo"
    os.mkfifo(fifo)
    with pytest.raises(FuseblkError) as info:
        returns_within(5, read_key_file, fifo, 32, "Adiantum", unblock=fifo)
    assert not isinstance(info.value, KeyFileError)
    assert info.value.errno == errno.EINVAL
    assert info.value.message == f"{fifo}: is a FIFO, not a regular file"


@pytest.mark.parametrize(
    "path, errno_, reason",
    [
        ("/dev/zero", errno.EINVAL, "is a character device, not a regular file"),
        ("/", errno.EISDIR, "Is a directory"),
    ],
)
def test_a_device_or_a_directory_is_refused_by_kind(path: str, errno_: int, reason: str) -> None:
    with pytest.raises(FuseblkError) as info:
        read_key_file(path, 32, "Adiantum")
    assert (info.value.errno, info.value.message) == (errno_, f"{path}: {reason}")
