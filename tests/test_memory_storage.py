"""RAM disks: an image in memory, laid out exactly as an image file, living while a handle does."""

from __future__ import annotations

import errno
import gc
import os
from pathlib import Path

import pytest

from fuseblk.bio import Bio
from fuseblk.crypt_context import BioCryptContext
from fuseblk.errors import FuseblkError
from fuseblk.hw.factory import create_backend, open_backend, open_storage
from fuseblk.hw.image_format import read_headers
from fuseblk.hw.profiles import load_profile
from fuseblk.key import BlkCryptoKey

MiB = 1 << 20


def image_bytes(ref: str) -> bytes:
    storage = open_storage(ref)
    try:
        buf = bytearray(storage.size)
        storage.read_into(memoryview(buf), 0)
        return bytes(buf)
    finally:
        storage.close()


async def test_a_ram_disk_holds_an_image_exactly_as_a_file_does(tmp_path: Path) -> None:
    key = BlkCryptoKey.create("AES-256-XTS", os.urandom(64), 4096, 8)
    data = os.urandom(8192)
    ram = create_backend("memory://", 2 * MiB, load_profile("tiny"), label="in ram")
    await ram.submit(Bio.write(4096, data, BioCryptContext.at(key, 11)))
    await ram.close()
    image = tmp_path / "copy.img"
    image.write_bytes(image_bytes(ram.path))  # the RAM disk's bytes, as a file
    disk = open_backend(image)
    assert disk.header.uuid == ram.header.uuid and disk.header.label == "in ram"
    assert disk.warnings == []  # closed cleanly, both copies current
    back = bytearray(8192)
    await disk.submit(Bio.read(4096, back, BioCryptContext.at(key, 11)))
    assert back == data
    await disk.close()


async def test_a_ram_disk_keeps_its_contents_across_attaches() -> None:
    ram = create_backend("memory://", MiB, load_profile("tiny"))
    await ram.submit(Bio.write(0, b"kept".ljust(512, b"\0")))
    await ram.close()
    again = open_backend(ram.path)
    back = bytearray(512)
    await again.submit(Bio.read(0, back))
    assert back[:4] == b"kept" and again.was_clean
    await again.close()
    storage = open_storage(ram.path)
    try:
        assert read_headers(storage).current.clean_shutdown
    finally:
        storage.close()


async def test_a_ram_disk_goes_with_its_last_handle() -> None:
    ram = create_backend("memory://short-lived", MiB, load_profile("none"))
    await ram.close()
    del ram
    gc.collect()
    with pytest.raises(FuseblkError) as err:
        open_backend("memory://short-lived")
    assert err.value.errno == errno.ENOENT


async def test_a_name_in_use_needs_overwrite_and_an_attached_one_is_never_taken() -> None:
    ram = create_backend("memory://taken", MiB, load_profile("tiny"))
    with pytest.raises(FuseblkError) as err:
        create_backend("memory://taken", MiB, load_profile("tiny"))
    assert err.value.errno == errno.EEXIST
    with pytest.raises(FuseblkError) as err:
        create_backend("memory://taken", MiB, load_profile("tiny"), overwrite=True)
    assert err.value.errno == errno.EBUSY
    await ram.close()
    fresh = create_backend("memory://taken", 2 * MiB, load_profile("ufs"), overwrite=True)
    assert fresh.size == 2 * MiB and fresh.header.uuid != ram.header.uuid
    await fresh.close()


def test_memory_without_a_name_gets_a_fresh_one_each_time() -> None:
    a = create_backend("memory://", MiB, load_profile("none"))
    b = create_backend("memory://", MiB, load_profile("none"))
    assert a.path != b.path and a.path.startswith("memory://")
    a.abandon()
    b.abandon()
