"""striped: chunks round-robin across legs (dm-stripe), validated like the kernel, passes crypto."""

from __future__ import annotations

import errno

import pytest
from device_helpers import XTS, MemDevice, caps, ciphertext, make_key
from dm_helpers import manager_over, pattern, read, write
from hypothesis import given, settings
from hypothesis import strategies as st

from fuseblk.bio import Bio
from fuseblk.crypt_context import BioCryptContext
from fuseblk.dm.targets.striped import MAX_STRIPES
from fuseblk.errors import FuseblkError, TableError


async def test_write_through_striped_lands_chunk_by_chunk_on_the_legs():
    legs = [MemDevice(n) for n in "abc"]
    dm = manager_over(*legs)
    md = await dm.create("d", "0 48 striped 3 4 a 0 b 8 c 16")  # 2 KiB chunks, 16 sectors per leg
    data = pattern(48 * 512)
    await write(md, 0, data)
    chunk = 2048
    for i in range(48 * 512 // chunk):
        leg, row = legs[i % 3], i // 3
        base = (0, 8, 16)[i % 3] * 512
        assert (
            leg.data[base + row * chunk : base + (row + 1) * chunk]
            == data[i * chunk : (i + 1) * chunk]
        )
    assert await read(md, 1024, 40 * 512) == data[1024 : 1024 + 40 * 512]


async def test_chunk_size_need_not_be_a_power_of_two():
    a, b = MemDevice("a"), MemDevice("b")
    dm = manager_over(a, b)
    md = await dm.create("d", "0 12 striped 2 3 a 0 b 0")
    data = pattern(12 * 512)
    await write(md, 0, data)
    assert a.data[: 3 * 512] == data[: 3 * 512] and b.data[: 3 * 512] == data[3 * 512 : 6 * 512]
    assert a.data[3 * 512 : 6 * 512] == data[6 * 512 : 9 * 512]


async def test_striped_passes_crypto_with_the_dun_of_each_chunk():
    ufs = caps({XTS: (4096,)})
    a, b = MemDevice("a", caps=ufs), MemDevice("b", caps=ufs)
    dm = manager_over(a, b)
    md = await dm.create("d", "0 64 striped 2 8 a 0 b 0")
    key = make_key(1)
    data = pattern(16384)
    await write(md, 0, data, BioCryptContext.at(key, 10))
    assert a.data[:4096] == ciphertext(key, data[:4096], 10)
    assert b.data[:4096] == ciphertext(key, data[4096:8192], 11)
    assert a.data[4096:8192] == ciphertext(key, data[8192:12288], 12)
    assert await read(md, 4096, 8192, BioCryptContext.at(key, 11)) == data[4096:12288]


async def test_chunk_smaller_than_a_data_unit_cannot_carry_that_context():
    ufs = caps({XTS: (4096,)})
    dm = manager_over(MemDevice("a", caps=ufs), MemDevice("b", caps=ufs))
    md = await dm.create("d", "0 64 striped 2 4 a 0 b 0")
    with pytest.raises(FuseblkError) as info:
        await write(md, 0, bytes(4096), BioCryptContext.at(make_key(2), 0))
    assert info.value.errno == errno.EINVAL


async def test_flush_goes_to_every_leg_and_discard_is_striped():
    a, b = MemDevice("a"), MemDevice("b")
    dm = manager_over(a, b)
    md = await dm.create("d", "0 32 striped 2 8 a 0 b 0")
    await write(md, 0, b"\xff" * (32 * 512))
    await md.submit(Bio.discard(4096, 8192))
    assert a.data[:4096] == b"\xff" * 4096 and b.data[:4096] == bytes(4096)
    assert a.data[4096:8192] == bytes(4096)
    await md.submit(Bio.flush())
    assert a.counters["flushes"] == 1 and b.counters["flushes"] == 1


async def test_status_marks_a_leg_that_failed_with_eio():
    a, b = MemDevice("a", size=8 * 512), MemDevice("b")
    dm = manager_over(a, b)
    md = await dm.create("d", "0 16 striped 2 8 a 0 b 0")
    a.size = 4 * 512  # the leg shrank under us: I/O beyond its end fails
    with pytest.raises(FuseblkError):
        await read(md, 0, 8192)
    assert dm.status("d") == "0 16 striped 2 a b 1 DA\n"


@settings(max_examples=40, deadline=None)
@given(
    nstripes=st.integers(1, 4),
    chunk=st.sampled_from([1, 2, 3, 8]),
    rows=st.integers(1, 4),
    writes=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 40)), min_size=1, max_size=6),
)
async def test_striped_layout_matches_the_chunk_round_robin_model(nstripes, chunk, rows, writes):
    length = nstripes * chunk * rows  # sectors
    legs = [MemDevice(f"l{i}", size=(chunk * rows + 4) * 512) for i in range(nstripes)]
    dm = manager_over(*legs)
    table = f"0 {length} striped {nstripes} {chunk} " + " ".join(f"l{i} 4" for i in range(nstripes))
    md = await dm.create("d", table)
    image = bytearray(length * 512)  # what the striped device should contain
    for n, (start, count) in enumerate(writes):
        start %= length
        count = min(count, length - start)
        data = pattern(count * 512, seed=n)
        await write(md, start * 512, data)
        image[start * 512 : (start + count) * 512] = data
    for c in range(
        length // chunk
    ):  # chunk c lives on leg c % n, row c // n, after the 4-sector offset
        leg, row = legs[c % nstripes], c // nstripes
        on_leg = leg.data[(4 + row * chunk) * 512 : (4 + (row + 1) * chunk) * 512]
        assert on_leg == image[c * chunk * 512 : (c + 1) * chunk * 512]
    assert await read(md, 0, length * 512) == bytes(image)


async def test_at_most_max_stripes():
    disks = [MemDevice(f"s{i}", 8 * 512) for i in range(MAX_STRIPES + 1)]
    dm = manager_over(*disks)

    def table(n: int) -> str:
        return f"0 {8 * n} striped {n} 8 " + " ".join(f"s{i} 0" for i in range(n))

    await dm.create("wide", table(MAX_STRIPES))
    with pytest.raises(TableError) as info:
        await dm.create("wider", table(MAX_STRIPES + 1))
    assert info.value.field == "striped #stripes"
    await dm.close()
