"""NBD storage against real nbdkit servers: the data path, block size limits, discard, claims,
timeouts and reconnection (skipped where nbdkit or libnbd's Python module is missing)."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import trio
from nbd_helpers import NbdServers, nbd_servers, require_libnbd

from fuseblk.errors import FuseblkError
from fuseblk.hw.factory import create_backend, open_backend
from fuseblk.hw.holder import process_start_ns, this_host
from fuseblk.hw.image_format import Holder, read_headers, write_headers
from fuseblk.hw.profiles import load_profile

MiB = 1 << 20
EXPORT = 16 * MiB
DATA = 8 * MiB


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[NbdServers]:
    require_libnbd()
    with nbd_servers(tmp_path) as s:
        yield s


def open_export(uri: str, timeout: float = 2.0):  # type: ignore[no-untyped-def]
    from fuseblk.hw.nbd_storage import NbdStorage

    scheme, _, location = uri.partition("://")
    return NbdStorage.open(scheme, location, timeout=timeout)


async def test_many_requests_are_in_flight_on_one_connection(servers: NbdServers) -> None:
    export = servers.nbdkit("memory", str(EXPORT), "delay-read=50ms", filters=["delay"])
    storage = await trio.to_thread.run_sync(open_export, export.uri)
    try:
        chunks = [os.urandom(4096) for _ in range(32)]
        for i, chunk in enumerate(chunks):
            await storage.awrite(chunk, i * 4096)
        got = [bytearray(4096) for _ in chunks]
        started = time.monotonic()
        async with trio.open_nursery() as nursery:
            for i, buf in enumerate(got):
                nursery.start_soon(storage.aread_into, memoryview(buf), i * 4096)
        elapsed = time.monotonic() - started
        assert [bytes(b) for b in got] == chunks
        assert elapsed < 32 * 0.05 / 2, f"32 reads of 50 ms took {elapsed:.2f} s: not concurrent"
    finally:
        storage.close()


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def test_transferring_data_does_not_grow_memory_by_what_was_transferred(
    servers: NbdServers,
) -> None:
    """libnbd's buffers are reused: 1 GiB written and read back leaves the process about the
    size it was (a buffer per request would keep every byte)."""
    export = servers.nbdkit("memory", str(EXPORT))
    storage = await trio.to_thread.run_sync(open_export, export.uri)
    try:
        data = memoryview(os.urandom(MiB))
        back = memoryview(bytearray(MiB))
        await storage.awrite(data, 0)
        await storage.aread_into(back, 0)
        before = _rss_bytes()
        for i in range(512):
            await storage.awrite(data, (i % 8) * MiB)
            await storage.aread_into(back, (i % 8) * MiB)
        grown = _rss_bytes() - before
        assert back == data
        assert grown < 64 * MiB, f"1 GiB transferred grew the process by {grown // MiB} MiB"
    finally:
        storage.close()


async def test_requests_are_split_at_the_exports_maximum_block_size(servers: NbdServers) -> None:
    export = servers.nbdkit(
        "memory",
        str(EXPORT),
        "blocksize-maximum=65536",
        "blocksize-error-policy=error",
        filters=["blocksize-policy"],
    )
    storage = await trio.to_thread.run_sync(open_export, export.uri)
    try:
        data = os.urandom(MiB)
        await storage.awrite(data, 4096)
        back = bytearray(MiB)
        await storage.aread_into(memoryview(back), 4096)
        assert back == data
    finally:
        storage.close()


def test_an_export_whose_minimum_block_exceeds_a_sector_is_refused(servers: NbdServers) -> None:
    export = servers.nbdkit(
        "memory", str(EXPORT), "blocksize-minimum=4096", filters=["blocksize-policy"]
    )
    with pytest.raises(FuseblkError) as err:
        open_export(export.uri)
    assert err.value.errno == errno.EINVAL and "minimum block size is 4096" in err.value.message


@pytest.mark.parametrize("filters", [[], ["nozero"]], ids=["write-zeroes", "no-zero-support"])
async def test_discard_reads_back_zeroes(servers: NbdServers, filters: list[str]) -> None:
    export = servers.nbdkit("memory", str(EXPORT), filters=filters)
    storage = await trio.to_thread.run_sync(open_export, export.uri)
    try:
        await storage.awrite(b"\xff" * 3 * 4096, 0)
        await storage.adiscard(4096, 4096)
        back = bytearray(3 * 4096)
        await storage.aread_into(memoryview(back), 0)
        assert back == b"\xff" * 4096 + bytes(4096) + b"\xff" * 4096
    finally:
        storage.close()


async def test_a_stalled_server_fails_a_request_within_the_timeout_and_is_reconnected(
    servers: NbdServers,
) -> None:
    export = servers.nbdkit("memory", str(EXPORT))
    storage = await trio.to_thread.run_sync(open_export, export.uri, 0.5)
    try:
        await storage.awrite(b"x" * 4096, 0)
        export.stall()
        started = time.monotonic()
        with pytest.raises(OSError) as err:
            await storage.aread_into(memoryview(bytearray(4096)), 0)
        assert err.value.errno == errno.EIO
        assert time.monotonic() - started < 2.0
        assert storage.state()["state"].startswith("disconnected")
        with pytest.raises(OSError):  # meanwhile: at once, no waiting
            await storage.aread_into(memoryview(bytearray(4096)), 0)
        export.resume()
        with trio.fail_after(15):
            while storage.state()["state"] != "connected":
                await trio.sleep(0.05)
        back = bytearray(4096)
        await storage.aread_into(memoryview(back), 0)
        assert back == b"x" * 4096 and storage.state()["reconnects"] == 1
    finally:
        export.resume()
        storage.close()


async def test_a_killed_server_fails_requests_with_eio(servers: NbdServers) -> None:
    export = servers.nbdkit("memory", str(EXPORT))
    storage = await trio.to_thread.run_sync(open_export, export.uri)
    try:
        export.kill()
        with pytest.raises(OSError) as err:
            await storage.awrite(b"x" * 4096, 0)
        assert err.value.errno == errno.EIO
    finally:
        storage.close()


# -- claims -------------------------------------------------------------------------------------


async def test_an_engine_over_an_export_claims_it_and_a_clean_close_releases_it(
    servers: NbdServers,
) -> None:
    export = servers.nbdkit("memory", str(EXPORT))
    hardware = load_profile("ufs")
    backend = await trio.to_thread.run_sync(lambda: create_backend(export.uri, DATA, hardware))
    assert backend.header.holder is not None
    assert backend.header.holder.pid == os.getpid()
    assert backend.info()["connection"]["state"] == "connected"
    await backend.close()
    storage = await trio.to_thread.run_sync(open_export, export.uri)
    try:
        headers = await trio.to_thread.run_sync(read_headers, storage)
        assert headers.current.holder is None
    finally:
        storage.close()


def claimed_export(servers: NbdServers, holder: Holder) -> str:
    """An export holding a closed image whose header names ``holder``."""
    export = servers.nbdkit("memory", str(EXPORT))
    backend = create_backend(export.uri, DATA, load_profile("ufs"))
    trio.run(backend.close)
    storage = open_export(export.uri)
    try:
        write_headers(storage, replace(read_headers(storage).current, holder=holder))
    finally:
        storage.close()
    return export.uri


ELSEWHERE = Holder("storage-host-2", 4242, 1_700_000_000_000_000_000)


def test_an_export_held_on_another_host_is_refused_naming_the_holder(
    servers: NbdServers,
) -> None:
    uri = claimed_export(servers, ELSEWHERE)
    with pytest.raises(FuseblkError) as err:
        open_backend(uri)
    assert err.value.errno == errno.EBUSY
    assert "pid 4242 on storage-host-2" in err.value.message
    assert "image check --repair" in err.value.message
    assert "--force-attach" in err.value.message


def test_take_over_attaches_an_export_held_on_another_host(servers: NbdServers) -> None:
    uri = claimed_export(servers, ELSEWHERE)
    backend = open_backend(uri, take_over=True)
    try:
        assert backend.header.holder is not None
        assert backend.header.holder.pid == os.getpid()
        assert backend.header.holder.host == this_host()
    finally:
        trio.run(backend.close)


def test_take_over_never_takes_an_export_a_live_process_here_holds(servers: NbdServers) -> None:
    parent = os.getppid()
    uri = claimed_export(servers, Holder(this_host(), parent, process_start_ns(parent) or 0))
    with pytest.raises(FuseblkError) as err:
        open_backend(uri, take_over=True)
    assert err.value.errno == errno.EBUSY and f"pid {parent}" in err.value.message
    assert "--force-attach" not in err.value.message  # nothing the user could force


def test_a_claim_left_by_this_process_is_taken_again(servers: NbdServers) -> None:
    """A daemon that dropped an image as a crash would (abandon) attaches it again."""
    export = servers.nbdkit("memory", str(EXPORT))
    backend = create_backend(export.uri, DATA, load_profile("ufs"))
    backend.abandon()
    again = open_backend(export.uri)
    assert again.header.holder is not None and not again.was_clean
    trio.run(again.close)
