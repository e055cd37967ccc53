"""Emulated inline-encryption hardware: an engine that en/decrypts bios around a storage.

An :class:`InlineEncryptionEngine` is the bottom of every device stack. It behaves like a disk
whose controller has an inline-encryption engine described by the image's header (see
:mod:`fuseblk.hw.image_format`), whatever the storage behind it (:mod:`fuseblk.hw.storage`):

* a bio with an encryption context the engine supports gets a keyslot from the crypto profile
  (programmed on a miss, waiting while every slot is busy), is en/decrypted with the slot's cipher
  in one bulk call, and is stored as plain sectors at the image's data offset;
* a context the engine cannot serve never reaches hardware in the kernel (blk-crypto falls back
  above it), so here it is an upstream bug: the bio fails with EIO and it is logged;
* ``direct`` engines take the context with each request: no slots, a small cache of expanded
  ciphers instead (expanding a key is what programming a slot costs);
* hardware whose profile lists ``hw_wrapped`` keys has a key manager
  (:mod:`fuseblk.hw.wrapping`): a wrapped key's bytes are an ephemeral blob, which expanding
  unwraps into the KDF's inline key, and the four wrapped-key operations
  (:mod:`fuseblk.blkcrypto.wrapped_keys`) are methods of the engine.

Expanding keys is the hardware's job, as in the kernel's ``blk_crypto_ll_ops``: the profile
programs a slot through :class:`EngineKeyslotOps`, which returns the expanded cipher.

Attaching an image is a controller reset: every slot starts empty. The header's keyslot table is
rewritten on flush and on clean close when it changed, for inspection; the clean-shutdown flag is
cleared while attached and set on clean close (:mod:`fuseblk.hw.header_store`).

Error numbers follow the block layer, not the file layer: a bio beyond the end of the device is
EIO (``bio_check_eod``: "attempt to access beyond end of device"), a bio not made of whole
512-byte sectors is EINVAL. (A ``write(2)`` at the end of a block device file is ENOSPC and a read
there returns 0 bytes; that is the FUSE layer's business.) Discarded ranges read back as zeroes:
this emulated hardware discards through its storage, which zeroes them, the behaviour of a
device that reports ``discard_zeroes_data``.
"""

from __future__ import annotations

import errno
import logging
from collections import OrderedDict
from collections.abc import Callable
from functools import partial
from typing import Any

import trio

from fuseblk import SECTOR_SIZE
from fuseblk.bio import Bio, BioOp
from fuseblk.blkcrypto import wrapped_keys
from fuseblk.blkcrypto.keyslot_manager import CryptoProfile, Keyslot
from fuseblk.ciphers import DataUnitCipher, get_cipher
from fuseblk.crypt_context import BioCryptContext
from fuseblk.device import OpenCounter
from fuseblk.errors import FuseblkError
from fuseblk.hw.background_call import BackgroundCall
from fuseblk.hw.faults import FaultKind, FaultPlan
from fuseblk.hw.header_store import Attached, HeaderStore, attach_header
from fuseblk.hw.image_format import ImageHeader, SlotRecord, SlotRecordState
from fuseblk.hw.profiles import HardwareKind, HardwareProfile
from fuseblk.hw.storage import Storage
from fuseblk.hw.wrapping import KeyWrapping
from fuseblk.key import BlkCryptoKey, KeyType
from fuseblk.stats import Counters

log = logging.getLogger(__name__)

# Requests up to this size do their storage I/O inline on the trio thread. tools/bench_backend.py
# measures both sides: a cached pread grows with its size, while one trip through trio.to_thread
# costs several 4 KiB preads plus the copy. A hop never pays for small cached copies; it pays when
# a copy may block on the disk or is long enough to stall every other request on the loop. Random
# I/O stays inline; FUSE's sequential requests (up to 1 MiB) are larger. A larger encrypted bio
# splits its I/O: the trio thread does this much of it, next to its cipher work, and a worker
# thread the rest meanwhile.
INLINE_IO_MAX = 256 * 1024
_READ, _WRITE = BioOp.READ, BioOp.WRITE
DIRECT_CIPHER_CACHE = 32  # expanded keys a direct engine keeps, least recently used evicted


