"""dm-crypt: encrypt in software, whatever the device below can do.

Table line: ``crypt <cipher> <key> <iv_offset> <device> <offset> [<#opt_params> <opt_params>]``
with the kernel's syntax (Documentation/admin-guide/device-mapper/dm-crypt.rst). Ciphers are the
ones a blk-crypto mode reproduces byte for byte (see :mod:`fuseblk.dm.targets.cipher_spec`): dm-crypt
with ``aes-xts-plain64`` and a 64-byte key writes exactly what AES-256-XTS inline encryption
writes with DUN = IV sector, which is what makes a dm-crypt volume and a default-key volume
interchangeable.

IV sector of a data unit at byte ``off`` of the target: ``iv_offset + off / 512`` (512-byte
sectors), shifted right by log2(sector_size / 512) with ``iv_large_sectors``; ``plain`` keeps its
low 32 bits, ``plain64`` and ``essiv`` 64. It is the DUN handed to the cipher.

Options: ``allow_discards``, ``sector_size:N`` (512..4096, a power of two), ``iv_large_sectors``.
The kernel's performance hints (``same_cpu_crypt``, ``submit_from_crypt_cpus``,
``no_read_workqueue``, ``no_write_workqueue``, ``high_priority``) are accepted and have no effect
(there are no work queues here), so tables written for cryptsetup load unchanged. The integrity
options are refused by name. Keyring keys (``:32:logon:desc``) are refused.

``dmsetup table`` shows the key as ``-`` (as dm-default-key does) unless ``--showkeys``.
The target does not pass crypto through: a bio reaching it with a context means the layer above
forgot to fall back, and fails with EIO rather than being encrypted twice or not at all.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from typing import TYPE_CHECKING

from fuseblk import SECTOR_SHIFT, SECTOR_SIZE
from fuseblk.bio import Bio, BioOp
from fuseblk.ciphers import get_cipher
from fuseblk.dm.targets.base import Target, TargetArgError, TargetEnv
from fuseblk.dm.targets.cipher_spec import (
    CRYPT_SUPPORTED,
    check_iv_range,
    check_whole_units,
    format_optional,
    parse_crypt_cipher,
    parse_hex_key,
    parse_sector_size,
    positional,
    split_optional,
)
from fuseblk.dm.targets.ctr_args import get_device_at, parse_sector
from fuseblk.errors import FuseblkError
from fuseblk.key import BlkCryptoKey

if TYPE_CHECKING:
    from fuseblk.device import BlockDevice

_POSITIONAL = ("cipher", "key", "iv_offset", "device", "offset")
_MAX_OPT_PARAMS = 6  # as crypt_ctr_optional
_PERFORMANCE_HINTS = (
    "same_cpu_crypt",
    "submit_from_crypt_cpus",
    "no_read_workqueue",
    "no_write_workqueue",
    "high_priority",
)
_NOT_IMPLEMENTED = ("integrity:", "integrity_key_size:")


def iv_runs(first: int, step: int, units: int, iv_bits: int) -> Iterator[tuple[int, int, int]]:
    """Split ``units`` data units into runs the cipher can take in one call.

    Unit ``i`` has IV sector ``first + i * step`` truncated to ``iv_bits``. A cipher call covers
    consecutive DUNs, so a run ends where the step is not 1 (no ``iv_large_sectors`` with
    sectors above 512) or where the IV wraps (``plain`` at 2^32). Yields
    ``(first unit, unit count, DUN)``.
    """
    mask = (1 << iv_bits) - 1
    if step != 1:
        for i in range(units):
            yield i, 1, (first + i * step) & mask
        return
    i = 0
    while i < units:
        dun = (first + i) & mask
        n = min(units - i, mask + 1 - dun)
        yield i, n, dun
        i += n


class CryptTarget(Target):
    name = "crypt"
    version = (1, 24, 0)
    passes_crypto = False

    def __init__(self, env: TargetEnv, begin: int, length: int, args: list[str]) -> None:
        super().__init__(env, begin, length, args)
        cipher_text, key_text, iv_offset_text, self.dev_ref, offset_text = positional(
            args, _POSITIONAL
        )
        self.allow_discards = False
        self.iv_large_sectors = False
        self.sector_size = SECTOR_SIZE
        self._hints: list[str] = []
        for opt in split_optional(args[len(_POSITIONAL) :], _MAX_OPT_PARAMS):
            self._parse_option(opt)

        self.spec = parse_crypt_cipher(cipher_text)
        raw = parse_hex_key(key_text, self.spec, CRYPT_SUPPORTED)
        self.iv_offset = parse_sector(iv_offset_text, "iv_offset")
        check_iv_range(self.iv_offset, iv_offset_text, length)
        check_whole_units(self.iv_offset, iv_offset_text, self.sector_size, length)
        self.dev, self.offset = get_device_at(env, self.dev_ref, offset_text, length)
        self.key = BlkCryptoKey.create(self.spec.mode, raw, self.sector_size)
        self._cipher = get_cipher(self.key)
        self.io_granularity = self.sector_size

    def _parse_option(self, opt: str) -> None:
        low = opt.lower()  # crypt_ctr_optional compares with strcasecmp
        if low == "allow_discards":
            self.allow_discards = True
        elif low == "iv_large_sectors":
            self.iv_large_sectors = True
        elif low.startswith("sector_size:"):
            self.sector_size = parse_sector_size(opt, opt.partition(":")[2])
        elif low in _PERFORMANCE_HINTS:
            self._hints.append(low)
        elif low.startswith(_NOT_IMPLEMENTED):
            raise TargetArgError(
                f"option {opt!r}", "no integrity options: dm-integrity is not implemented"
            )
        else:
            raise TargetArgError(
                f"option {opt!r}",
                "allow_discards, sector_size:N, iv_large_sectors or a performance hint",
            )

    def _options(self) -> list[str]:
        """In crypt_status order."""
        opts = ["allow_discards"] if self.allow_discards else []
        opts += [h for h in _PERFORMANCE_HINTS if h in self._hints]
        if self.sector_size != SECTOR_SIZE:
            opts.append(f"sector_size:{self.sector_size}")
        if self.iv_large_sectors:
            opts.append("iv_large_sectors")
        return opts

    def table_args(self, show_keys: bool = False) -> str:
        key = self.key.raw.hex() if show_keys else "-"
        return (
            f"{self.spec.text} {key} {self.iv_offset} {self.dev.name} {self.offset >> SECTOR_SHIFT}"
            + format_optional(self._options())
        )

    def devices(self) -> list[BlockDevice]:
        return [self.dev]

    def _runs(self, offset: int, length: int) -> Iterator[tuple[int, int, int]]:
        """(byte offset in the bio, byte count, DUN) runs for ``length`` bytes at ``offset``."""
        sector = self.iv_offset + (offset >> SECTOR_SHIFT)
        unit_sectors = self.sector_size >> SECTOR_SHIFT
        if self.iv_large_sectors:
            first, step = sector // unit_sectors, 1
        else:
            first, step = sector, unit_sectors
        size = self.sector_size
        for i, n, dun in iv_runs(first, step, length // size, self.spec.iv_bits):
            yield i * size, n * size, dun

    async def map(self, bio: Bio) -> None:
        if bio.crypt_ctx is not None:
            raise FuseblkError(
                errno.EIO, f"crypt: bio arrived with an encryption context ({bio.crypt_ctx!r})"
            )
        if bio.op is BioOp.FLUSH:
            await self.submit_bio(self.dev, bio)
            return
        if bio.op is BioOp.DISCARD:
            if not self.allow_discards:
                raise FuseblkError(
                    errno.EOPNOTSUPP, "crypt: discards need the allow_discards option"
                )
            await self.submit_bio(self.dev, bio.remap(self.offset + bio.offset))
            return
        if bio.offset % self.sector_size or bio.length % self.sector_size:
            # crypt_map's DM_MAPIO_KILL for I/O not aligned to the encryption sector
            raise FuseblkError(
                errno.EIO,
                f"crypt: {bio.length} bytes at {bio.offset} not aligned to sector_size {self.sector_size}",
            )
        assert bio.buf is not None
        lower_offset = self.offset + bio.offset
        if bio.op is BioOp.WRITE:
            await self.submit_bio(self.dev, Bio.write(lower_offset, self._encrypt(bio)))
            self._count("crypt_bytes_encrypted", bio.length)
            return
        await self.submit_bio(self.dev, bio.remap(lower_offset))
        for start, nbytes, dun in self._runs(bio.offset, bio.length):
            self._cipher.decrypt_into(bio.buf[start : start + nbytes], dun)
        self._count("crypt_bytes_decrypted", bio.length)

    def _encrypt(self, bio: Bio) -> bytearray:
        """Ciphertext of a write in a bounce buffer: the caller's buffer is never touched."""
        assert bio.buf is not None
        runs = list(self._runs(bio.offset, bio.length))
        if len(runs) == 1:
            return self._cipher.encrypt(bio.buf, runs[0][2])
        bounce = bytearray(bio.length)
        for start, nbytes, dun in runs:
            bounce[start : start + nbytes] = self._cipher.encrypt(
                bio.buf[start : start + nbytes], dun
            )
        return bounce
