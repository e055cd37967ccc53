"""Per-data-unit ciphers: the hot path of every encrypted byte.

``get_cipher(key)`` expands a key once (what "programming a keyslot" costs) and returns an object
that en/decrypts any number of whole data units in one call, unit ``i`` with DUN ``dun + i``.
Hardware keyslots, the software fallback, the crypt target and ``fuseblk crypt`` all use it, so
their ciphertext is identical by construction.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from fuseblk.key import BlkCryptoKey
from fuseblk.modes import CryptoMode

Buffer = bytes | bytearray | memoryview


def byte_view(data: Buffer) -> memoryview:
    """``data`` as a flat view of bytes, so that offsets and lengths count bytes whatever the
    caller's buffer format (a bio's memoryview may have been cast)."""
    view = memoryview(data)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


class DataUnitCipher(Protocol):
    data_unit_size: int

    def encrypt(self, data: Buffer, dun: int) -> bytearray:
        """Ciphertext of whole data units (a new buffer: the input is never modified)."""
        ...

    def decrypt(self, data: Buffer, dun: int) -> bytearray:
        """Plaintext of whole data units (a new buffer)."""
        ...

    def decrypt_into(self, buf: memoryview, dun: int) -> None:
        """Decrypt in place: for reads, whose destination buffer already holds the ciphertext."""
        ...


_FACTORIES: dict[CryptoMode, Callable[[BlkCryptoKey], DataUnitCipher]] = {}


def register(
    mode: CryptoMode,
) -> Callable[[Callable[[BlkCryptoKey], DataUnitCipher]], Callable[[BlkCryptoKey], DataUnitCipher]]:
    def deco(
        factory: Callable[[BlkCryptoKey], DataUnitCipher],
    ) -> Callable[[BlkCryptoKey], DataUnitCipher]:
        _FACTORIES[mode] = factory
        return factory

    return deco


def get_cipher(key: BlkCryptoKey) -> DataUnitCipher:
    """Expand ``key`` into a cipher for its mode and data unit size."""
    _load_all()
    return _FACTORIES[key.mode](key)


def _load_all() -> None:
    if len(_FACTORIES) < len(CryptoMode):
        from fuseblk.ciphers import adiantum, essiv, xts  # noqa: F401  (register themselves)
