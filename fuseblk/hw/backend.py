"""Emulated inline-encryption hardware: a backend image file that stores and encrypts bios.

A :class:`Backend` is the bottom of every device stack. It behaves like a disk whose controller
has an inline-encryption engine described by the image's header (see :mod:`fuseblk.hw.image_format`):

* a bio with an encryption context the engine supports gets a keyslot from the crypto profile
  (programmed on a miss, waiting while every slot is busy), is en/decrypted with the slot's cipher
  in one bulk call, and is stored as plain sectors at the image's data offset;
* a context the engine cannot serve never reaches hardware in the kernel (blk-crypto falls back
  above it), so here it is an upstream bug: the bio fails with EIO and it is logged;
* ``direct`` engines take the context with each request: no slots, a small cache of expanded
  ciphers instead (expanding a key is what programming a slot costs).

Attaching an image is a controller reset: every slot starts empty. The header's keyslot table is
rewritten on flush and on clean close when it changed, for inspection; the clean-shutdown flag is
cleared while attached and set on clean close.

Error numbers follow the block layer, not the file layer: a bio beyond the end of the device is
EIO (``bio_check_eod``: "attempt to access beyond end of device"), a bio not made of whole
512-byte sectors is EINVAL. (A ``write(2)`` at the end of a block device file is ENOSPC and a read
there returns 0 bytes; that is the FUSE layer's business.) Discarded ranges read back as zeroes:
this emulated hardware punches holes in the image, the behaviour of a device that reports
``discard_zeroes_data``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, overload

import trio

from fuseblk import SECTOR_SIZE
from fuseblk.bio import Bio, BioOp
from fuseblk.blkcrypto.keyslot_manager import CryptoProfile, Keyslot
from fuseblk.ciphers import DataUnitCipher, get_cipher
from fuseblk.errors import FuseblkError, ImageFormatError
from fuseblk.hw.image_format import (
    ImageHeader,
    SlotRecord,
    SlotRecordState,
    lock_image,
    open_new_image,
    read_headers,
    write_headers,
)
from fuseblk.hw.profiles import HardwareKind, HardwareProfile
from fuseblk.key import BlkCryptoKey
from fuseblk.stats import Counters

log = logging.getLogger(__name__)

# Requests up to this size do their pread/pwrite inline on the trio thread. Measured with
# tools/bench_backend.py (page cache hot, 2 shared cores): a pread costs 0.7 µs at 4 KiB, 10 µs
# at 256 KiB, 40 µs at 1 MiB, 270 µs at 4 MiB; one trip through trio.to_thread costs 50-70 µs
# plus the copy. A hop never pays for small cached copies; it pays when a copy may block on the
# disk or is long enough to stall every other request on the loop. FUSE requests (128 KiB by
# default) all stay inline.
INLINE_IO_MAX = 256 * 1024
DIRECT_CIPHER_CACHE = 32  # expanded keys a direct engine keeps, least recently used evicted

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Deallocate a range, keeping the file size: later reads return zeroes."""
    if _libc.fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class _OpenShim:
    """shim: ``Backend.open(path)`` attaches an image, ``backend.open()`` counts an opener."""

    @overload
    def __get__(self, obj: None, owner: type[Backend]) -> Callable[..., Backend]: ...

    @overload
    def __get__(self, obj: Backend, owner: type[Backend]) -> Callable[[], None]: ...

    def __get__(self, obj: Backend | None, owner: type[Backend]) -> Callable[..., Any]:
        return owner._open_image if obj is None else obj._opened


