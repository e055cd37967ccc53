"""The one interface every layer below the FUSE layer offers: submit a bio.

Backends (emulated hardware) and mapped devices both satisfy :class:`BlockDevice`, which is what
lets tables stack devices on devices. A device's ``crypto_profile`` says which encryption
contexts it accepts natively; ``None`` means it has no inline encryption at all (a bio with a
context must not reach it: the layer above falls back first).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from fuseblk.bio import Bio

if TYPE_CHECKING:
    from fuseblk.blkcrypto.keyslot_manager import CryptoProfile


@runtime_checkable
class BlockDevice(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def size(self) -> int:
        """Bytes; always a multiple of 512."""
        ...

    @property
    def crypto_profile(self) -> CryptoProfile | None: ...

    async def submit(self, bio: Bio) -> None:
        """Perform the bio, raising FuseblkError with the kernel's errno on failure.

        READ fills ``bio.buf`` in place; WRITE never modifies ``bio.buf``.
        """
        ...
