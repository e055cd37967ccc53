"""The on-disk header: every field round-trips, damage is reported precisely, updates are crash-safe."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fuseblk.capabilities import CryptoCapabilities
from fuseblk.errors import FuseblkError, ImageFormatError
from fuseblk.hw import image_format
from fuseblk.hw.factory import open_storage
from fuseblk.hw.file_storage import create_image_file
from fuseblk.hw.image_format import (
    BACKUP_OFFSET,
    BODY_SIZE,
    DATA_OFFSET,
    HEADER,
    HEADER_SIZE,
    HeaderSet,
    ImageHeader,
    SlotRecord,
    SlotRecordState,
    read_headers,
    write_headers,
)
from fuseblk.hw.profiles import HardwareKind, HardwareProfile, load_profile
from fuseblk.hw.storage import Storage
from fuseblk.key import CryptoConfig, KeyType
from fuseblk.modes import CryptoMode

MiB = 1 << 20


def programmed(i: int) -> SlotRecord:
    config = CryptoConfig(CryptoMode.AES_256_XTS, 512 << (i % 4), 8)
    return SlotRecord(SlotRecordState.PROGRAMMED, config, bytes([i]) * 16, generation=1000 + i)


def full_header(**changes: object) -> ImageHeader:
    hardware = HardwareProfile(
        HardwareKind.KEYSLOTS,
        4,
        CryptoCapabilities(
            {CryptoMode.AES_256_XTS: 512 | 4096, CryptoMode.ADIANTUM: 4096},
            8,
            KeyType.RAW | KeyType.HW_WRAPPED,
        ),
    )
    header = ImageHeader(
        hardware=hardware,
        data_size=3 * MiB + 512,
        uuid=uuid.UUID("12345678-1234-5678-1234-567812345678"),
        label="döner disk ✓",
        sequence=(1 << 64) - 2,
        clean_shutdown=False,
        data_offset=2 * MiB,
        slots=(programmed(0), SlotRecord(generation=7), programmed(2), programmed(3)),
    )
    return replace(header, **changes)  # type: ignore[arg-type]


def reseal(data: bytes | bytearray) -> bytes:
    """The copy with its checksum recomputed (to reach the checks behind the checksum)."""
    body = bytes(data[:BODY_SIZE])
    return body + hashlib.sha256(body).digest()


def rebuilt(header: ImageHeader, **hardware_fields: int) -> bytes:
    """Re-encode a header with raw hardware fields the typed classes would refuse to build."""
    container = HEADER.parse(header.to_bytes())
    body = container.body.value
    for name, value in hardware_fields.items():
        body.hardware[name] = value
    data: bytes = HEADER.build({"body": {"value": body}})
    return data


# --- round trip -----------------------------------------------------------------------------


def test_every_header_field_round_trips() -> None:
    header = full_header()
    data = header.to_bytes()
    assert len(data) == HEADER_SIZE
    parsed = ImageHeader.from_bytes(data)
    assert parsed == header
    assert parsed.hardware.caps.key_types == KeyType.RAW | KeyType.HW_WRAPPED
    assert parsed.slots[0].key_id == bytes(16) and parsed.slots[3].generation == 1003
    assert parsed.label == "döner disk ✓" and parsed.sequence == (1 << 64) - 2
    assert parsed.to_bytes() == data


@pytest.mark.parametrize("name", ["ufs", "emmc", "direct", "none", "tiny"])
def test_every_shipped_hardware_round_trips(name: str) -> None:
    header = ImageHeader(load_profile(name), 64 * MiB, label=name)
    parsed = ImageHeader.from_bytes(header.to_bytes())
    assert parsed == header
    assert parsed.hardware == load_profile(name)
    expected_slots = header.hardware.num_slots if name in ("ufs", "emmc", "tiny") else 0
    assert len(parsed.slots) == expected_slots


def test_clean_shutdown_flag_round_trips_both_ways() -> None:
    for clean in (True, False):
        assert (
            ImageHeader.from_bytes(full_header(clean_shutdown=clean).to_bytes()).clean_shutdown
            is clean
        )


def test_header_never_holds_anything_but_identifiers() -> None:
    data = full_header().to_bytes()
    assert data.startswith(b"FBLKIMG\x00")
    assert data[-32:] == hashlib.sha256(data[:-32]).digest()


def test_building_refuses_inconsistent_headers() -> None:
    with pytest.raises(ImageFormatError, match="keyslot table has 1 entries"):
        full_header(slots=(SlotRecord(),))
    with pytest.raises(ImageFormatError, match="1 MiB-aligned"):
        full_header(data_offset=DATA_OFFSET + 4096)
    with pytest.raises(ImageFormatError, match="multiple of 512"):
        full_header(data_size=1000)
    with pytest.raises(ImageFormatError, match="label longer"):
        full_header(label="x" * 65)
    with pytest.raises(ImageFormatError, match="not encodable"):
        full_header(label="\ud800")


# --- damage -----------------------------------------------------------------------------------


def test_truncated_copy_is_reported() -> None:
    data = full_header().to_bytes()
    with pytest.raises(ImageFormatError, match="truncated"):
        ImageHeader.from_bytes(data[:100])
    with pytest.raises(ImageFormatError, match="truncated"):
        ImageHeader.from_bytes(data[:5])


def test_wrong_magic_is_reported() -> None:
    data = bytearray(full_header().to_bytes())
    data[0:8] = b"LUKS\xba\xbe\x00\x02"
    with pytest.raises(ImageFormatError, match="bad magic"):
        ImageHeader.from_bytes(reseal(data))


def test_future_version_is_refused_with_a_clear_message() -> None:
    data = full_header(version=2).to_bytes()
    with pytest.raises(ImageFormatError, match="format version 2 is newer .* supports \\(1\\)"):
        ImageHeader.from_bytes(data)


def test_unknown_hardware_kind_is_refused() -> None:
    data = rebuilt(full_header(), kind=9)
    with pytest.raises(ImageFormatError, match="unknown hardware kind 9"):
        ImageHeader.from_bytes(data)


def test_unknown_crypto_mode_number_is_refused() -> None:
    header = full_header()
    container = HEADER.parse(header.to_bytes())
    container.body.value.hardware.modes[0].mode = 42
    data = HEADER.build({"body": {"value": container.body.value}})
    with pytest.raises(ImageFormatError, match="unknown crypto mode number 42"):
        ImageHeader.from_bytes(data)


def test_bad_checksum_is_reported() -> None:
    data = bytearray(full_header().to_bytes())
    data[40] ^= 0x01
    with pytest.raises(ImageFormatError, match="bad checksum"):
        ImageHeader.from_bytes(bytes(data))


def test_damage_in_the_reserved_space_is_caught_by_the_checksum() -> None:
    data = bytearray(full_header().to_bytes())
    data[BODY_SIZE - 1] = 0xFF
    with pytest.raises(ImageFormatError, match="bad checksum"):
        ImageHeader.from_bytes(bytes(data))


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=HEADER_SIZE + 16))
def test_parsing_arbitrary_bytes_raises_only_image_format_error(data: bytes) -> None:
    try:
        ImageHeader.from_bytes(data)
    except ImageFormatError:
        pass


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 700), st.integers(0, 255)), min_size=1, max_size=8),
    st.booleans(),
)
def test_parsing_mutated_headers_raises_only_image_format_error(
    edits: list[tuple[int, int]], keep_checksum_valid: bool
) -> None:
    """Byte edits in the meaningful part, resealed or not: parse cleanly or fail with a reason."""
    data = bytearray(full_header().to_bytes())
    for offset, value in edits:
        data[offset] = value
    blob = reseal(data) if keep_checksum_valid else bytes(data)
    try:
        header = ImageHeader.from_bytes(blob)
    except ImageFormatError as exc:
        assert exc.message
    else:
        assert ImageHeader.from_bytes(header.to_bytes()) == header


# --- two copies on disk ------------------------------------------------------------------------


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    create_image_file(path, load_profile("tiny"), 8 * MiB, label="t")
    return path


@contextmanager
def opened(ref: str | Path) -> Iterator[Storage]:
    """The image's storage, without its lock (as an inspector looks at it)."""
    storage = open_storage(ref)
    try:
        yield storage
    finally:
        storage.close()


