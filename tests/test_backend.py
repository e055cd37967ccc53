"""Backends: inline-encryption hardware over a storage (keyslots, storage, header upkeep).

Every behaviour that does not depend on the kind of storage runs over an image file and over a
RAM disk: the engine is the same, and so must be what it does.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio
from test_image_format import headers_of, opened

from fuseblk.bio import Bio
from fuseblk.ciphers import get_cipher
from fuseblk.crypt_context import BioCryptContext
from fuseblk.device import Backend, BlockDevice
from fuseblk.errors import FuseblkError
from fuseblk.hw import engine as engine_mod
from fuseblk.hw import image_format
from fuseblk.hw.engine import InlineEncryptionEngine
from fuseblk.hw.factory import create_backend, open_backend
from fuseblk.hw.file_storage import create_image_file
from fuseblk.hw.image_format import BACKUP_OFFSET, DATA_OFFSET, SlotRecordState
from fuseblk.hw.profiles import load_profile
from fuseblk.hw.storage import Storage
from fuseblk.key import BlkCryptoKey
from fuseblk.modes import CryptoMode

MiB = 1 << 20

MakeBackend = Callable[..., InlineEncryptionEngine]


def new_key(
    dus: int = 4096, mode: CryptoMode = CryptoMode.AES_256_XTS, dun_bytes: int = 8
) -> BlkCryptoKey:
    return BlkCryptoKey.create(mode, os.urandom(mode.key_size), dus, dun_bytes)


def stored(ref: str, offset: int, length: int) -> bytes:
    """What the storage holds at ``offset`` of the data area (for an image file: what
    ``losetup -o DATA_OFFSET`` would show)."""
    buf = bytearray(length)
    with opened(ref) as storage:
        storage.read_into(memoryview(buf), DATA_OFFSET + offset)
    return bytes(buf)


def whole_image(ref: str) -> bytes:
    with opened(ref) as storage:
        buf = bytearray(storage.size)
        storage.read_into(memoryview(buf), 0)
    return bytes(buf)


def scribble(ref: str, offset: int, data: bytes) -> None:
    """Damage the image behind the backend's back."""
    with opened(ref) as storage:
        storage.write(data, offset)


@pytest.fixture(params=["file", "memory"])
def make_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeBackend]:
    """``make_backend(name, size, profile, label="")``: a new backend over an image file or a RAM
    disk; every one made is released at the end even if the test failed midway."""
    made: list[InlineEncryptionEngine] = []

    def make(name: str, size: int, profile: str, label: str = "") -> InlineEncryptionEngine:
        ref = str(tmp_path / f"{name}.img") if request.param == "file" else "memory://"
        backend = create_backend(ref, size, load_profile(profile), label=label)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.abandon()  # a no-op after close()


@pytest.fixture
def tiny(make_backend: MakeBackend) -> InlineEncryptionEngine:
    return make_backend("tiny", 16 * MiB, "tiny", label="tiny")


@pytest.fixture
def tiny_file(tmp_path: Path) -> Iterator[InlineEncryptionEngine]:
    """For what only an image file shows (its blocks, a loop device, another process)."""
    backend = create_backend(tmp_path / "tiny.img", 16 * MiB, load_profile("tiny"), label="tiny")
    yield backend
    backend.abandon()  # a no-op after close(); releases the lock if a test failed midway


# --- storage and crypto ----------------------------------------------------------------------


async def test_backend_is_a_block_device_with_the_profile_of_its_hardware(
    tiny: InlineEncryptionEngine,
) -> None:
    assert isinstance(tiny, BlockDevice)
    assert tiny.size == 16 * MiB and tiny.name == str(tiny.path)
    profile = tiny.crypto_profile
    assert profile is not None and profile.num_slots == 2
    assert profile.caps == load_profile("tiny").caps
    await tiny.close()


async def test_stored_ciphertext_is_what_the_cipher_makes_of_the_plaintext(
    tiny: InlineEncryptionEngine,
) -> None:
    key = new_key()
    plaintext = os.urandom(3 * 4096)
    await tiny.submit(Bio.write(8192, plaintext, BioCryptContext.at(key, 1234)))
    assert stored(tiny.path, 8192, len(plaintext)) == get_cipher(key).encrypt(plaintext, 1234)
    back = bytearray(len(plaintext))
    await tiny.submit(Bio.read(8192, back, BioCryptContext.at(key, 1234)))
    assert back == plaintext
    await tiny.close()