class Backend:
    """An attached image: a :class:`fuseblk.device.BlockDevice` and the keyslot ops of its profile."""

    # shim: the Backend protocol declares ``path: str``; the value stays a Path until the split
    path: str
    block_size = SECTOR_SIZE
    fallback_per_target = False
    open = _OpenShim()

    def __init__(
        self,
        path: Path,
        fd: int,
        header: ImageHeader,
        name: str,
        warnings: list[str],
        was_clean: bool,
    ) -> None:
        self.path = path  # type: ignore[assignment]  # shim: see the class annotation
        self._fd = fd
        self._name = name
        self._header = header  # as last written
        self._data_offset = header.data_offset
        self._size = header.data_size
        self.hardware: HardwareProfile = header.hardware
        self.warnings = warnings  # what was wrong with the image when it was attached
        self.was_clean = was_clean  # its clean-shutdown flag was set when attached
        self.counters = Counters()
        self._closed = False
        self.open_count = 0  # shim: BlockDevice.open/release
        self._header_lock = trio.Lock()
        self._written_generation = 0  # the profile's generation when the header was last written
        self._ciphers: OrderedDict[BlkCryptoKey, DataUnitCipher] = OrderedDict()
        self._profile: CryptoProfile | None = None
        if self.hardware.kind is not HardwareKind.NONE:
            self._profile = CryptoProfile(
                self.hardware.caps, self.hardware.num_slots, ops=_KeyslotOps(self), name=name
            )

    # --- attaching ------------------------------------------------------------------------

    @classmethod
    def _open_image(cls, path: str | os.PathLike[str], name: str | None = None) -> Backend:
        """Attach an image: take its lock, pick the newest valid header, reset the hardware."""
        path = Path(path)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise FuseblkError(
                exc.errno or errno.EIO, f"cannot open image {path}: {exc.strerror}"
            ) from None
        try:
            lock_image(fd, path)
        except BaseException:
            os.close(fd)
            raise
        return cls._attach(path, fd, name)

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        size: int,
        hardware: HardwareProfile,
        label: str = "",
        *,
        overwrite: bool = False,
        name: str | None = None,
    ) -> Backend:
        """Make a new sparse image (refusing an existing file unless ``overwrite``) and attach it."""
        fd, _ = open_new_image(path, hardware, size, label=label, overwrite=overwrite)
        return cls._attach(Path(path), fd, name)

    @classmethod
    def _attach(cls, path: Path, fd: int, name: str | None) -> Backend:
        """With the image's lock held: check the headers, then reset the hardware (``fd`` is ours)."""
        try:
            headers = read_headers(fd)
            try:
                current = headers.current
            except ImageFormatError as exc:
                raise ImageFormatError(f"{path}: {exc.message}") from None
            warnings = list(headers.problems)
            if not current.clean_shutdown:
                warnings.append("image was not cleanly shut down")
            file_size = os.fstat(fd).st_size
            if file_size < current.image_size:
                raise ImageFormatError(
                    f"{path}: image is truncated: {file_size} bytes, header needs {current.image_size}"
                )
            for warning in warnings:
                log.warning("%s: %s", path, warning)
            attached = replace(
                current,
                sequence=current.sequence + 1,
                clean_shutdown=False,
                slots=current.empty_slots(),
            )
            write_headers(fd, attached)  # also rewrites a damaged or stale copy
        except OSError as exc:
            os.close(fd)
            raise FuseblkError(
                exc.errno or errno.EIO, f"cannot attach {path}: {exc.strerror}"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, attached, name or str(path), warnings, current.clean_shutdown)

    # --- BlockDevice ------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def size(self) -> int:
        return self._size

    @property
    def crypto_profile(self) -> CryptoProfile | None:
        return self._profile

    @property
    def header(self) -> ImageHeader:
        """The header as last written to disk."""
        return self._header

    async def submit(self, bio: Bio) -> None:
        counters = self.counters
        counters.add("bios")
        try:
            op = bio.op
            if op is BioOp.READ or op is BioOp.WRITE:
                self._check_range(bio)
                counters.add("bytes", bio.length)
                if op is BioOp.READ:
                    counters.add("reads")
                    await self._read(bio)
                else:
                    counters.add("writes")
                    await self._write(bio)
            elif op is BioOp.FLUSH:
                counters.add("flushes")
                await self.flush()
            else:
                self._check_range(bio)
                counters.add("discards")
                await self._discard(bio)
        except FuseblkError:
            counters.add("errors")
            raise

    def _check_attached(self) -> None:
        if self._closed:
            raise FuseblkError(errno.EIO, f"{self._name}: image is detached")

    def _check_range(self, bio: Bio) -> None:
        if self._closed:  # _check_attached inlined: this runs for every bio
            raise FuseblkError(errno.EIO, f"{self._name}: image is detached")
        if bio.offset % SECTOR_SIZE or bio.length % SECTOR_SIZE or bio.offset < 0:
            raise FuseblkError(
                errno.EINVAL,
                f"{self._name}: {bio.op.value} of {bio.length} bytes at {bio.offset} "
                "is not whole 512-byte sectors",
            )
        if bio.end > self._size:
            raise FuseblkError(
                errno.EIO,
                f"{self._name}: attempt to access beyond end of device "
                f"({bio.op.value} {bio.offset}+{bio.length} > {self._size})",
            )

    async def _get_keyslot(self, bio: Bio) -> tuple[CryptoProfile, Keyslot | None, DataUnitCipher]:
        """The profile, a slot for ``bio``'s key (None for a direct engine) and the cipher to
        use, or EIO/EINVAL. The caller puts the slot back once the request is done.

        The profile checks support itself (EOPNOTSUPP); checking again here would double the
        cost of the capability lookup on the hot path, so its refusal is translated instead.
        """
        ctx = bio.crypt_ctx
        assert ctx is not None
        profile = self._profile
        if profile is None:
            raise self._unsupported(bio)
        ctx.check_aligned(0, bio.length)
        try:
            slot = await profile.get_keyslot(ctx.key)
        except FuseblkError as err:
            if err.errno == errno.EOPNOTSUPP:
                raise self._unsupported(bio) from None
            raise
        return profile, slot, slot.cipher if slot is not None else self._direct_cipher(ctx.key)

    def _unsupported(self, bio: Bio) -> FuseblkError:
        """A context this engine cannot serve got here: blk-crypto should have fallen back above."""
        assert bio.crypt_ctx is not None
        key = bio.crypt_ctx.key
        log.error(
            "%s: bio with unsupported crypto context %r reached the hardware (upstream bug)",
            self._name,
            key,
        )
        return FuseblkError(
            errno.EIO,
            f"{self._name}: hardware cannot serve {key!r} (should have fallen back above)",
        )

    async def _write(self, bio: Bio) -> None:
        assert bio.buf is not None
        ctx = bio.crypt_ctx
        if ctx is None:
            await self._do_io(self._pwrite_sync, bio.buf, bio.offset)
            return
        profile, slot, cipher = await self._get_keyslot(bio)
        try:  # the slot stays in use while the request is in flight, as in hardware
            data = cipher.encrypt(bio.buf, ctx.dun_int)
            self.counters.add("inline_bios")
            self.counters.add("inline_bytes", bio.length)
            await self._do_io(self._pwrite_sync, memoryview(data), bio.offset)
        finally:
            profile.put_keyslot(slot)

    async def _read(self, bio: Bio) -> None:
        assert bio.buf is not None
        ctx = bio.crypt_ctx
        if ctx is None:
            await self._do_io(self._pread_sync, bio.buf, bio.offset)
            return
        profile, slot, cipher = await self._get_keyslot(bio)
        try:
            await self._do_io(self._pread_sync, bio.buf, bio.offset)
            cipher.decrypt_into(bio.buf, ctx.dun_int)
            self.counters.add("inline_bios")
            self.counters.add("inline_bytes", bio.length)
        finally:
            profile.put_keyslot(slot)

    async def _do_io(
        self, io: Callable[[memoryview, int], None], buf: memoryview, offset: int
    ) -> None:
        """Small I/O inline on the trio thread, large I/O in a worker thread (INLINE_IO_MAX)."""
        if len(buf) <= INLINE_IO_MAX:
            io(buf, offset)
        else:
            await trio.to_thread.run_sync(io, buf, offset)

    def _pread_sync(self, buf: memoryview, offset: int) -> None:
        pos = self._data_offset + offset
        try:
            done = os.preadv(self._fd, [buf], pos)
            while done < len(buf):  # short reads only happen if the file shrank under us
                more = os.preadv(self._fd, [buf[done:]], pos + done)
                if more <= 0:
                    raise FuseblkError(
                        errno.EIO, f"{self._name}: image file is shorter than its header says"
                    )
                done += more
        except OSError as exc:
            raise self._io_error("read", exc) from None

    def _pwrite_sync(self, buf: memoryview, offset: int) -> None:
        pos = self._data_offset + offset
        try:
            done = os.pwrite(self._fd, buf, pos)
            while done < len(buf):
                done += os.pwrite(self._fd, buf[done:], pos + done)
        except OSError as exc:
            raise self._io_error("write", exc) from None

    async def _discard(self, bio: Bio) -> None:
        if bio.length == 0:
            return
        try:
            punch_hole(self._fd, self._data_offset + bio.offset, bio.length)
        except OSError as exc:
            raise self._io_error("discard", exc) from None

    # --- direct engines: the context comes with each request ---------------------------------

    def _direct_cipher(self, key: BlkCryptoKey) -> DataUnitCipher:
        cache = self._ciphers
        cipher = cache.get(key)
        if cipher is not None:
            cache.move_to_end(key)
            self.counters.add("direct_cipher_hits")
            return cipher
        cipher = get_cipher(key)
        self.counters.add("direct_cipher_expansions")
        cache[key] = cipher
        if len(cache) > DIRECT_CIPHER_CACHE:
            cache.popitem(last=False)
        return cipher

    # --- shim: BlockDevice.open/release/evict_key --------------------------------------------

    def _opened(self) -> None:
        self.open_count += 1

    def release(self) -> None:
        self.open_count = max(0, self.open_count - 1)

    async def evict_key(self, key: BlkCryptoKey) -> None:
        profile = self._profile
        if profile is not None and profile.supports(key.config):
            await profile.evict_key(key)

    # --- flush, header, close ----------------------------------------------------------------

    async def flush(self) -> None:
        """Make written data durable, then record the keyslot table if it changed."""
        self._check_attached()
        await self._sync()
        await self._update_header(clean_shutdown=False)

    async def _sync(self) -> None:
        try:
            await trio.to_thread.run_sync(os.fdatasync, self._fd)
        except OSError as exc:
            raise self._io_error("flush", exc) from None

    def _io_error(self, what: str, exc: OSError) -> FuseblkError:
        return FuseblkError(exc.errno or errno.EIO, f"{self._name}: {what} failed: {exc.strerror}")

    def slot_records(self) -> tuple[SlotRecord, ...]:
        """The profile's keyslots as the header records them: configuration and key id only."""
        if self._profile is None or self.hardware.kind is not HardwareKind.KEYSLOTS:
            return ()
        records = []
        for st in self._profile.slot_table():
            if st.programmed and st.config is not None and st.key_id is not None:
                key_id = bytes.fromhex(st.key_id)
                records.append(
                    SlotRecord(SlotRecordState.PROGRAMMED, st.config, key_id, st.generation)
                )
            else:
                records.append(SlotRecord(generation=st.generation))
        return tuple(records)

    async def _update_header(self, clean_shutdown: bool) -> bool:
        """Write both header copies if anything in them changed; True if it wrote."""
        async with self._header_lock:
            old = self._header
            generation = self._profile.generation if self._profile is not None else 0
            if generation == self._written_generation and clean_shutdown == old.clean_shutdown:
                return False  # nothing touched a slot since the last write: no need to look
            slots = self.slot_records()
            if slots == old.slots and clean_shutdown == old.clean_shutdown:
                self._written_generation = generation
                return False
            new = replace(
                old, sequence=old.sequence + 1, slots=slots, clean_shutdown=clean_shutdown
            )
            try:
                await trio.to_thread.run_sync(write_headers, self._fd, new)
            except OSError as exc:
                raise self._io_error("header update", exc) from None
            self._header = new
            self._written_generation = generation
            self.counters.add("header_writes")
            return True

    async def close(self) -> None:
        """Clean shutdown: data synced, keyslot table and clean flag written, lock released."""
        if self._closed:
            return
        try:
            await self._sync()
            await self._update_header(clean_shutdown=True)
        finally:
            self._closed = True
            os.close(self._fd)

    def abandon(self) -> None:
        """Drop the image as a crash would: no sync, no header update, lock released."""
        if not self._closed:
            self._closed = True
            os.close(self._fd)

    @property
    def closed(self) -> bool:
        return self._closed

    def info(self) -> dict[str, Any]:
        h = self._header
        counters = self.counters.snapshot()
        if self._profile is not None:
            counters.update(
                {f"keyslot_{k}": v for k, v in self._profile.counters.snapshot().items()}
            )
        return {
            "name": self._name,
            "path": str(self.path),
            "size": self._size,
            "data_offset": self._data_offset,
            "uuid": str(h.uuid),
            "label": h.label,
            "format_version": h.version,
            "sequence": h.sequence,
            "hardware": self.hardware.to_json(),
            "was_clean": self.was_clean,
            "warnings": list(self.warnings),
            "keyslots": [s.to_json() for s in self.slot_records()],
            "counters": counters,
        }

    def __repr__(self) -> str:
        return f"Backend({self._name!r}, {self.hardware.describe()})"


class _KeyslotOps:
    """shim: the profile programs and evicts through these (KeyslotOps)."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend

    async def program_key(self, key: BlkCryptoKey, slot: int) -> DataUnitCipher:
        """Nothing to do in the image but expand the key; the table is written on flush."""
        self._backend._check_attached()
        return get_cipher(key)

    async def evict_key(self, key: BlkCryptoKey, slot: int | None) -> None:
        """For a direct engine (``slot is None``) forget the expanded key."""
        if slot is None:
            self._backend._ciphers.pop(key, None)
