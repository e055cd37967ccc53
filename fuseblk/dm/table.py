"""Device-mapper tables: dmsetup text in, constructed targets out (``struct dm_table``).

A table is one ``<start> <length> <target> <args...>`` line per target, in 512-byte sectors,
covering the device contiguously from sector 0; ``#`` starts a comment, blank lines are ignored.
Starts and lengths are u64 sector counts, as in dm, and the device ends by sector
``MAX_SECTORS``: its size in bytes is a file's size in the mount (``loff_t``, at most 2^63 - 1).
The text is what a dm ioctl carries: UTF-8 without NUL characters.
Parsing constructs every target (``ctr``) before anything else happens, so a malformed table is
refused as a whole: targets already built are destroyed and the caller's live table is never
touched. Errors name the line and the field.

The table also answers the questions dm core asks of it: which target covers an offset, which
devices lie below, what logical block size it needs, and which inline-encryption capabilities it
can offer (``dm_table_construct_crypto_profile``).
"""

from __future__ import annotations

import bisect
import errno
from typing import TYPE_CHECKING

from fuseblk import SECTOR_SIZE
from fuseblk.capabilities import CryptoCapabilities, intersect
from fuseblk.dm.targets.base import Target, TargetArgError, TargetEnv
from fuseblk.dm.targets.ctr_args import SECTOR_MAX, read_decimal
from fuseblk.dm.targets.registry import get_target, target_names
from fuseblk.errors import FuseblkError, TableError

if TYPE_CHECKING:
    from collections.abc import Callable

    from fuseblk.device import BlockDevice

DEFAULT_BLOCK_SIZE = SECTOR_SIZE
MAX_BYTES = (1 << 63) - 1  # the largest file, hence the largest device file in the mount
MAX_SECTORS = MAX_BYTES // SECTOR_SIZE


