"""A bio's encryption context (``struct bio_crypt_ctx``): a key and the DUN of its first data unit.

Contexts are immutable: splitting or advancing a bio makes a new context whose DUN has moved by
``nbytes / data_unit_size`` with carry (``bio_crypt_advance``). Remapping a bio to another
sector never touches the DUN.

A context holds its DUN as one int, the form the ciphers take; the kernel's four limbs
(:attr:`BioCryptContext.dun`) are made only when asked for, since every bio through
default-key gets a fresh context.
"""

from __future__ import annotations

import errno
from typing import NamedTuple

from fuseblk.dun import DUN_BITS, Dun, dun_from_int, dun_to_int
from fuseblk.errors import FuseblkError
from fuseblk.key import BlkCryptoKey

# Misaligned bios fail with EINVAL, as in current kernels (5.x returned EIO; see DESIGN.md).
MISALIGNED_ERRNO = errno.EINVAL


_DUN_MOD = 1 << DUN_BITS


class BioCryptContext(NamedTuple):
    key: BlkCryptoKey
    dun_int: int  # 0 <= dun_int < 2^256

    @classmethod
    def at(cls, key: BlkCryptoKey, dun: int) -> BioCryptContext:
        """The context of ``key`` at DUN ``dun`` (wrapping modulo 2^256, as the limbs do)."""
        return cls(key, dun % _DUN_MOD)

    @classmethod
    def of_limbs(cls, key: BlkCryptoKey, dun: Dun) -> BioCryptContext:
        return cls(key, dun_to_int(dun))

    @property
    def dun(self) -> Dun:
        """The DUN as the kernel's ``bc_dun``: four 64-bit limbs, least significant first."""
        return dun_from_int(self.dun_int)

    def advanced(self, nbytes: int) -> BioCryptContext:
        """The context of the data ``nbytes`` further on; ``nbytes`` must be whole data units."""
        units, rest = divmod(nbytes, self.key.data_unit_size)
        if rest:
            raise FuseblkError(
                MISALIGNED_ERRNO,
                f"cannot advance a crypt context by {nbytes} bytes: not a multiple of the "
                f"{self.key.data_unit_size}-byte data unit",
            )
        return BioCryptContext(self.key, (self.dun_int + units) % _DUN_MOD)

    def is_contiguous_with(self, nbytes: int, nxt: BioCryptContext) -> bool:
        """``bio_crypt_ctx_mergeable``: same key and ``nxt`` starts where ``nbytes`` of us end.

        Unlike the kernel's limb-wise check, a DUN that wraps past 2^256 is not contiguous: the
        merged bio would reuse DUNs (a deliberate strictness; the kernel never meets it in practice).
        """
        if nxt.key != self.key or nbytes % self.key.data_unit_size:
            return False
        end = self.dun_int + nbytes // self.key.data_unit_size
        return end < (1 << DUN_BITS) and end == nxt.dun_int

    def check_aligned(self, offset_in_bio: int, length: int) -> None:
        """``bio_crypt_check_alignment``: every segment must be whole data units."""
        dus = self.key.data_unit_size
        if offset_in_bio % dus or length % dus:
            raise FuseblkError(
                MISALIGNED_ERRNO,
                f"I/O of {length} bytes at +{offset_in_bio} is not aligned to the "
                f"{dus}-byte data unit of key {self.key.key_id}",
            )

    def __repr__(self) -> str:
        return f"BioCryptContext({self.key!r}, dun={self.dun_int:#x})"