def headers_of(ref: str | Path) -> HeaderSet:
    """Both header copies of an image file or any other storage reference."""
    with opened(ref) as storage:
        return read_headers(storage)


def corrupt(path: Path, offset: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset + 100)
        f.write(b"\xde\xad\xbe\xef")


def test_created_image_is_sparse_with_two_identical_copies(image: Path) -> None:
    st_ = image.stat()
    assert st_.st_size == DATA_OFFSET + 8 * MiB
    assert st_.st_blocks * 512 <= 2 * HEADER_SIZE + 64 * 1024  # only the headers are allocated
    headers = headers_of(image)
    assert headers.primary.valid and headers.backup.valid and headers.problems == []
    assert headers.current.label == "t" and headers.current.clean_shutdown


def test_creating_over_an_existing_file_needs_overwrite(image: Path) -> None:
    with pytest.raises(FuseblkError, match="already exists"):
        create_image_file(image, load_profile("ufs"), 8 * MiB)
    create_image_file(image, load_profile("ufs"), 4 * MiB, overwrite=True)
    assert headers_of(image).current.hardware.num_slots == 32
    assert image.stat().st_size == DATA_OFFSET + 4 * MiB


@pytest.mark.parametrize("bad, good", [("primary", "backup"), ("backup", "primary")])
def test_one_bad_copy_still_opens_from_the_other_and_says_so(
    image: Path, bad: str, good: str
) -> None:
    corrupt(image, image_format.COPY_OFFSETS[bad])
    headers = headers_of(image)
    assert headers.current.label == "t"
    assert headers.problems == [f"{bad} header copy is damaged: bad checksum"]