async def test_writes_never_modify_the_callers_buffer(tiny: InlineEncryptionEngine) -> None:
    data = bytearray(os.urandom(4096))
    copy = bytes(data)
    await tiny.submit(Bio.write(0, data, BioCryptContext.at(new_key(), 0)))
    assert data == copy
    await tiny.close()


async def test_plain_bios_are_stored_as_plain_sectors_at_the_data_offset(
    tiny: InlineEncryptionEngine,
) -> None:
    await tiny.submit(Bio.write(512, b"hello".ljust(512, b"\0")))
    assert stored(tiny.path, 512, 5) == b"hello"
    await tiny.close()


async def test_data_survives_close_and_reopen(make_backend: MakeBackend) -> None:
    key = new_key(dus=512)
    b = make_backend("d", 4 * MiB, "ufs")
    data = os.urandom(64 * 1024)
    await b.submit(Bio.write(MiB, data, BioCryptContext.at(key, 77)))
    await b.close()
    b = open_backend(b.path)
    back = bytearray(len(data))
    await b.submit(Bio.read(MiB, back, BioCryptContext.at(key, 77)))
    assert back == data
    await b.close()


async def test_large_bios_go_through_worker_threads_and_still_round_trip(
    tiny: InlineEncryptionEngine,
) -> None:
    key = new_key()
    size = engine_mod.INLINE_IO_MAX * 2
    data = os.urandom(size)
    await tiny.submit(Bio.write(0, data, BioCryptContext.at(key, 5)))
    back = bytearray(size)
    await tiny.submit(Bio.read(0, back, BioCryptContext.at(key, 5)))
    assert back == data
    await tiny.close()


async def test_large_encrypted_bios_split_between_threads_store_one_calls_ciphertext(
    tiny: InlineEncryptionEngine,
) -> None:
    """The trio thread and a worker each take part of a large bio: the image holds what one
    cipher call over the whole bio gives, and it reads back whole."""
    key = new_key()
    size = 3 * engine_mod.INLINE_IO_MAX + 8192  # the parts meet off any power of two
    data = os.urandom(size)
    await tiny.submit(Bio.write(4096, data, BioCryptContext.at(key, 5)))
    assert stored(tiny.path, 4096, size) == get_cipher(key).encrypt(data, 5)
    back = bytearray(size)
    await tiny.submit(Bio.read(4096, back, BioCryptContext.at(key, 5)))
    assert back == data
    await tiny.close()


@pytest.mark.parametrize("part", ["worker", "trio thread"])
async def test_failed_part_of_a_large_encrypted_read_is_eio_and_frees_the_slot(
    tiny: InlineEncryptionEngine, monkeypatch: pytest.MonkeyPatch, part: str
) -> None:
    key = new_key()
    size = 2 * engine_mod.INLINE_IO_MAX
    await tiny.submit(Bio.write(0, os.urandom(size), BioCryptContext.at(key, 0)))
    real_read = tiny._read_storage  # noqa: SLF001 — failing one part of the request
    on_worker = part == "worker"

    def failing_read(buf: memoryview, offset: int) -> None:
        if (threading.current_thread() is not threading.main_thread()) == on_worker:
            raise OSError(errno.EIO, "medium error")
        real_read(buf, offset)

    monkeypatch.setattr(tiny, "_read_storage", failing_read)
    with pytest.raises(FuseblkError) as err:
        await tiny.submit(Bio.read(0, bytearray(size), BioCryptContext.at(key, 0)))
    assert err.value.errno == errno.EIO and "read failed" in err.value.message
    profile = tiny.crypto_profile
    assert profile is not None
    assert all(slot.refs == 0 for slot in profile.slot_table())
    await tiny.close()


async def test_counters_count_bios_bytes_and_inline_work(tiny: InlineEncryptionEngine) -> None:
    key = new_key()
    await tiny.submit(Bio.write(0, bytes(8192), BioCryptContext.at(key, 0)))
    await tiny.submit(Bio.read(0, bytearray(4096)))
    await tiny.submit(Bio.flush())
    c = tiny.counters
    assert (c["bios"], c["bytes"], c["reads"], c["writes"], c["flushes"]) == (3, 12288, 1, 1, 1)
    assert (c["inline_bios"], c["inline_bytes"]) == (1, 8192)
    info = tiny.info()["counters"]
    assert info["keyslot_programs"] == 1 and info["bios"] == 3
    await tiny.close()


