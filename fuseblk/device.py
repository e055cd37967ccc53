"""The interfaces every layer below the FUSE layer offers: a block device, and a backend.

Backends (emulated hardware) and mapped devices both satisfy :class:`BlockDevice`, which is what
lets tables stack devices on devices. A device's ``crypto_profile`` says which encryption
contexts it accepts natively; ``None`` means it has no inline encryption at all (a bio with a
context must not reach it: the layer above falls back first).

Everything a caller relies on is declared here, so no layer reaches for an attribute with
``getattr``: counters, the logical block size, the fallback policy, the open count (the FUSE
layer opens and releases; ``dm remove`` reads it) and key eviction, which each kind of device
does its own way (hardware evicts from its keyslots, a mapped device walks the devices below).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from fuseblk.bio import Bio

if TYPE_CHECKING:
    from fuseblk.blkcrypto.keyslot_manager import CryptoProfile
    from fuseblk.key import BlkCryptoKey
    from fuseblk.stats import Counters


@runtime_checkable
class BlockDevice(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def size(self) -> int:
        """Bytes; always a multiple of 512."""
        ...

    @property
    def block_size(self) -> int:
        """The logical block size: the smallest I/O the device accepts (512 for hardware)."""
        ...

    @property
    def crypto_profile(self) -> CryptoProfile | None: ...

    @property
    def fallback_per_target(self) -> bool:
        """The ``fallback=target`` policy: the device takes every context and falls back per
        piece itself, so the block layer above must not fall back for it."""
        ...

    @property
    def counters(self) -> Counters: ...

    @property
    def open_count(self) -> int:
        """Openers of the device's file (a process, a loop device)."""
        ...

    def open(self) -> None:
        """A file handle on the device was opened."""
        ...

    def release(self) -> None:
        """A file handle on the device was closed."""
        ...

    async def submit(self, bio: Bio) -> None:
        """Perform the bio, raising FuseblkError with the kernel's errno on failure.

        READ fills ``bio.buf`` in place; WRITE never modifies ``bio.buf``.
        """
        ...

    async def evict_key(self, key: BlkCryptoKey) -> None:
        """``blk_crypto_evict_key`` on this device: absent is success, a key in use is EBUSY."""
        ...


@runtime_checkable
class Backend(BlockDevice, Protocol):
    """A device at the bottom of a stack: attached hardware, owned by the device manager."""

    @property
    def path(self) -> str:
        """The reference it was attached by (an image path): two references to the same
        storage resolve to one backend."""
        ...

    async def flush(self) -> None:
        """Make written data durable and record the hardware's state."""
        ...

    async def close(self) -> None:
        """Detach cleanly: data synced, state recorded, the storage released."""
        ...

    def info(self) -> dict[str, Any]:
        """What ``fuseblk image inspect`` and ``dm info`` show of it (never key material)."""
        ...


class OpenCounter:
    """``open()``/``release()`` as devices keep them: a count of handles on the device's file.

    The FUSE layer opens and releases; ``dm remove`` and ``umount`` read the count. A release
    without an open (a handle from before a restart of the count) never takes it below zero.
    """

    _open_count = 0

    @property
    def open_count(self) -> int:
        return self._open_count

    def open(self) -> None:
        self._open_count += 1

    def release(self) -> None:
        self._open_count = max(0, self._open_count - 1)
