"""The backend image's on-disk header: declared once with ``construct``, two copies, crash-safe.

Layout of an image, in a file or any other storage (all integers little-endian)::

    0        primary header copy   (HEADER_SIZE = 16 KiB)
    512 KiB  backup header copy    (HEADER_SIZE)
    1 MiB    data area: data_size bytes of plain sectors (ciphertext as the hardware stored it)

so ``losetup -o 1048576`` on an image shows the stored sectors directly. Each copy is::

    magic "FBLKIMG\\0" | version u16 | header_size u32       stable in every format version
    uuid[16] | label[64] utf-8, NUL padded | sequence u64 | flags u32 (bit 0: clean shutdown)
    data_offset u64 | data_size u64
    hardware: kind u8 | num_slots u16 | max_dun_bytes u8 | key_types u8 | mode_count u8
              mode_count x (mode u8, data-unit-size bitmask u32)
    slot_count u16 | slot_count x (state u8, mode u8, data_unit_size u32, dun_bytes u8,
                                   key_id[16], generation u64)
    reserved: zeroes up to the wrapping secret
    wrapping secret (at header_size - 1120): 32 bytes, the hardware's long-term key-wrapping
              secret; zeroes in images that never had one
    reserved: zeroes up to the holder record
    holder (at header_size - 1056): pid u32 | started_ns u64 | host[64] utf-8, NUL padded
              who has the image attached (pid 0: nobody); zeroes in images that never had one
    sha256 of everything above (last 32 bytes of the copy)

The keyslot table is for inspection only: a slot records its configuration and the key's
one-way identifier, never key bytes. Counts (``mode_count``, ``slot_count``) and the checksum are
derived when building, so a header is built from values alone.

Crash safety: an update writes and fsyncs the primary, then the backup, both with the new
sequence number. Reading takes the valid copy with the highest sequence number, so a crash at any
point leaves either the old or the new header readable. A copy with a valid checksum but a newer
format version refuses the whole image (its writer knew things we don't). So that "newer" can be
told from "damaged", every format version keeps the magic, version and header_size (16 KiB) at
the start and the SHA-256 in the copy's last 32 bytes; new fields go into the reserved space.

The holder record is such a field: it lies in what format version 1 reserved, so images without
one read as "nobody holds it", and a fuseblk that predates it keeps reading these images (it
ignores the reserved bytes; the checksum covers them either way). Storage that cannot be locked
by the kernel (an NBD export, shared between machines) is claimed through it.

The wrapping secret is another: the key the emulated hardware wraps long-term blobs of
hardware-wrapped keys with (:mod:`fuseblk.hw.wrapping`). It stands for a key fused into the
silicon, so it is part of the image and nothing else: no verb outputs it, ``repr`` of a header
leaves it out, and an image without one gets one when attached.
"""

from __future__ import annotations

import enum
import hashlib
import os
import time
import uuid as uuid_mod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import construct as cs
from construct import this

from fuseblk.capabilities import CryptoCapabilities
from fuseblk.errors import FuseblkError, ImageFormatError
from fuseblk.hw.profiles import MAX_KEYSLOTS, HardwareKind, HardwareProfile
from fuseblk.key import KEY_IDENTIFIER_SIZE, CryptoConfig, KeyType
from fuseblk.modes import CryptoMode

if TYPE_CHECKING:
    from fuseblk.hw.storage import Storage

MAGIC = b"FBLKIMG\x00"
FORMAT_VERSION = 1
HEADER_SIZE = 16 * 1024
CHECKSUM_SIZE = 32
BODY_SIZE = HEADER_SIZE - CHECKSUM_SIZE
PRIMARY_OFFSET = 0
BACKUP_OFFSET = 512 * 1024
DATA_ALIGNMENT = 1024 * 1024
DATA_OFFSET = DATA_ALIGNMENT
LABEL_SIZE = 64
HOST_SIZE = 64
HOLDER_AREA = 1024  # the last bytes of the body, before the checksum
HOLDER_OFFSET = BODY_SIZE - HOLDER_AREA
WRAPPING_SECRET_SIZE = 32
WRAPPING_SECRET_OFFSET = HOLDER_OFFSET - 64  # 32 bytes, then 32 reserved before the holder
FLAG_CLEAN_SHUTDOWN = 1

