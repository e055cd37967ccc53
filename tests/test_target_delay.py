"""delay: per-class devices and delays, released at suspend; passes crypto beyond the kernel."""

from __future__ import annotations

import trio
import trio.testing
from device_helpers import XTS, MemDevice, caps, ciphertext, make_key
from dm_helpers import manager_over, pattern, read, write

from fuseblk.bio import Bio
from fuseblk.crypt_context import BioCryptContext
from fuseblk.dm.targets.delay import DelayTarget


async def test_delay_zero_is_a_plain_remap():
    a = MemDevice("a")
    dm = manager_over(a)
    md = await dm.create("d", "0 64 delay a 8 0")
    await write(md, 0, pattern(4096))
    assert a.data[4096:8192] == pattern(4096) and await read(md, 0, 4096) == pattern(4096)
    assert md.counters["delay_delayed"] == 0


async def test_reads_writes_and_flushes_use_their_own_device_and_delay(autojump_clock):
    r, w, f = MemDevice("r"), MemDevice("w"), MemDevice("f")
    dm = manager_over(r, w, f)
    md = await dm.create("d", "0 16 delay r 0 100 w 16 2000 f 0 30000")
    t0 = trio.current_time()
    await write(md, 0, pattern(512))
    assert w.data[16 * 512 : 17 * 512] == pattern(512) and r.counters["bios"] == 0
    t1 = trio.current_time()
    await read(md, 0, 512)
    t2 = trio.current_time()
    await md.submit(Bio.flush())
    t3 = trio.current_time()
    assert (round(t1 - t0, 1), round(t2 - t1, 1), round(t3 - t2, 1)) == (2.0, 0.1, 30.0)
    assert f.counters["flushes"] == 1 and md.counters["delay_delayed"] == 3
    assert dm.table("d") == "0 16 delay r 0 100 w 16 2000 f 0 30000\n"


async def test_status_counts_waiting_bios_and_suspend_releases_them(autojump_clock):
    a = MemDevice("a")
    dm = manager_over(a)
    md = await dm.create("d", "0 16 delay a 0 3600000")  # an hour
    async with trio.open_nursery() as nursery:
        nursery.start_soon(write, md, 0, pattern(512))
        nursery.start_soon(read, md, 512, 512)
        await trio.testing.wait_all_tasks_blocked()
        assert dm.status("d") == "0 16 delay 1 1 0\n"
        t0 = trio.current_time()
        await dm.suspend("d")
        assert trio.current_time() - t0 < 1  # presuspend released them: nothing waited an hour
    assert a.data[:512] == pattern(512)
    await dm.resume("d")
    t0 = trio.current_time()
    await read(md, 0, 512)
    assert trio.current_time() - t0 >= 3600  # delaying again after resume


async def test_delay_passes_crypto_beyond_the_kernel():
    assert DelayTarget.passes_crypto
    a = MemDevice("a", caps=caps({XTS: (4096,)}))
    dm = manager_over(a)
    md = await dm.create("d", "0 64 delay a 0 0")
    assert md.crypto_profile is not None
    key = make_key(1)
    await write(md, 0, pattern(4096), BioCryptContext.at(key, 9))
    assert a.data[:4096] == ciphertext(key, pattern(4096), 9) and a.counters["inline_bios"] == 1