class Table:
    """Constructed targets in device order. Build with :meth:`parse`; release with :meth:`destroy`."""

    def __init__(self, targets: list[Target]) -> None:
        self.targets = targets
        self.starts = [t.begin for t in targets]
        self.size = sum(t.length for t in targets)
        # Computed when the table is loaded, like t->crypto_profile; beyond the kernel, computed
        # again when a device below changes its capabilities (fuseblk.dm.hw_change).
        self.crypto_caps = construct_crypto_caps(targets)

    @classmethod
    async def parse(cls, text: str, env: TargetEnv) -> Table:
        """Construct every target of ``text``; any error destroys what was built and raises TableError."""
        built: list[Target] = []
        try:
            next_sector = 0
            for lineno, raw in enumerate(text.splitlines(), start=1):
                _check_text(lineno, raw)
                fields = raw.split("#", 1)[0].split()
                if not fields:
                    continue
                target = _construct_line(lineno, fields, next_sector, env)
                built.append(target)
                next_sector += target.length // SECTOR_SIZE
        except BaseException:
            for target in reversed(built):
                await target.destroy()
            raise
        return cls(built)

    @property
    def is_empty(self) -> bool:
        return not self.targets

    def lines(self, show_keys: bool = False) -> list[tuple[int, int, str, str]]:
        """``(start, length, target, args)`` per target, sectors, as dmsetup table shows them."""
        return [
            (t.begin // SECTOR_SIZE, t.length // SECTOR_SIZE, t.name, t.table_args(show_keys))
            for t in self.targets
        ]

    def format(self, show_keys: bool = False) -> str:
        """dmsetup-table text; keys appear only with ``show_keys`` (targets decide how to hide them)."""
        return "".join(
            f"{start} {length} {name}{' ' + args if args else ''}\n"
            for start, length, name, args in self.lines(show_keys)
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Table):
            return NotImplemented
        return self.lines(show_keys=True) == other.lines(show_keys=True)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Table({len(self.targets)} targets, {self.size // SECTOR_SIZE} sectors)"

    def index_at(self, offset: int) -> int:
        """Index of the target covering byte ``offset`` (which must be inside the table)."""
        return bisect.bisect_right(self.starts, offset) - 1

    def target_at_sector(self, sector: int) -> Target:
        """The target covering ``sector``; EINVAL outside the table (``dm_table_find_target``)."""
        if not 0 <= sector < self.size // SECTOR_SIZE:
            raise FuseblkError(errno.EINVAL, f"sector {sector} is outside the table")
        return self.targets[self.index_at(sector * SECTOR_SIZE)]

    def devices(self) -> list[BlockDevice]:
        """Every device below, once each, in table order."""
        seen: dict[int, BlockDevice] = {}
        for target in self.targets:
            for dev in target.devices():
                seen.setdefault(id(dev), dev)
        return list(seen.values())

    def refresh_crypto_caps(self) -> bool:
        """Compute :attr:`crypto_caps` again from the devices below; True if they changed."""
        caps = construct_crypto_caps(self.targets)
        changed = caps != self.crypto_caps
        self.crypto_caps = caps
        return changed

    @property
    def block_size(self) -> int:
        """The logical block size: the largest ``io_granularity`` of any target."""
        return max(
            (t.io_granularity for t in self.targets),
            default=DEFAULT_BLOCK_SIZE,
        )

    async def destroy(self) -> None:
        """``dtr`` every target (the table was replaced or its device removed)."""
        for target in reversed(self.targets):
            await target.destroy()


def _check_text(lineno: int, raw: str) -> None:
    """A dm ioctl carries C strings of UTF-8: no NUL, no lone surrogate (JSON can send one)."""
    if "\0" in raw:
        raise TableError(lineno, "text", "no NUL characters")
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError as exc:
        surrogate = ord(raw[exc.start])
        raise TableError(
            lineno, "text", f"valid UTF-8 text, without the lone surrogate U+{surrogate:04X}"
        ) from None


def _construct_line(lineno: int, fields: list[str], expected_start: int, env: TargetEnv) -> Target:
    if len(fields) < 3:
        raise TableError(
            lineno, "target", "<start> <length> <target> [<args>...]", " ".join(fields)
        )
    start_text, length_text, name, *args = fields
    start = read_decimal(start_text, SECTOR_MAX)
    if start is None:
        raise TableError(lineno, "start", f"a sector number (0..{SECTOR_MAX})", start_text)
    if start != expected_start:
        what = "a gap" if start > expected_start else "an overlap"
        raise TableError(
            lineno,
            "start",
            f"sector {expected_start} (targets must cover the device contiguously; this is {what})",
            start_text,
        )
    sectors = read_decimal(length_text, SECTOR_MAX)
    if not sectors:
        raise TableError(
            lineno, "length", f"a positive number of sectors (1..{SECTOR_MAX})", length_text
        )
    if sectors > MAX_SECTORS - start:
        raise TableError(
            lineno,
            "length",
            f"at most {MAX_SECTORS - start} sectors (a device ends by sector {MAX_SECTORS}: "
            f"its file holds at most 2^63 - 1 bytes)",
            length_text,
        )
    cls = get_target(name)
    if cls is None:
        raise TableError(lineno, "target", f"one of {', '.join(target_names())}", name)
    begin, length = start * SECTOR_SIZE, sectors * SECTOR_SIZE
    try:
        return cls(env, begin, length, args)
    except TargetArgError as exc:
        err = TableError(lineno, f"{name} {exc.field}", exc.expected, exc.got)
        if exc.errno is not None:
            err.errno = exc.errno
        raise err from None
    except TableError:
        raise
    except FuseblkError as exc:
        err = TableError(lineno, name, "valid arguments", exc.message)
        err.errno = exc.errno
        raise err from None


def device_caps(dev: BlockDevice) -> CryptoCapabilities | None:
    """What ``dev`` offers now: its profile's capabilities, None without a profile."""
    profile = dev.crypto_profile
    return profile.caps if profile is not None else None


def construct_crypto_caps(
    targets: list[Target],
    caps_of: Callable[[BlockDevice], CryptoCapabilities | None] = device_caps,
) -> CryptoCapabilities | None:
    """``dm_table_construct_crypto_profile``: None when the table can offer no inline encryption.

    Start from everything; a target that does not pass crypto leaves nothing; otherwise intersect
    with every device below (a device without a profile leaves nothing). A target with no devices
    does not restrict. ``caps_of`` says what a device offers: a planned hardware change asks
    with the capabilities the devices below would have, before anything changes.
    """
    if not targets:
        return None
    caps = CryptoCapabilities.everything()
    for target in targets:
        if not target.passes_crypto:
            return None
        for dev in target.devices():
            caps = intersect(caps, caps_of(dev))
    return None if caps.is_empty else caps