async def test_discarded_ranges_read_back_as_zeroes_and_free_space(
    tiny_file: InlineEncryptionEngine,
) -> None:
    await tiny_file.submit(Bio.write(0, b"\xaa" * MiB))
    await tiny_file.flush()
    before = os.stat(tiny_file.path).st_blocks
    await tiny_file.submit(Bio.discard(0, MiB))
    back = bytearray(b"\x55" * 4096)
    await tiny_file.submit(Bio.read(4096, back))
    assert back == bytes(4096)
    assert os.stat(tiny_file.path).st_blocks < before
    await tiny_file.close()


async def test_discarded_ranges_read_back_as_zeroes_whatever_their_alignment(
    tiny: InlineEncryptionEngine,
) -> None:
    await tiny.submit(Bio.write(0, b"\xaa" * (3 * 4096)))
    await tiny.submit(Bio.discard(512, 2 * 4096 + 512))  # part of a page, a page, part of one
    back = bytearray(3 * 4096)
    await tiny.submit(Bio.read(0, back))
    assert back == b"\xaa" * 512 + bytes(2 * 4096 + 512) + b"\xaa" * 3072
    await tiny.close()


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["read", "write", "discard"])
async def test_io_beyond_the_end_of_the_device_is_eio(
    tiny: InlineEncryptionEngine, op: str
) -> None:
    end = tiny.size
    bio = {
        "read": Bio.read(end - 512, bytearray(1024)),
        "write": Bio.write(end, bytes(512)),
        "discard": Bio.discard(end - 512, 4096),
    }[op]
    with pytest.raises(FuseblkError) as err:
        await tiny.submit(bio)
    assert err.value.errno == errno.EIO and "beyond end of device" in err.value.message
    assert tiny.counters["errors"] == 1
    await tiny.close()


async def test_io_not_made_of_whole_sectors_is_einval(tiny: InlineEncryptionEngine) -> None:
    for bio in (Bio.read(100, bytearray(512)), Bio.write(0, bytes(1000))):
        with pytest.raises(FuseblkError) as err:
            await tiny.submit(bio)
        assert err.value.errno == errno.EINVAL
    await tiny.close()


async def test_unsupported_context_reaching_the_hardware_is_eio_and_logged(
    tiny: InlineEncryptionEngine, caplog: pytest.LogCaptureFixture
) -> None:
    key = new_key(mode=CryptoMode.ADIANTUM)  # tiny does AES-256-XTS only
    caplog.set_level(logging.ERROR, logger="fuseblk.hw.engine")
    with pytest.raises(FuseblkError) as err:
        await tiny.submit(Bio.write(0, bytes(4096), BioCryptContext.at(key, 0)))
    assert err.value.errno == errno.EIO
    assert "upstream bug" in caplog.text and key.key_id in caplog.text
    assert key.raw.hex() not in caplog.text + err.value.message
    await tiny.close()


async def test_context_on_hardware_without_inline_encryption_is_eio(
    make_backend: MakeBackend,
) -> None:
    b = make_backend("n", MiB, "none")
    assert b.crypto_profile is None
    with pytest.raises(FuseblkError) as err:
        await b.submit(Bio.read(0, bytearray(4096), BioCryptContext.at(new_key(), 0)))
    assert err.value.errno == errno.EIO
    await b.close()


async def test_misaligned_encrypted_bio_is_einval(tiny: InlineEncryptionEngine) -> None:
    with pytest.raises(FuseblkError) as err:
        await tiny.submit(Bio.write(0, bytes(512), BioCryptContext.at(new_key(dus=4096), 0)))
    assert err.value.errno == errno.EINVAL
    await tiny.close()


# --- one owner --------------------------------------------------------------------------------


async def test_a_second_open_of_an_attached_image_is_ebusy(tiny: InlineEncryptionEngine) -> None:
    with pytest.raises(FuseblkError) as err:
        open_backend(tiny.path)
    assert err.value.errno == errno.EBUSY and "in use" in err.value.message
    await tiny.close()
    again = open_backend(tiny.path)
    await again.close()