# --- the format, as data -------------------------------------------------------------------

_PREFIX = cs.Struct(
    "magic" / cs.Bytes(len(MAGIC)),
    "version" / cs.Int16ul,
    "header_size" / cs.Int32ul,
)

_MODE_CAPABILITY = cs.Struct(
    "mode" / cs.Int8ul,  # CryptoMode value
    "dus_mask" / cs.Int32ul,  # bit i set: data units of 2^i bytes
)

_HARDWARE = cs.Struct(
    "kind" / cs.Int8ul,  # HardwareKind value
    "num_slots" / cs.Int16ul,
    "max_dun_bytes" / cs.Int8ul,
    "key_types" / cs.Int8ul,  # KeyType bitmask
    "mode_count" / cs.Rebuild(cs.Int8ul, cs.len_(this.modes)),
    "modes" / cs.Array(this.mode_count, _MODE_CAPABILITY),
)

_SLOT = cs.Struct(
    "state" / cs.Int8ul,  # SlotRecordState value
    "mode" / cs.Int8ul,  # CryptoMode value, 0 when empty
    "data_unit_size" / cs.Int32ul,
    "dun_bytes" / cs.Int8ul,
    "key_id" / cs.Bytes(KEY_IDENTIFIER_SIZE),
    "generation" / cs.Int64ul,
)

_HOLDER = cs.Struct(
    "pid" / cs.Int32ul,  # 0: nobody holds the image
    "started_ns" / cs.Int64ul,  # when the holding process started, ns since the epoch
    "host" / cs.PaddedString(HOST_SIZE, "utf8"),
)
_NO_HOLDER = {"pid": 0, "started_ns": 0, "host": ""}

_BODY = cs.Struct(
    "magic" / cs.Const(MAGIC),
    "version" / cs.Int16ul,
    "header_size" / cs.Int32ul,
    "uuid" / cs.Bytes(16),
    "label" / cs.PaddedString(LABEL_SIZE, "utf8"),
    "sequence" / cs.Int64ul,
    "flags" / cs.Int32ul,
    "data_offset" / cs.Int64ul,
    "data_size" / cs.Int64ul,
    "hardware" / _HARDWARE,
    "slot_count" / cs.Rebuild(cs.Int16ul, cs.len_(this.slots)),
    "slots" / cs.Array(this.slot_count, _SLOT),
    "_end" / cs.Tell,
    "_reserved" / cs.Padding(lambda ctx: WRAPPING_SECRET_OFFSET - ctx._end),
    "wrapping_secret" / cs.Default(cs.Bytes(WRAPPING_SECRET_SIZE), bytes(WRAPPING_SECRET_SIZE)),
    "_reserved2" / cs.Padding(HOLDER_OFFSET - WRAPPING_SECRET_OFFSET - WRAPPING_SECRET_SIZE),
    "holder" / cs.Default(_HOLDER, _NO_HOLDER),
)


def new_wrapping_secret() -> bytes:
    """A fresh long-term wrapping secret: what a new image's hardware has fused in."""
    return os.urandom(WRAPPING_SECRET_SIZE)


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _sealed(body: cs.Construct) -> cs.Construct:
    """A body followed by the SHA-256 of its bytes: one declaration for building and verifying."""
    return cs.Struct(
        "body" / cs.RawCopy(body),
        "checksum" / cs.Checksum(cs.Bytes(CHECKSUM_SIZE), _sha256, this.body.data),
    )


# The largest keyslot table must fit in a copy before the holder record.
assert MAX_KEYSLOTS * _SLOT.sizeof() + 1024 < WRAPPING_SECRET_OFFSET

HEADER = _sealed(cs.Padded(BODY_SIZE, _BODY))  # the whole copy, reserved space zero-filled
_ENVELOPE = _sealed(cs.Bytes(BODY_SIZE))  # verifies the checksum before interpreting anything


# --- typed views ------------------------------------------------------------------------------


class SlotRecordState(enum.Enum):
    EMPTY = 0
    PROGRAMMED = 1