def test_both_bad_copies_name_what_is_wrong_with_each(image: Path) -> None:
    with image.open("r+b") as f:
        f.write(b"NOTMAGIC")
    corrupt(image, BACKUP_OFFSET)
    with pytest.raises(ImageFormatError) as err:
        _ = headers_of(image).current
    assert "primary copy at offset 0: bad magic" in err.value.message
    assert f"backup copy at offset {BACKUP_OFFSET}: bad checksum" in err.value.message


def test_a_newer_version_in_either_copy_refuses_the_image(image: Path) -> None:
    with opened(image) as storage:
        current = read_headers(storage).current
        backup = replace(current, version=3, sequence=9).to_bytes()
        image_format.write_copy(storage, "backup", backup)
        with pytest.raises(ImageFormatError, match="backup header: format version 3 is newer"):
            read_headers(storage)


def test_the_valid_copy_with_the_highest_sequence_wins(image: Path) -> None:
    with opened(image) as storage:
        current = read_headers(storage).current
        image_format.write_copy(
            storage, "backup", replace(current, sequence=5, label="newer").to_bytes()
        )
        headers = read_headers(storage)
        assert headers.current.label == "newer"
        assert headers.problems == ["primary header copy is stale"]


def test_update_interrupted_after_the_first_copy_keeps_the_new_header(
    image: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write_copy = image_format.write_copy

    def crash_before_backup(storage: Storage, name: str, data: bytes) -> None:
        if name == "backup":
            raise KeyboardInterrupt("power cut")  # after the primary was written and synced
        real_write_copy(storage, name, data)

    with opened(image) as storage:
        old = read_headers(storage).current
        new = replace(old, sequence=old.sequence + 1, slots=(programmed(0), SlotRecord()))
        monkeypatch.setattr(image_format, "write_copy", crash_before_backup)
        with pytest.raises(KeyboardInterrupt):
            write_headers(storage, new)
        monkeypatch.undo()
        headers = read_headers(storage)
    assert headers.current == new
    assert headers.backup.header == old


def test_torn_write_of_the_first_copy_falls_back_to_the_old_header(image: Path) -> None:
    with opened(image) as storage:
        old = read_headers(storage).current
        new = replace(old, sequence=old.sequence + 1, label="never finished")
        storage.write(new.to_bytes()[:1000], 0)  # the crash tore the primary mid-write
        headers = read_headers(storage)
    assert headers.current == old
    assert headers.problems == ["primary header copy is damaged: bad checksum"]


# --- property: any valid header survives build and parse --------------------------------------

MODES = st.sampled_from(list(CryptoMode))
DUS_MASKS = st.integers(1, (1 << 17) - 1).map(lambda m: m & ~0xF or 512)


@st.composite
def hardware_profiles(draw: st.DrawFn) -> HardwareProfile:
    kind = draw(st.sampled_from(list(HardwareKind)))
    if kind is HardwareKind.NONE:
        return HardwareProfile.none()
    modes = draw(st.dictionaries(MODES, DUS_MASKS, min_size=1))
    key_types = draw(
        st.sampled_from([KeyType.RAW, KeyType.HW_WRAPPED, KeyType.RAW | KeyType.HW_WRAPPED])
    )
    caps = CryptoCapabilities(modes, draw(st.integers(1, 32)), key_types)
    slots = draw(st.integers(1, 255)) if kind is HardwareKind.KEYSLOTS else 0
    return HardwareProfile(kind, slots, caps)


@st.composite
def slot_records(draw: st.DrawFn) -> SlotRecord:
    generation = draw(st.integers(0, (1 << 64) - 1))
    if not draw(st.booleans()):
        return SlotRecord(generation=generation)
    config = CryptoConfig(draw(MODES), 1 << draw(st.integers(4, 16)), draw(st.integers(1, 32)))
    return SlotRecord(
        SlotRecordState.PROGRAMMED, config, draw(st.binary(min_size=16, max_size=16)), generation
    )


@st.composite
def image_headers(draw: st.DrawFn) -> ImageHeader:
    hardware = draw(hardware_profiles())
    n = hardware.num_slots if hardware.kind is HardwareKind.KEYSLOTS else 0
    return ImageHeader(
        hardware=hardware,
        data_size=draw(st.integers(1, 1 << 40)) * 512,
        uuid=uuid.UUID(bytes=draw(st.binary(min_size=16, max_size=16))),
        label=draw(
            st.text(
                st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)),
                max_size=16,
            )
        ),
        sequence=draw(st.integers(0, (1 << 64) - 1)),
        clean_shutdown=draw(st.booleans()),
        data_offset=draw(st.integers(1, 1 << 20)) * MiB,
        slots=tuple(draw(st.lists(slot_records(), min_size=n, max_size=n))),
    )