def test_another_process_holding_the_image_makes_open_ebusy_until_it_is_killed(
    tmp_path: Path,
) -> None:
    path = tmp_path / "held.img"
    create_image_file(path, load_profile("tiny"), MiB)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from fuseblk.hw.factory import open_backend; "
            "b = open_backend(sys.argv[1]); print('held', flush=True); time.sleep(60)",
            str(path),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        with pytest.raises(FuseblkError) as err:
            open_backend(path)
        assert err.value.errno == errno.EBUSY
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    b = open_backend(path)  # the dead holder's lock went with it
    assert "image was not cleanly shut down" in b.warnings
    b.abandon()


# --- header upkeep ------------------------------------------------------------------------------


async def test_attached_image_is_marked_unclean_and_clean_close_marks_it_clean(
    tiny: InlineEncryptionEngine,
) -> None:
    assert not headers_of(tiny.path).current.clean_shutdown
    await tiny.close()
    assert headers_of(tiny.path).current.clean_shutdown
    b = open_backend(tiny.path)
    assert b.warnings == [] and b.info()["was_clean"]
    await b.close()


async def test_an_image_left_attached_reports_not_cleanly_shut_down(
    tiny: InlineEncryptionEngine,
) -> None:
    tiny.abandon()
    b = open_backend(tiny.path)
    assert b.warnings == ["image was not cleanly shut down"]
    assert not b.info()["was_clean"]
    await b.close()


async def test_flush_records_the_keyslot_table_with_identifiers_only(
    tiny: InlineEncryptionEngine,
) -> None:
    key = new_key()
    await tiny.submit(Bio.write(0, bytes(4096), BioCryptContext.at(key, 0)))
    await tiny.flush()
    slots = headers_of(tiny.path).current.slots
    assert slots[0].state is SlotRecordState.PROGRAMMED and slots[0].key_id.hex() == key.key_id
    assert slots[0].config == key.config
    assert slots[1].state is SlotRecordState.EMPTY
    await tiny.close()


async def test_flush_with_an_unchanged_keyslot_table_writes_no_header(
    tiny: InlineEncryptionEngine,
) -> None:
    key = new_key()
    await tiny.submit(Bio.write(0, bytes(4096), BioCryptContext.at(key, 0)))
    await tiny.flush()
    writes, seq = tiny.counters["header_writes"], headers_of(tiny.path).current.sequence
    await tiny.submit(Bio.write(4096, bytes(4096), BioCryptContext.at(key, 1)))  # a hit
    await tiny.flush()
    await tiny.flush()
    assert tiny.counters["header_writes"] == writes
    assert headers_of(tiny.path).current.sequence == seq
    await tiny.close()


async def test_attaching_is_a_hardware_reset(tiny: InlineEncryptionEngine) -> None:
    key = new_key()
    await tiny.submit(Bio.write(0, bytes(4096), BioCryptContext.at(key, 0)))
    await tiny.close()
    assert headers_of(tiny.path).current.slots[0].programmed  # recorded at clean close
    b = open_backend(tiny.path)
    assert b.crypto_profile is not None
    assert not any(s.programmed for s in b.crypto_profile.slot_table())
    assert not any(s.programmed for s in headers_of(tiny.path).current.slots)
    await b.close()


async def test_one_damaged_header_copy_still_opens_and_says_so(
    tiny: InlineEncryptionEngine,
) -> None:
    await tiny.close()
    scribble(tiny.path, BACKUP_OFFSET + 50, b"\xff\xff")
    b = open_backend(tiny.path)
    assert b.warnings == ["backup header copy is damaged: bad checksum"]
    assert b.info()["warnings"] == b.warnings
    await b.close()
    assert headers_of(tiny.path).problems == []  # attaching rewrote both copies


async def test_both_damaged_header_copies_refuse_to_open(tiny: InlineEncryptionEngine) -> None:
    await tiny.close()
    for offset in (0, BACKUP_OFFSET):
        scribble(tiny.path, offset + 50, b"\xff\xff")
    with pytest.raises(image_format.ImageFormatError, match="primary copy .* bad checksum; backup"):
        open_backend(tiny.path)
    with opened(tiny.path) as storage:
        storage.lock()  # a failed open leaves no lock behind