@dataclass(frozen=True)
class SlotRecord:
    """One keyslot as recorded for inspection: configuration and key identifier, no key."""

    state: SlotRecordState = SlotRecordState.EMPTY
    config: CryptoConfig | None = None
    key_id: bytes = bytes(KEY_IDENTIFIER_SIZE)
    generation: int = 0

    @property
    def programmed(self) -> bool:
        return self.state is SlotRecordState.PROGRAMMED

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"state": self.state.name.lower(), "generation": self.generation}
        if self.config is not None:
            out.update(
                mode=self.config.mode.sysfs_name,
                data_unit_size=self.config.data_unit_size,
                dun_bytes=self.config.dun_bytes,
                key_id=self.key_id.hex(),
            )
        return out


@dataclass(frozen=True)
class Holder:
    """The process that has an image attached, as its header records it."""

    host: str
    pid: int
    started_ns: int  # when that process started: a reused pid is a different holder

    def describe(self) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.started_ns / 1e9))
        return f"pid {self.pid} on {self.host} (started {started})"

    def to_json(self) -> dict[str, Any]:
        return {"host": self.host, "pid": self.pid, "started_ns": self.started_ns}


@dataclass(frozen=True)
class ImageHeader:
    """One parsed (or to-be-built) header copy."""

    hardware: HardwareProfile
    data_size: int
    uuid: uuid_mod.UUID = field(default_factory=uuid_mod.uuid4)
    label: str = ""
    sequence: int = 1
    clean_shutdown: bool = True
    data_offset: int = DATA_OFFSET
    slots: tuple[SlotRecord, ...] = ()
    version: int = FORMAT_VERSION
    holder: Holder | None = None  # who has it attached (recorded by storages claimed this way)
    # The long-term key-wrapping secret (fuseblk.hw.wrapping), drawn for every new header; None
    # in images without one. Never shown, and not part of a header's equality.
    wrapping_secret: bytes | None = field(
        default_factory=lambda: new_wrapping_secret(), repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if not self.slots and self.hardware.kind is HardwareKind.KEYSLOTS:
            object.__setattr__(self, "slots", (SlotRecord(),) * self.hardware.num_slots)
        _validate(self)

    @property
    def image_size(self) -> int:
        return self.data_offset + self.data_size

    def empty_slots(self) -> tuple[SlotRecord, ...]:
        return (SlotRecord(),) * len(self.slots)

    def to_bytes(self) -> bytes:
        hw = self.hardware
        body = {
            "version": self.version,
            "header_size": HEADER_SIZE,
            "uuid": self.uuid.bytes,
            "label": self.label,
            "sequence": self.sequence,
            "flags": FLAG_CLEAN_SHUTDOWN if self.clean_shutdown else 0,
            "data_offset": self.data_offset,
            "data_size": self.data_size,
            "hardware": {
                "kind": hw.kind.value,
                "num_slots": hw.num_slots,
                "max_dun_bytes": hw.caps.max_dun_bytes,
                "key_types": int(hw.caps.key_types),
                "modes": [{"mode": m.value, "dus_mask": mask} for m, mask in hw.caps.modes.items()],
            },
            "slots": [_slot_container(s) for s in self.slots],
            "holder": _holder_container(self.holder),
            "wrapping_secret": self.wrapping_secret or bytes(WRAPPING_SECRET_SIZE),
        }
        try:
            data: bytes = HEADER.build({"body": {"value": body}})
        except cs.ConstructError as exc:
            raise ImageFormatError(f"cannot build header: {exc}") from exc
        return data

    @classmethod
    def from_bytes(cls, data: bytes) -> ImageHeader:
        """Parse one copy; anything wrong is an ImageFormatError saying what."""
        if len(data) < _PREFIX.sizeof():
            raise ImageFormatError(f"truncated: {len(data)} bytes, no header")
        prefix = _PREFIX.parse(data)
        if prefix.magic != MAGIC:
            raise ImageFormatError("bad magic (not a fuseblk image header)")
        if prefix.header_size != HEADER_SIZE:  # fixed in every version, see the module docstring
            raise ImageFormatError(f"bad header size {prefix.header_size} (expected {HEADER_SIZE})")
        if len(data) < HEADER_SIZE:
            raise ImageFormatError(f"truncated: {len(data)} of {HEADER_SIZE} header bytes")
        try:
            _ENVELOPE.parse(data[:HEADER_SIZE])
        except cs.ChecksumError:
            raise ImageFormatError("bad checksum") from None
        if prefix.version > FORMAT_VERSION:
            raise _newer_version(prefix.version)
        if prefix.version < 1:
            raise ImageFormatError(f"bad format version {prefix.version}")
        try:
            parsed = HEADER.parse(data[:HEADER_SIZE]).body.value
        except (cs.ConstructError, UnicodeDecodeError) as exc:
            raise ImageFormatError(f"malformed header: {exc}") from None
        return _from_container(parsed)


class NewerFormatError(ImageFormatError):
    """A copy written by a newer fuseblk: never to be overwritten by this one."""


def _newer_version(version: int) -> NewerFormatError:
    return NewerFormatError(
        f"format version {version} is newer than this fuseblk supports ({FORMAT_VERSION}); "
        "upgrade fuseblk to use this image"
    )


def _slot_container(slot: SlotRecord) -> dict[str, Any]:
    cfg = slot.config
    return {
        "state": slot.state.value,
        "mode": cfg.mode.value if cfg else 0,
        "data_unit_size": cfg.data_unit_size if cfg else 0,
        "dun_bytes": cfg.dun_bytes if cfg else 0,
        "key_id": slot.key_id,
        "generation": slot.generation,
    }


def _holder_container(holder: Holder | None) -> dict[str, Any]:
    if holder is None:
        return _NO_HOLDER
    return {"pid": holder.pid, "started_ns": holder.started_ns, "host": holder.host}


def _mode(value: int, where: str) -> CryptoMode:
    try:
        return CryptoMode(value)
    except ValueError:
        raise ImageFormatError(f"unknown crypto mode number {value} in {where}") from None


def _from_container(c: Any) -> ImageHeader:
    hw = c.hardware
    try:
        kind = HardwareKind(hw.kind)
    except ValueError:
        known = ", ".join(f"{k.value}={k.label}" for k in HardwareKind)
        raise ImageFormatError(
            f"unknown hardware kind {hw.kind} (known: {known}); written by a newer fuseblk?"
        ) from None
    modes: dict[CryptoMode, int] = {}
    for entry in hw.modes:
        mode = _mode(entry.mode, "hardware modes")
        if mode in modes:
            raise ImageFormatError(f"hardware mode {mode.sysfs_name} listed twice")
        modes[mode] = entry.dus_mask
    if hw.key_types & ~int(KeyType.RAW | KeyType.HW_WRAPPED):
        raise ImageFormatError(f"unknown key types bitmask {hw.key_types:#x}")
    caps = CryptoCapabilities(modes, hw.max_dun_bytes, KeyType(hw.key_types))
    try:
        hardware = HardwareProfile(kind, hw.num_slots, caps)
    except FuseblkError as exc:  # the profile's invariants
        raise ImageFormatError(f"inconsistent hardware descriptor: {exc}") from None
    slots = []
    for i, s in enumerate(c.slots):
        try:
            state = SlotRecordState(s.state)
        except ValueError:
            raise ImageFormatError(f"keyslot {i}: unknown state {s.state}") from None
        config = None
        if state is SlotRecordState.PROGRAMMED:
            config = CryptoConfig(_mode(s.mode, f"keyslot {i}"), s.data_unit_size, s.dun_bytes)
        slots.append(SlotRecord(state, config, bytes(s.key_id), s.generation))
    return ImageHeader(
        hardware=hardware,
        data_size=c.data_size,
        uuid=uuid_mod.UUID(bytes=bytes(c.uuid)),
        label=c.label,
        sequence=c.sequence,
        clean_shutdown=bool(c.flags & FLAG_CLEAN_SHUTDOWN),
        data_offset=c.data_offset,
        slots=tuple(slots),
        version=c.version,
        holder=Holder(c.holder.host, c.holder.pid, c.holder.started_ns) if c.holder.pid else None,
        wrapping_secret=bytes(c.wrapping_secret) if any(c.wrapping_secret) else None,
    )


def _validate(h: ImageHeader) -> None:
    """Semantic checks shared by building and parsing (parsing reports them as format errors)."""
    if h.data_offset < BACKUP_OFFSET + HEADER_SIZE or h.data_offset % DATA_ALIGNMENT:
        raise ImageFormatError(
            f"data offset {h.data_offset} is not a 1 MiB-aligned offset past the headers"
        )
    if h.data_size <= 0 or h.data_size % 512:
        raise ImageFormatError(f"data size {h.data_size} is not a positive multiple of 512")
    expected_slots = h.hardware.num_slots if h.hardware.kind is HardwareKind.KEYSLOTS else 0
    if len(h.slots) != expected_slots:
        raise ImageFormatError(
            f"keyslot table has {len(h.slots)} entries, hardware has {expected_slots} slots"
        )
    try:
        label_bytes = h.label.encode()
    except UnicodeEncodeError:
        raise ImageFormatError("label is not encodable as UTF-8") from None
    if len(label_bytes) > LABEL_SIZE:
        raise ImageFormatError(f"label longer than {LABEL_SIZE} bytes")
    if "\x00" in h.label:
        raise ImageFormatError("label contains a NUL character")
    if h.wrapping_secret is not None and (
        len(h.wrapping_secret) != WRAPPING_SECRET_SIZE or not any(h.wrapping_secret)
    ):
        raise ImageFormatError(
            f"the wrapping secret must be {WRAPPING_SECRET_SIZE} bytes, not all zero"
        )
    if not 0 <= h.sequence < 1 << 64:
        raise ImageFormatError(f"sequence number {h.sequence} out of range")


# --- reading and writing both copies ----------------------------------------------------------


COPY_OFFSETS = {"primary": PRIMARY_OFFSET, "backup": BACKUP_OFFSET}


@dataclass(frozen=True)
class HeaderCopy:
    """One copy as found on disk: parsed, or the reason it could not be."""

    name: str
    offset: int
    header: ImageHeader | None
    error: str | None = None
    newer: bool = False  # written by a newer format version

    @property
    def valid(self) -> bool:
        return self.header is not None

    def status(self) -> str:
        if self.header is None:
            return f"damaged: {self.error}"
        return f"ok (sequence {self.header.sequence})"


@dataclass(frozen=True)
class HeaderSet:
    """Both copies and the one to use: the valid copy with the highest sequence number."""

    primary: HeaderCopy
    backup: HeaderCopy

    @property
    def copies(self) -> tuple[HeaderCopy, HeaderCopy]:
        return (self.primary, self.backup)

    @property
    def current(self) -> ImageHeader:
        valid = [c.header for c in self.copies if c.header is not None]
        if not valid:
            raise ImageFormatError(
                "no valid header: "
                + "; ".join(f"{c.name} copy at offset {c.offset}: {c.error}" for c in self.copies)
            )
        return max(valid, key=lambda h: h.sequence)

    @property
    def problems(self) -> list[str]:
        """What is wrong with either copy (stale copies included), empty when both are current."""
        out = [f"{c.name} header copy is damaged: {c.error}" for c in self.copies if not c.valid]
        if self.primary.valid and self.backup.valid:
            a, b = self.primary.header, self.backup.header
            assert a is not None and b is not None
            if a.to_bytes() != b.to_bytes():
                older = self.primary if a.sequence < b.sequence else self.backup
                out.append(f"{older.name} header copy is stale")
        return out


def read_copy(storage: Storage, name: str) -> HeaderCopy:
    offset = COPY_OFFSETS[name]
    data = storage.read_header(offset, HEADER_SIZE)
    try:
        return HeaderCopy(name, offset, ImageHeader.from_bytes(data))
    except ImageFormatError as exc:
        return HeaderCopy(name, offset, None, exc.message, isinstance(exc, NewerFormatError))


def read_headers(storage: Storage) -> HeaderSet:
    """Both copies; refuses (ImageFormatError) if either is from a newer format version."""
    headers = HeaderSet(read_copy(storage, "primary"), read_copy(storage, "backup"))
    for copy in headers.copies:
        if copy.newer:
            raise NewerFormatError(f"{copy.name} header: {copy.error}")
    return headers


def write_copy(storage: Storage, name: str, data: bytes) -> None:
    """Write one copy and make it durable before anything else happens."""
    storage.write_header(COPY_OFFSETS[name], data)


def write_headers(storage: Storage, header: ImageHeader) -> None:
    """Crash-safe update: primary then backup, each durable before the next step."""
    data = header.to_bytes()
    write_copy(storage, "primary", data)
    write_copy(storage, "backup", data)