@settings(max_examples=150, deadline=None)
@given(image_headers())
def test_any_valid_header_round_trips_exactly(header: ImageHeader) -> None:
    data = header.to_bytes()
    assert len(data) == HEADER_SIZE
    assert ImageHeader.from_bytes(data) == header


def test_a_failed_creation_leaves_no_file_behind(tmp_path: Path) -> None:
    path = tmp_path / "huge.img"
    with pytest.raises(FuseblkError) as err:
        create_image_file(path, load_profile("tiny"), 1 << 62)  # beyond any file system's limit
    assert "cannot create" in err.value.message
    assert not path.exists()


# -- the holder record (in what format version 1 reserved) ----------------------------------------

# The body as format version 1 declared it, before the holder record and the wrapping secret:
# what an older fuseblk builds and parses.
_LATER_FIELDS = ("_end", "_reserved", "wrapping_secret", "_reserved2", "holder")
_V1_BODY = image_format.cs.Struct(
    *(s for s in image_format._BODY.subcons if s.name not in _LATER_FIELDS)
)
_V1_HEADER = image_format._sealed(image_format.cs.Padded(BODY_SIZE, _V1_BODY))


def v1_bytes(header: ImageHeader) -> bytes:
    """``header`` as a fuseblk that predates the holder record writes it."""
    body = HEADER.parse(header.to_bytes()).body.value
    data: bytes = _V1_HEADER.build({"body": {"value": body}})
    return data


def test_holder_round_trips() -> None:
    holder = image_format.Holder("storage-1", 4242, 1_700_000_000_123_456_789)
    header = full_header(holder=holder)
    assert ImageHeader.from_bytes(header.to_bytes()) == header
    assert "pid 4242 on storage-1" in holder.describe()


def test_a_header_without_holder_is_byte_identical_to_format_version_1() -> None:
    header = full_header(wrapping_secret=None)
    assert header.version == 1
    assert header.to_bytes() == v1_bytes(header)


def test_an_image_written_before_the_holder_record_opens(tmp_path: Path) -> None:
    path = tmp_path / "old.img"
    header = create_image_file(path, load_profile("ufs"), MiB)
    old = v1_bytes(replace(header, sequence=7))
    with open(path, "r+b") as f:
        for offset in (0, BACKUP_OFFSET):
            f.seek(offset)
            f.write(old)
    storage = open_storage(path)
    try:
        current = read_headers(storage).current
    finally:
        storage.close()
    assert current.sequence == 7 and current.holder is None and current.uuid == header.uuid


def test_a_fuseblk_that_predates_the_holder_record_reads_a_header_holding_one() -> None:
    header = full_header(holder=image_format.Holder("storage-1", 4242, 1))
    parsed = _V1_HEADER.parse(header.to_bytes()).body.value
    assert parsed.sequence == header.sequence and parsed.data_size == header.data_size