async def test_header_update_interrupted_between_copies_loses_nothing(
    tiny: InlineEncryptionEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = new_key()
    data = os.urandom(8192)
    await tiny.submit(Bio.write(0, data, BioCryptContext.at(key, 9)))
    real_write_copy = image_format.write_copy

    def power_cut_before_backup(storage: Storage, name: str, blob: bytes) -> None:
        if name == "backup":
            raise OSError(errno.EIO, "power cut")
        real_write_copy(storage, name, blob)

    monkeypatch.setattr(image_format, "write_copy", power_cut_before_backup)
    with pytest.raises(FuseblkError) as err:
        await tiny.flush()
    assert err.value.errno == errno.EIO and "header update failed" in err.value.message
    tiny.abandon()
    monkeypatch.undo()
    found = headers_of(tiny.path)
    assert found.current.slots[0].key_id.hex() == key.key_id  # the newer primary won
    assert found.problems == ["backup header copy is stale"]
    b = open_backend(tiny.path)
    back = bytearray(8192)
    await b.submit(Bio.read(0, back, BioCryptContext.at(key, 9)))
    assert back == data
    await b.close()


# --- keyslots under pressure --------------------------------------------------------------------


async def test_more_keys_than_slots_concurrently_wait_and_reuse_slots(
    tiny: InlineEncryptionEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_mod, "INLINE_IO_MAX", 0)  # every I/O overlaps in a worker thread
    keys = [new_key() for _ in range(5)]
    plaintexts = {i: os.urandom(4096) for i in range(20)}

    async def writer(i: int) -> None:
        key = keys[i % len(keys)]
        await tiny.submit(Bio.write(i * 4096, plaintexts[i], BioCryptContext.at(key, i)))

    async with trio.open_nursery() as nursery:
        for i in plaintexts:
            nursery.start_soon(writer, i)
    profile = tiny.crypto_profile
    assert profile is not None
    c = profile.counters
    assert c["waits"] >= 1 and c["programs"] >= len(keys) and c["evictions"] >= len(keys) - 2
    assert c["programs"] + c["hits"] == len(plaintexts)
    for i, plaintext in plaintexts.items():
        key = keys[i % len(keys)]
        assert stored(tiny.path, i * 4096, 4096) == get_cipher(key).encrypt(plaintext, i)
        back = bytearray(4096)
        await tiny.submit(Bio.read(i * 4096, back, BioCryptContext.at(key, i)))
        assert back == plaintext
    await tiny.close()


async def test_a_new_key_takes_the_least_recently_released_slot(
    tiny: InlineEncryptionEngine,
) -> None:
    a, b, c = new_key(), new_key(), new_key()
    for key in (a, b, a, c):
        await tiny.submit(Bio.write(0, bytes(4096), BioCryptContext.at(key, 0)))
    profile = tiny.crypto_profile
    assert profile is not None
    assert profile.find_slot(a) == 0 and profile.find_slot(c) == 1 and profile.find_slot(b) is None
    counts = profile.counters
    assert (counts["programs"], counts["hits"], counts["evictions"]) == (3, 1, 1)
    await tiny.close()


async def test_no_raw_key_bytes_anywhere_in_the_image_after_heavy_use(
    make_backend: MakeBackend,
) -> None:
    b = make_backend("scan", 8 * MiB, "tiny")
    keys = [new_key(dus=512 << (i % 4)) for i in range(12)]
    for round_ in range(3):
        for i, key in enumerate(keys):
            await b.submit(
                Bio.write((i * 3 + round_) * 4096, os.urandom(4096), BioCryptContext.at(key, i))
            )
        await b.flush()
    await b.close()
    image = whole_image(b.path)
    for key in keys:
        half = len(key.raw) // 2
        for needle in (key.raw, key.raw[:half], key.raw[half:]):
            assert needle not in image


# --- direct engines ---------------------------------------------------------------------------


async def test_direct_engine_has_a_passthrough_profile_and_caches_expanded_keys(
    make_backend: MakeBackend,
) -> None:
    b = make_backend("direct", 4 * MiB, "direct")
    profile = b.crypto_profile
    assert profile is not None and profile.num_slots == 0
    key = new_key(mode=CryptoMode.SM4_XTS, dun_bytes=16)
    data = os.urandom(8192)
    await b.submit(Bio.write(0, data, BioCryptContext.at(key, 3)))
    back = bytearray(8192)
    await b.submit(Bio.read(0, back, BioCryptContext.at(key, 3)))
    assert back == data and stored(b.path, 0, 8192) == get_cipher(key).encrypt(data, 3)
    assert (b.counters["direct_cipher_expansions"], b.counters["direct_cipher_hits"]) == (1, 1)
    await profile.evict_key(key)  # forwarded to the engine: the expanded key is forgotten
    await b.submit(Bio.read(0, back, BioCryptContext.at(key, 3)))
    assert b.counters["direct_cipher_expansions"] == 2
    await b.close()
    assert headers_of(b.path).current.slots == ()


# --- the data area as a loop device sees it -------------------------------------------------------


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("losetup") is None, reason="needs root and losetup"
)
async def test_losetup_at_the_data_offset_shows_the_stored_ciphertext(
    tiny_file: InlineEncryptionEngine,
) -> None:
    key = new_key()
    plaintext = os.urandom(4 * 4096)
    await tiny_file.submit(Bio.write(64 * 1024, plaintext, BioCryptContext.at(key, 42)))
    await tiny_file.close()
    loop = subprocess.run(
        ["losetup", "--find", "--show", "--read-only", "-o", str(DATA_OFFSET),
         "--sizelimit", str(tiny_file.size), str(tiny_file.path)],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    try:
        with open(loop, "rb") as dev:
            assert dev.seek(0, os.SEEK_END) == tiny_file.size
            dev.seek(64 * 1024)
            assert dev.read(len(plaintext)) == get_cipher(key).encrypt(plaintext, 42)
    finally:
        subprocess.run(["losetup", "-d", loop], check=True)


async def test_create_with_overwrite_refuses_an_attached_image_and_keeps_it(
    tiny: InlineEncryptionEngine,
) -> None:
    await tiny.submit(Bio.write(0, b"\x77" * 4096))
    with pytest.raises(FuseblkError) as err:
        create_backend(tiny.path, MiB, load_profile("ufs"), overwrite=True)
    assert err.value.errno == errno.EBUSY
    assert stored(tiny.path, 0, 4096) == b"\x77" * 4096
    assert headers_of(tiny.path).current.hardware == load_profile("tiny")
    await tiny.close()


async def test_evicting_a_key_shows_in_the_keyslot_table_at_the_next_flush(
    tiny: InlineEncryptionEngine,
) -> None:
    key = new_key()
    await tiny.submit(Bio.write(0, bytes(4096), BioCryptContext.at(key, 0)))
    await tiny.flush()
    assert headers_of(tiny.path).current.slots[0].programmed
    assert tiny.crypto_profile is not None
    await tiny.crypto_profile.evict_key(key)
    await tiny.flush()
    slot = headers_of(tiny.path).current.slots[0]
    assert not slot.programmed and slot.generation == 2
    await tiny.close()


@pytest.mark.parametrize(
    "change, complaint",
    [
        ({"version": 2}, "format version 2 is newer than this fuseblk supports"),
        ({"kind": 9}, "unknown hardware kind 9"),
    ],
)
async def test_images_from_a_newer_fuseblk_are_refused_clearly(
    tiny: InlineEncryptionEngine, change: dict[str, int], complaint: str
) -> None:
    await tiny.close()
    current = headers_of(tiny.path).current
    container = image_format.HEADER.parse(current.to_bytes()).body.value
    if "version" in change:
        container.version = change["version"]
    else:
        container.hardware.kind = change["kind"]
    blob = image_format.HEADER.build({"body": {"value": container}})
    with opened(tiny.path) as storage:
        image_format.write_copy(storage, "primary", blob)
        image_format.write_copy(storage, "backup", blob)
    with pytest.raises(image_format.ImageFormatError, match=complaint):
        open_backend(tiny.path)


async def test_data_bios_never_wait_for_a_header_write_in_progress(
    tiny: InlineEncryptionEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = new_key()
    await tiny.submit(Bio.write(0, bytes(4096), BioCryptContext.at(key, 0)))  # table changed
    entered, release = threading.Event(), threading.Event()
    real_write_copy = image_format.write_copy

    def stalled_write_copy(storage: Storage, name: str, blob: bytes) -> None:
        entered.set()
        release.wait(30)
        real_write_copy(storage, name, blob)

    monkeypatch.setattr(image_format, "write_copy", stalled_write_copy)
    data = os.urandom(8192)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(tiny.flush)
        await trio.to_thread.run_sync(entered.wait, 30)  # the header write is under way...
        await tiny.submit(Bio.write(8192, data, BioCryptContext.at(key, 2)))
        back = bytearray(8192)
        await tiny.submit(Bio.read(8192, back, BioCryptContext.at(key, 2)))
        assert back == data  # ...and data I/O went ahead without it
        assert tiny.counters["header_writes"] == 0
        release.set()
    assert tiny.counters["header_writes"] == 1
    await tiny.close()


# --- the Backend protocol -------------------------------------------------------------------------


async def test_backend_offers_the_backend_protocol_with_hardware_answers(
    tiny: InlineEncryptionEngine,
) -> None:
    assert isinstance(tiny, Backend)
    assert isinstance(tiny.path, str) and tiny.info()["path"] == tiny.path
    assert tiny.block_size == 512 and tiny.fallback_per_target is False
    assert tiny.open_count == 0
    tiny.open()
    tiny.open()
    tiny.release()
    assert tiny.open_count == 1
    await tiny.close()


async def test_evict_key_of_a_key_in_no_slot_succeeds(tiny: InlineEncryptionEngine) -> None:
    await tiny.evict_key(new_key())
    assert tiny.crypto_profile is not None
    assert tiny.crypto_profile.counters["evictions"] == 0
    await tiny.close()


async def test_evict_key_empties_the_slot_of_an_idle_key(tiny: InlineEncryptionEngine) -> None:
    key = new_key()
    await tiny.submit(Bio.write(0, bytes(4096), BioCryptContext.at(key, 0)))
    profile = tiny.crypto_profile
    assert profile is not None and profile.find_slot(key) is not None
    await tiny.evict_key(key)
    assert profile.find_slot(key) is None
    await tiny.close()


async def test_evict_busy_slot_returns_ebusy(tiny: InlineEncryptionEngine) -> None:
    key = new_key()
    profile = tiny.crypto_profile
    assert profile is not None
    async with profile.keyslot(key):  # a request in flight holds the slot
        with pytest.raises(FuseblkError) as err:
            await tiny.evict_key(key)
        assert err.value.errno == errno.EBUSY
    await tiny.evict_key(key)
    assert profile.find_slot(key) is None
    await tiny.close()


async def test_evict_key_the_hardware_cannot_hold_is_success(
    tiny: InlineEncryptionEngine,
) -> None:
    await tiny.evict_key(new_key(mode=CryptoMode.ADIANTUM))  # tiny does AES-256-XTS only
    await tiny.close()


async def test_evict_key_on_hardware_without_inline_encryption_is_success(
    make_backend: MakeBackend,
) -> None:
    b = make_backend("n", MiB, "none")
    await b.evict_key(new_key())
    await b.close()


async def test_evict_key_on_a_direct_engine_forgets_the_expanded_key(
    make_backend: MakeBackend,
) -> None:
    b = make_backend("direct", MiB, "direct")
    key = new_key()
    await b.submit(Bio.write(0, bytes(4096), BioCryptContext.at(key, 0)))
    await b.evict_key(key)
    await b.submit(Bio.write(0, bytes(4096), BioCryptContext.at(key, 0)))
    assert b.counters["direct_cipher_expansions"] == 2
    await b.close()


async def test_programming_a_keyslot_expands_the_key_in_the_hardware(
    tiny: InlineEncryptionEngine,
) -> None:
    key = new_key()
    profile = tiny.crypto_profile
    assert profile is not None and profile.ops is not None
    cipher = await profile.ops.program_key(key, 0)
    assert cipher is not None
    plaintext = os.urandom(4096)
    assert cipher.encrypt(plaintext, 7) == get_cipher(key).encrypt(plaintext, 7)
    await tiny.close()
    with pytest.raises(FuseblkError) as err:
        await profile.ops.program_key(key, 0)
    assert err.value.errno == errno.EIO  # detached hardware programs nothing
