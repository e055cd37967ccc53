"""The image header as an attached backend keeps it: reset on attach, rewritten only on change.

Attaching picks the newest valid copy (:class:`fuseblk.hw.image_format.HeaderSet`), checks the
storage is as large as the header says, and writes the attached state at once: sequence + 1,
clean-shutdown flag cleared, keyslot table emptied (attaching is a hardware reset). That write
also repairs a damaged or stale copy. An image without a long-term wrapping secret (made before
there were hardware-wrapped keys) is given one by that write: from then on its long-term blobs
stay valid for the image's life (:mod:`fuseblk.hw.wrapping`).

Afterwards the header is written only when something in it changed since the last write: the
keyslot table (the profile's generation makes "unchanged" a single comparison) or the
clean-shutdown flag (set by a clean close). Each write is crash-safe (primary durable before the
backup is touched) and runs in a worker thread, so data I/O never waits for it; on a storage
behind a server it is awaited through the storage's network data path instead, on the trio
thread that drives its connection.

A storage claimed through its header (an NBD export) has the claim written by its lock and kept
in every header the engine writes; the clean close drops it with the clean-shutdown flag set, so
an image left by a crash still names its last holder.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

import trio

from fuseblk.errors import FuseblkError, ImageFormatError
from fuseblk.hw.image_format import (
    COPY_OFFSETS,
    ImageHeader,
    SlotRecord,
    new_wrapping_secret,
    read_headers,
    write_headers,
)
from fuseblk.hw.profiles import HardwareProfile
from fuseblk.hw.storage import Storage
from fuseblk.stats import Counters

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Attached:
    """What attaching found and wrote."""

    header: ImageHeader  # as written on attach
    warnings: list[str]  # what was wrong with the image
    was_clean: bool  # its clean-shutdown flag was set


def attach_header(storage: Storage) -> Attached:
    """Check the headers and record the attached state (see the module docstring).

    Synchronous: it runs once per attach, before the backend serves any bio.
    """
    where = storage.reference
    try:
        headers = read_headers(storage)
        try:
            current = headers.current
        except ImageFormatError as exc:
            raise ImageFormatError(f"{where}: {exc.message}") from None
        warnings = list(headers.problems)
        if not current.clean_shutdown:
            warnings.append("image was not cleanly shut down")
        size = storage.size
        if size < current.image_size:
            raise ImageFormatError(
                f"{where}: image is truncated: {size} bytes, header needs {current.image_size}"
            )
        for warning in warnings:
            log.warning("%s: %s", where, warning)
        attached = replace(
            current,
            sequence=current.sequence + 1,
            clean_shutdown=False,
            slots=current.empty_slots(),
            wrapping_secret=current.wrapping_secret or new_wrapping_secret(),
        )
        write_headers(storage, attached)
    except OSError as exc:
        raise FuseblkError(
            exc.errno or errno.EIO, f"cannot attach {where}: {exc.strerror}"
        ) from None
    return Attached(attached, warnings, current.clean_shutdown)


class HeaderStore:
    """The header of one attached image: as last written, and how to bring it up to date."""

    def __init__(self, storage: Storage, header: ImageHeader, counters: Counters) -> None:
        self._storage = storage
        self._header = header  # as last written
        self._counters = counters  # counts header_writes
        self._lock = trio.Lock()
        self._written_generation = 0  # the profile's generation when the header was last written

    @property
    def header(self) -> ImageHeader:
        return self._header

    async def update(
        self,
        generation: int,
        slots: Callable[[], tuple[SlotRecord, ...]],
        clean_shutdown: bool,
    ) -> bool:
        """Write both copies if anything in them changed; True if it wrote.

        ``generation`` is the keyslot profile's, ``slots`` makes the keyslot table as the header
        records it (only called when the generation moved). OSError is left to the caller.
        """
        async with self._lock:
            old = self._header
            if generation == self._written_generation and clean_shutdown == old.clean_shutdown:
                return False  # nothing touched a slot since the last write: no need to look
            records = slots()
            if records == old.slots and clean_shutdown == old.clean_shutdown:
                self._written_generation = generation
                return False
            new = replace(
                old,
                sequence=old.sequence + 1,
                slots=records,
                clean_shutdown=clean_shutdown,
                holder=None if clean_shutdown else old.holder,
            )
            await self._write(new)
            self._header = new
            self._written_generation = generation
            self._counters.add("header_writes")
            return True

    async def set_hardware(
        self, hardware: HardwareProfile, generation: int, slots: tuple[SlotRecord, ...]
    ) -> None:
        """Record a live change of the hardware (``fuseblk hw set``) with its keyslot table.

        Written at once, not at the next flush: a change the user made must survive a crash
        like any configuration, and a keyslot table of the new size is only valid beside it.
        """
        async with self._lock:
            new = replace(
                self._header, sequence=self._header.sequence + 1, hardware=hardware, slots=slots
            )
            await self._write(new)
            self._header = new
            self._written_generation = generation
            self._counters.add("header_writes")

    async def _write(self, header: ImageHeader) -> None:
        """Crash-safe, as :func:`fuseblk.hw.image_format.write_headers`."""
        network = self._storage.network
        if network is None:
            await trio.to_thread.run_sync(write_headers, self._storage, header)
            return
        data = header.to_bytes()
        for name in ("primary", "backup"):
            await network.awrite(data, COPY_OFFSETS[name])
            await network.aflush()
