"""zero and error: the two targets with no device, neither passing crypto."""

from __future__ import annotations

import errno

import pytest
from device_helpers import MemDevice, make_key
from dm_helpers import manager_over, pattern, read, write

from fuseblk.bio import Bio
from fuseblk.ciphers import get_cipher
from fuseblk.crypt_context import BioCryptContext
from fuseblk.dm.targets.error import ErrorTarget
from fuseblk.dm.targets.zero import ZeroTarget
from fuseblk.errors import FuseblkError


async def test_zero_reads_zeroes_and_drops_writes():
    dm = manager_over()
    md = await dm.create("z", "0 64 zero")
    await write(md, 0, pattern(4096))
    assert await read(md, 0, 4096) == bytes(4096)
    await md.submit(Bio.discard(0, 4096))
    await md.submit(Bio.flush())


async def test_zero_does_not_pass_crypto_so_contexts_go_through_the_fallback():
    assert not ZeroTarget.passes_crypto
    dm = manager_over()
    md = await dm.create("z", "0 64 zero")
    assert md.crypto_profile is None
    key = make_key(1)
    got = await read(md, 0, 4096, BioCryptContext.at(key, 3))
    assert got == bytes(get_cipher(key).decrypt(bytes(4096), 3))  # never plaintext zeroes
    assert md.counters["fallback_bios"] == 1


async def test_error_fails_reads_writes_and_discards_with_eio_but_not_flush():
    assert not ErrorTarget.passes_crypto
    dm = manager_over()
    md = await dm.create("e", "0 64 error")
    for bio in (Bio.read(0, bytearray(512)), Bio.write(0, bytes(512)), Bio.discard(0, 512)):
        with pytest.raises(FuseblkError) as info:
            await md.submit(bio)
        assert info.value.errno == errno.EIO
    await md.submit(Bio.flush())


async def test_swapping_linear_for_error_makes_io_fail():
    a = MemDevice("a")
    dm = manager_over(a)
    md = await dm.create("d", "0 64 linear a 0")
    await write(md, 0, pattern(4096))
    await dm.load("d", "0 64 error")
    await dm.resume("d")
    with pytest.raises(FuseblkError) as info:
        await read(md, 0, 4096)
    assert info.value.errno == errno.EIO
    await dm.load("d", "0 64 linear a 0")
    await dm.resume("d")
    assert await read(md, 0, 4096) == pattern(4096)
