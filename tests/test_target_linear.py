"""linear: remaps onto one device at an offset, passes crypto, stacks."""

from __future__ import annotations

from device_helpers import XTS, MemDevice, caps, ciphertext, make_key
from dm_helpers import manager_over, pattern, read, write

from fuseblk.crypt_context import BioCryptContext
from fuseblk.dm.targets.linear import LinearTarget


async def test_linear_maps_offsets_relative_to_the_target_start():
    a = MemDevice("a")
    dm = manager_over(a)
    md = await dm.create("d", "0 8 zero\n8 16 linear a 100")
    await write(md, 8 * 512 + 512, pattern(1024))
    assert a.data[101 * 512 : 103 * 512] == pattern(1024)
    assert await read(md, 9 * 512, 1024) == pattern(1024)


async def test_linear_passes_crypto_and_the_dun_is_unchanged_by_remapping():
    assert LinearTarget.passes_crypto
    a = MemDevice("a", caps=caps({XTS: (4096,)}))
    dm = manager_over(a)
    md = await dm.create("d", "0 64 linear a 24")
    key = make_key(1)
    await write(md, 8192, pattern(4096), BioCryptContext.at(key, 42))
    assert a.data[24 * 512 + 8192 : 24 * 512 + 12288] == ciphertext(key, pattern(4096), 42)
    assert all(bio.crypt_ctx is not None for bio in a.bios)


async def test_linear_stacks_on_mapped_devices():
    a = MemDevice("a")
    dm = manager_over(a)
    await dm.create("lower", "0 64 linear a 64")
    upper = await dm.create("upper", "0 32 linear lower 16")
    await write(upper, 0, pattern(512))
    assert a.data[80 * 512 : 81 * 512] == pattern(512)
    assert dm.table("upper") == "0 32 linear lower 16\n"