def _inline_part(cipher: DataUnitCipher) -> int:
    """The bytes of a large encrypted bio done on the trio thread: ``INLINE_IO_MAX``, in whole
    data units of ``cipher`` (at least one)."""
    unit = cipher.data_unit_size
    return max(unit, INLINE_IO_MAX - INLINE_IO_MAX % unit)


def attach(storage: Storage, name: str | None = None) -> InlineEncryptionEngine:
    """The hardware over an opened, locked ``storage``: headers checked, controller reset.

    Owns ``storage`` from here on, and closes it if attaching fails.
    """
    try:
        attached = attach_header(storage)
    except BaseException:
        storage.close()
        raise
    return InlineEncryptionEngine(storage, attached, name or storage.reference)


class InlineEncryptionEngine(OpenCounter):
    """An attached image: a :class:`fuseblk.device.Backend` (and so a ``BlockDevice``)."""

    block_size = SECTOR_SIZE
    fallback_per_target = False  # hardware takes what its profile supports, nothing else

    def __init__(self, storage: Storage, attached: Attached, name: str) -> None:
        header = attached.header
        # --- hardware-wrapped keys: the key manager, its ephemeral secret drawn now (a boot) ---
        if header.wrapping_secret is None:  # attach_header gives every image one
            raise FuseblkError(errno.EIO, f"{name}: image has no long-term wrapping secret")
        self._wrapping = KeyWrapping(header.wrapping_secret, header.uuid, name)
        # --- the rest of the controller ---
        self._storage = storage
        self._read_storage = storage.read_into  # bound once: these run for every bio
        self._write_storage = storage.write
        self._network = storage.network  # a server's storage: its data path is awaited
        self._name = name
        self._data_offset = header.data_offset
        self._size = header.data_size
        self.hardware: HardwareProfile = header.hardware
        self.warnings = attached.warnings  # what was wrong with the image when it was attached
        self.was_clean = attached.was_clean  # its clean-shutdown flag was set when attached
        self.counters = Counters()
        self._headers = HeaderStore(storage, header, self.counters)
        self._closed = False
        self._ciphers = DirectCiphers(self.counters, self._wrapping)
        self.faults = FaultPlan(
            name, self.counters
        )  # injected by `fuseblk hw fault`, in memory only
        self._profile: CryptoProfile | None = None
        if self.hardware.kind is not HardwareKind.NONE:
            ops = EngineKeyslotOps(self._ciphers, self._check_attached, self.faults)
            self._profile = CryptoProfile(
                self.hardware.caps, self.hardware.num_slots, ops=ops, name=name
            )

    # --- BlockDevice ------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def path(self) -> str:
        """The reference that attaches this storage (an absolute image path, ``memory://NAME``)."""
        return self._storage.reference

    @property
    def size(self) -> int:
        return self._size

    @property
    def crypto_profile(self) -> CryptoProfile | None:
        return self._profile

    @property
    def header(self) -> ImageHeader:
        """The header as last written to the storage."""
        return self._headers.header

    async def submit(self, bio: Bio) -> None:
        counters = self.counters
        counters["bios"] += 1
        try:
            op = bio.op
            if op is _READ or op is _WRITE:
                self._check_range(bio)
                counters["bytes"] += bio.length
                if op is _READ:
                    counters["reads"] += 1
                    await self._read(bio)
                else:
                    counters["writes"] += 1
                    await self._write(bio)
            elif op is BioOp.FLUSH:
                counters["flushes"] += 1
                await self.flush()
            else:
                self._check_range(bio)
                counters["discards"] += 1
                await self._discard(bio)
        except FuseblkError:
            counters["errors"] += 1
            raise

    async def evict_key(self, key: BlkCryptoKey) -> None:
        """``blk_crypto_evict_key`` on this hardware: absent is success, a key in use EBUSY."""
        profile = self._profile
        if profile is not None and profile.supports(key.config):
            await profile.evict_key(key)

    async def reset(self) -> None:
        """A controller reset: the hardware forgets every key, and the driver loads the keys its
        profile holds again (``blk_crypto_reprogram_all_keys``, as UFS does after a host reset).

        Bios in flight keep the ciphers they hold. Where a slot cannot be programmed again (an
        injected program-fail), the profile empties it and the first error is returned here; the
        kernel only WARNs and keeps the key mapped, which would leave a slot whose hardware holds
        nothing. The next bio for that key misses and programs a slot again. A direct engine
        forgets its expanded keys.

        The key manager draws a new ephemeral wrapping secret, as a boot does: hardware-wrapped
        keys in use are reprogrammed from the ephemeral blobs the profile holds, as the kernel
        does, and those no longer unwrap, so their slots end empty, the reset reports EBADMSG,
        and every later bio with such a key fails with EIO until its long-term blob is prepared
        again and a table loaded with the new ephemeral blob.
        """
        self._check_attached()
        self.counters.add("resets")
        self._wrapping.new_ephemeral_secret()
        self._ciphers.clear()
        if self._profile is not None:
            try:
                await self._profile.reprogram_all()
            except FuseblkError as err:
                if err.errno != errno.EBADMSG:
                    raise
                raise FuseblkError(
                    errno.EBADMSG,
                    f"{self._name}: reset: a hardware-wrapped key in use was not reprogrammed: "
                    "its ephemeral blob is stale (prepare its long-term blob again)",
                ) from None

    # --- hardware-wrapped key operations (blk_crypto_ll_ops; see fuseblk.hw.wrapping) ---------

    def _key_manager(self, op: wrapped_keys.WrappedKeyOp) -> KeyWrapping:
        """The key manager, or EOPNOTSUPP where the profile does not list ``hw_wrapped``."""
        self._check_attached()
        wrapped_keys.check_profile(self._profile, self._name, op)
        return self._wrapping

    def import_key(self, raw: bytes) -> bytes:
        """``import_key``: a long-term blob of ``raw`` (16..64 bytes, checked by the caller)."""
        return self._key_manager(wrapped_keys.WrappedKeyOp.IMPORT).import_key(raw)

    def generate_key(self) -> bytes:
        """``generate_key``: a long-term blob of a key drawn inside the hardware."""
        return self._key_manager(wrapped_keys.WrappedKeyOp.GENERATE).generate_key()

    def prepare_key(self, lt_blob: bytes) -> bytes:
        """``prepare_key``: long-term blob → ephemeral blob; EBADMSG if it does not unwrap."""
        return self._key_manager(wrapped_keys.WrappedKeyOp.PREPARE).prepare_key(lt_blob)

    def derive_sw_secret(self, eph_blob: bytes) -> bytes:
        """``derive_sw_secret``: ephemeral blob → 32-byte secret; EBADMSG if it does not unwrap."""
        op = wrapped_keys.WrappedKeyOp.DERIVE_SW_SECRET
        return self._key_manager(op).derive_sw_secret(eph_blob)

    # --- live hardware changes (``fuseblk hw set``) ---------------------------------------------

    async def set_hardware(self, hardware: HardwareProfile) -> list[BlkCryptoKey]:
        """The controller now offers ``hardware`` (same kind); returns the keys it evicted.

        Keys the new profile cannot take leave their slots (and a direct engine forgets their
        expanded ciphers); the header records the new hardware and keyslot table at once, so
        the change outlives a detach. Whoever calls this has drained the bios that could hold
        such a slot (:mod:`fuseblk.dm.hw_change`); a busy one is EBUSY and nothing changes.
        """
        self._check_attached()
        if hardware.kind is not self.hardware.kind:
            raise FuseblkError(
                errno.EINVAL,
                f"{self._name}: hardware stays {self.hardware.kind.label!r} "
                f"(cannot become {hardware.kind.label!r})",
            )
        evicted: list[BlkCryptoKey] = []
        if self._profile is not None:
            evicted = await self._profile.reconfigure(hardware.caps, hardware.num_slots)
        self._ciphers.forget_unsupported(hardware)
        self.hardware = hardware
        self.counters.add("hw_changes")
        generation = self._profile.generation if self._profile is not None else 0
        try:
            await self._headers.set_hardware(hardware, generation, self.slot_records())
        except OSError as exc:
            raise self._io_error("header update", exc) from None
        return evicted

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
        if bio.offset + bio.length > self._size:
            raise FuseblkError(
                errno.EIO,
                f"{self._name}: attempt to access beyond end of device "
                f"({bio.op.value} {bio.offset}+{bio.length} > {self._size})",
            )

    def _cached_keyslot(self, ctx: BioCryptContext, length: int) -> Keyslot | None:
        """The hot path of :meth:`_get_keyslot`: a hit on a programmed slot for an aligned bio,
        taken without awaiting; None when :meth:`_get_keyslot` must decide (and maybe wait)."""
        profile = self._profile
        key = ctx.key
        if profile is None or length % key.data_unit_size:
            return None
        return profile.get_cached_keyslot(key)

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
        key = ctx.key
        if bio.length % key.data_unit_size:
            ctx.check_aligned(0, bio.length)  # raises
        try:
            slot = await profile.get_keyslot(key)
            cipher = slot.cipher if slot is not None else self._ciphers.get(key)
        except FuseblkError as err:
            if err.errno == errno.EOPNOTSUPP:
                raise self._unsupported(bio) from None
            raise bio_error(err) from None
        return profile, slot, cipher

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
        buf = bio.buf
        assert buf is not None
        ctx = bio.crypt_ctx
        if ctx is None:
            if len(buf) <= INLINE_IO_MAX and self._network is None:
                self._write_sync(buf, bio.offset)
            else:
                await self._write_elsewhere(buf, bio.offset)
            return
        slot = self._cached_keyslot(ctx, bio.length)
        if slot is not None:
            profile, cipher = self._profile, slot.cipher
        else:
            profile, slot, cipher = await self._get_keyslot(bio)
        assert profile is not None
        try:  # the slot stays in use while the request is in flight, as in hardware
            counters = self.counters
            counters["inline_bios"] += 1
            counters["inline_bytes"] += bio.length
            if len(buf) <= INLINE_IO_MAX and self._network is None:
                self._write_sync(memoryview(cipher.encrypt(buf, ctx.dun_int)), bio.offset)
            elif self._network is None:
                await self._write_overlapped(cipher, buf, ctx.dun_int, bio.offset)
            else:
                data = memoryview(cipher.encrypt(buf, ctx.dun_int))
                await self._write_elsewhere(data, bio.offset)
        finally:
            profile.put_keyslot(slot)

    async def _read(self, bio: Bio) -> None:
        buf = bio.buf
        assert buf is not None
        ctx = bio.crypt_ctx
        if ctx is None:
            if len(buf) <= INLINE_IO_MAX and self._network is None:
                self._read_sync(buf, bio.offset)
            else:
                await self._read_elsewhere(buf, bio.offset)
            return
        slot = self._cached_keyslot(ctx, bio.length)
        if slot is not None:
            profile, cipher = self._profile, slot.cipher
        else:
            profile, slot, cipher = await self._get_keyslot(bio)
        assert profile is not None
        try:
            if len(buf) <= INLINE_IO_MAX and self._network is None:
                self._read_sync(buf, bio.offset)
                cipher.decrypt_into(buf, ctx.dun_int)
            elif self._network is None:
                await self._read_overlapped(cipher, buf, ctx.dun_int, bio.offset)
            else:
                await self._read_elsewhere(buf, bio.offset)
                cipher.decrypt_into(buf, ctx.dun_int)
            counters = self.counters
            counters["inline_bios"] += 1
            counters["inline_bytes"] += bio.length
        finally:
            profile.put_keyslot(slot)

    async def _write_overlapped(
        self, cipher: DataUnitCipher, buf: memoryview, dun: int, offset: int
    ) -> None:
        """A large encrypted write: all but its last ``INLINE_IO_MAX`` bytes are written by a
        worker thread while the trio thread encrypts the rest, which it then writes inline, so
        the thread's round trip and most of the I/O hide behind the cipher work."""
        split = len(buf) - _inline_part(cipher)
        if split <= 0:
            await self._write_elsewhere(memoryview(cipher.encrypt(buf, dun)), offset)
            return
        head = memoryview(cipher.encrypt(buf[:split], dun))
        writing = BackgroundCall(partial(self._write_sync, head, offset))
        try:
            tail = memoryview(cipher.encrypt(buf[split:], dun + split // cipher.data_unit_size))
            self._write_sync(tail, offset + split)
        finally:
            await writing.wait()

    async def _read_overlapped(
        self, cipher: DataUnitCipher, buf: memoryview, dun: int, offset: int
    ) -> None:
        """A large encrypted read: the trio thread reads the first ``INLINE_IO_MAX`` bytes and
        decrypts them while a worker thread reads the rest, then decrypts that."""
        split = _inline_part(cipher)
        if split >= len(buf):
            await self._read_elsewhere(buf, offset)
            cipher.decrypt_into(buf, dun)
            return
        reading = BackgroundCall(partial(self._read_sync, buf[split:], offset + split))
        try:
            self._read_sync(buf[:split], offset)
            cipher.decrypt_into(buf[:split], dun)
        finally:
            await reading.wait()
        cipher.decrypt_into(buf[split:], dun + split // cipher.data_unit_size)

    async def _write_elsewhere(self, buf: memoryview, offset: int) -> None:
        """What :meth:`_write` does not do inline: large I/O in a worker thread
        (``INLINE_IO_MAX``), and any I/O to a network storage, which is awaited."""
        if self._network is not None:
            await self._network_io(True, buf, offset)
        else:
            await trio.to_thread.run_sync(self._write_sync, buf, offset)

    async def _read_elsewhere(self, buf: memoryview, offset: int) -> None:
        """The read side of :meth:`_write_elsewhere`."""
        if self._network is not None:
            await self._network_io(False, buf, offset)
        else:
            await trio.to_thread.run_sync(self._read_sync, buf, offset)

    async def _network_io(self, write: bool, buf: memoryview, offset: int) -> None:
        assert self._network is not None
        try:
            if write:
                await self._network.awrite(buf, self._data_offset + offset)
            else:
                await self._network.aread_into(buf, self._data_offset + offset)
        except OSError as exc:
            raise self._io_error("write" if write else "read", exc) from None

    def _read_sync(self, buf: memoryview, offset: int) -> None:
        try:
            self._read_storage(buf, self._data_offset + offset)
        except OSError as exc:
            raise self._io_error("read", exc) from None

    def _write_sync(self, buf: memoryview, offset: int) -> None:
        try:
            self._write_storage(buf, self._data_offset + offset)
        except OSError as exc:
            raise self._io_error("write", exc) from None

    async def _discard(self, bio: Bio) -> None:
        if bio.length == 0:
            return
        try:
            if self._network is not None:
                await self._network.adiscard(self._data_offset + bio.offset, bio.length)
            else:
                self._storage.discard(self._data_offset + bio.offset, bio.length)
        except OSError as exc:
            raise self._io_error("discard", exc) from None

    # --- flush, header, close ----------------------------------------------------------------

    async def flush(self) -> None:
        """Make written data durable, then record the keyslot table if it changed."""
        self._check_attached()
        await self._sync()
        await self._update_header(clean_shutdown=False)

    async def _sync(self) -> None:
        try:
            if self._network is not None:
                await self._network.aflush()
            else:
                await trio.to_thread.run_sync(self._storage.flush)
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
        generation = self._profile.generation if self._profile is not None else 0
        try:
            return await self._headers.update(generation, self.slot_records, clean_shutdown)
        except OSError as exc:
            raise self._io_error("header update", exc) from None

    async def close(self) -> None:
        """Clean shutdown: data synced, keyslot table and clean flag written, storage released."""
        if self._closed:
            return
        try:
            await self._sync()
            await self._update_header(clean_shutdown=True)
        finally:
            self._closed = True
            self._storage.close()

    def abandon(self) -> None:
        """Drop the image as a crash would: no sync, no header update, lock released."""
        if not self._closed:
            self._closed = True
            self._storage.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def info(self) -> dict[str, Any]:
        h = self.header
        counters = self.counters.snapshot()
        if self._profile is not None:
            counters.update(
                {f"keyslot_{k}": v for k, v in self._profile.counters.snapshot().items()}
            )
        return {
            "name": self._name,
            "path": self.path,
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
            **({"connection": self._network.state()} if self._network is not None else {}),
        }

    def __repr__(self) -> str:
        return f"InlineEncryptionEngine({self._name!r}, {self.hardware.describe()})"


class DirectCiphers:
    """A direct engine's expanded keys: the context comes with each request, so instead of
    keyslots the engine keeps the last DIRECT_CIPHER_CACHE keys it expanded.

    :meth:`expand` is how this hardware expands any key, for its keyslots too: a raw key
    directly, a hardware-wrapped key by unwrapping its ephemeral blob into the KDF's inline key
    (EBADMSG, the driver's error, when it does not unwrap).
    """

    def __init__(self, counters: Counters, wrapping: KeyWrapping) -> None:
        self._cache: OrderedDict[BlkCryptoKey, DataUnitCipher] = OrderedDict()
        self._counters = counters  # direct_cipher_hits, direct_cipher_expansions
        self._wrapping = wrapping

    def expand(self, key: BlkCryptoKey) -> DataUnitCipher:
        if key.key_type != KeyType.HW_WRAPPED:
            return get_cipher(key)
        inline = self._wrapping.inline_key(key.raw)
        return get_cipher(BlkCryptoKey(key.mode, inline, key.data_unit_size, key.dun_bytes))

    def get(self, key: BlkCryptoKey) -> DataUnitCipher:
        cache = self._cache
        cipher = cache.get(key)
        if cipher is not None:
            cache.move_to_end(key)
            self._counters["direct_cipher_hits"] += 1
            return cipher
        cipher = self.expand(key)
        self._counters.add("direct_cipher_expansions")
        cache[key] = cipher
        if len(cache) > DIRECT_CIPHER_CACHE:
            cache.popitem(last=False)
        return cipher

    def forget(self, key: BlkCryptoKey) -> None:
        self._cache.pop(key, None)

    def clear(self) -> None:
        self._cache.clear()

    def forget_unsupported(self, hardware: HardwareProfile) -> None:
        """The engine lost capabilities: drop the expanded keys it can no longer take."""
        for key in [k for k in self._cache if not hardware.caps.supports(k.config)]:
            del self._cache[key]


# errno_to_blk_status: the errnos with a blk_status_t of their own; any other is BLK_STS_IOERR.
_BLK_STATUS_ERRNOS = frozenset(
    {
        errno.EOPNOTSUPP,
        errno.ETIMEDOUT,
        errno.ENOSPC,
        errno.ENOLINK,
        errno.EREMOTEIO,
        errno.EBADE,
        errno.ENODATA,
        errno.EILSEQ,
        errno.ENOMEM,
        errno.EBUSY,
        errno.EAGAIN,
        errno.ENODEV,
        errno.ETOOMANYREFS,
        errno.EOVERFLOW,
        errno.ETIME,
        errno.EINVAL,
        errno.EIO,
    }
)


def bio_error(err: FuseblkError) -> FuseblkError:
    """What a bio sees of a driver's error in getting its key ready: ``blk_crypto_get_keyslot``
    returns ``errno_to_blk_status(err)``, so an errno without a status of its own, such as the
    EBADMSG of a hardware-wrapped key that does not unwrap, reaches the bio as EIO."""
    if err.errno in _BLK_STATUS_ERRNOS:
        return err
    return FuseblkError(errno.EIO, f"{err.message} ({err.errno_name} from the driver)")


class EngineKeyslotOps:
    """The engine's side of its crypto profile (``blk_crypto_ll_ops``), kept apart from the
    engine so that its ``evict_key(key, slot)`` does not clash with the device's ``evict_key``.

    Programming a slot expands the key, as hardware does when a key is loaded; nothing reaches
    the storage (the keyslot table is written with the header, on flush). A hardware-wrapped
    key is loaded by unwrapping its ephemeral blob (:meth:`DirectCiphers.expand`); one that does
    not unwrap fails the program with EBADMSG, which the bio sees as EIO (:func:`bio_error`). Evicting from a direct
    engine (``slot is None``) forgets its expanded key.

    Both consult the engine's :class:`FaultPlan` first, so an injected failure is the driver's
    error as the profile sees it. One deviation follows from the profile evicting a cached key
    before programming its slot for another (the fallback driver's order; the kernel programs
    over it): an armed evict-fail also fails such a miss, with EIO and the slot left empty.
    """

    def __init__(
        self, ciphers: DirectCiphers, check_attached: Callable[[], None], faults: FaultPlan
    ) -> None:
        self._ciphers = ciphers
        self._check_attached = check_attached
        self._faults = faults

    async def program_key(self, key: BlkCryptoKey, slot: int) -> DataUnitCipher:
        self._check_attached()
        await self._faults.program_delay()
        self._faults.check(FaultKind.PROGRAM_FAIL, slot)
        return self._ciphers.expand(key)

    async def evict_key(self, key: BlkCryptoKey, slot: int | None) -> None:
        self._faults.check(FaultKind.EVICT_FAIL, slot)
        if slot is None:
            self._ciphers.forget(key)
