"""Arguments shared by dm-crypt, dm-default-key and dm-inlinecrypt: ciphers, keys, sectors, options.

The three take ``<cipher> <key> <iv_offset> <device> <offset> [<#opt_params> <opt_params>]``
(dm-default-key copied dm-crypt's syntax, dm-inlinecrypt default-key's), so they parse it with the
same functions and report malformed arguments the same way: a :class:`TargetArgError` naming the
field. Key text is never echoed in an error, only its length. The two that attach a key for
blk-crypto (default-key, inlinecrypt) also share their option loop, the DUN width rule, the
hardware-wrapped key sizes and the ``blk_crypto_start_using_key`` check at table load.

A cipher spec is mapped onto the blk-crypto mode that computes the same ciphertext: dm-crypt's
``aes-xts-plain64`` with a 64-byte key *is* AES-256-XTS with DUN = IV sector, and
``aes-cbc-essiv:sha256`` with a 16-byte key *is* AES-128-CBC-ESSIV. Specs whose ciphertext no
blk-crypto mode reproduces (AES-128-XTS, ``benbi``, ``lmk``, ...) are refused with a message
listing what is supported.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fuseblk import SECTOR_SHIFT, SECTOR_SIZE
from fuseblk.dm.targets.base import TargetArgError, TargetEnv
from fuseblk.dm.targets.ctr_args import SECTOR_MAX, read_decimal
from fuseblk.errors import FuseblkError
from fuseblk.key import BlkCryptoKey, KeyType
from fuseblk.modes import CryptoMode

if TYPE_CHECKING:
    from fuseblk.device import BlockDevice

MAX_SECTOR_SIZE = 4096


@dataclass(frozen=True)
class CipherSpec:
    """A parsed ``<cipher>`` argument: the blk-crypto mode and the width of the IV sector."""

    text: str  # as given: echoed by ``dmsetup table``
    mode: CryptoMode
    iv_bits: int  # 32 for ``plain`` (the sector wraps at 2^32), 64 for plain64/essiv

    def iv_sector(self, sector: int) -> int:
        """The IV generator's view of ``sector``: truncated to the IV's width, as the kernel's
        ``crypt_iv_plain_gen`` stores only the low 32 bits."""
        return sector & ((1 << self.iv_bits) - 1)


# (crypto API name, IV mode, IV options) -> (mode, IV bits). The crypto API name is what the
# kernel builds from either syntax: ``aes-xts-plain64`` and ``capi:xts(aes)-plain64`` both name
# ``xts(aes)`` with IV mode ``plain64``.
_CRYPT_CIPHERS: dict[tuple[str, str, str | None], tuple[CryptoMode, int]] = {
    ("xts(aes)", "plain64", None): (CryptoMode.AES_256_XTS, 64),
    ("xts(aes)", "plain", None): (CryptoMode.AES_256_XTS, 32),
    ("cbc(aes)", "essiv", "sha256"): (CryptoMode.AES_128_CBC_ESSIV, 64),
    ("adiantum(xchacha12,aes)", "plain64", None): (CryptoMode.ADIANTUM, 64),
    ("xts(sm4)", "plain64", None): (CryptoMode.SM4_XTS, 64),
    ("xts(sm4)", "plain", None): (CryptoMode.SM4_XTS, 32),
}

CRYPT_SUPPORTED = (
    "aes-xts-plain64 or aes-xts-plain with a 64-byte key (AES-256-XTS), "
    "aes-cbc-essiv:sha256 with a 16-byte key (AES-128-CBC-ESSIV), "
    "xchacha12,aes-adiantum-plain64 with a 32-byte key (Adiantum), "
    "sm4-xts-plain64 or sm4-xts-plain with a 32-byte key (SM4-XTS); "
    "capi: forms of these, e.g. capi:xts(aes)-plain64"
)

# dm-default-key looks its cipher up by exact name (``lookup_cipher``).
_DEFAULT_KEY_CIPHERS: dict[str, CryptoMode] = {
    "aes-xts-plain64": CryptoMode.AES_256_XTS,
    "xchacha12,aes-adiantum-plain64": CryptoMode.ADIANTUM,
}

DEFAULT_KEY_SUPPORTED = (
    "aes-xts-plain64 with a 64-byte key (AES-256-XTS) or "
    "xchacha12,aes-adiantum-plain64 with a 32-byte key (Adiantum)"
)


def _crypt_api_triple(text: str) -> tuple[str, str | None, str | None]:
    """Split either dm-crypt syntax into (crypto API name, IV mode, IV options)."""
    if text.startswith("capi:"):
        # capi:cipher_api_spec-ivmode[:ivopts]; the hash in ivopts may itself contain '-'.
        rest = text[len("capi:") :]
        api, _, ivopts = rest.rpartition(":") if ":" in rest else (rest, "", "")
        api, dash, ivmode = api.rpartition("-")
        if not dash:
            return api + ivmode, None, ivopts or None
        return api, ivmode, ivopts or None
    if "(" in text:
        raise TargetArgError(
            "cipher", "cipher[:keycount]-chainmode-ivmode[:ivopts] or capi:...", text
        )
    # Legacy: cipher[:keycount]-chainmode-ivmode[:ivopts]
    head, _, tail = text.partition("-")
    cipher, _, keycount = head.partition(":")
    if keycount and keycount != "1":
        raise TargetArgError("cipher", "a key count of 1 (multi-key specs are not supported)", text)
    chainmode, _, ivpart = tail.partition("-")
    ivmode, _, ivopts = ivpart.partition(":")
    if not chainmode:
        chainmode, ivmode = "cbc", "plain"  # the kernel's default for a bare cipher name
    return f"{chainmode}({cipher})", ivmode or None, ivopts or None


def parse_crypt_cipher(text: str) -> CipherSpec:
    """dm-crypt's ``<cipher>``, in the legacy or the ``capi:`` syntax."""
    api, ivmode, ivopts = _crypt_api_triple(text)
    if ivmode is None:
        raise TargetArgError("cipher", f"an IV mode (supported: {CRYPT_SUPPORTED})", text)
    if ivmode == "essiv" and ivopts is None:
        raise TargetArgError("cipher", "a digest for ESSIV, e.g. essiv:sha256", text)
    found = _CRYPT_CIPHERS.get((api, ivmode, ivopts))
    if found is None:
        raise TargetArgError("cipher", f"one of: {CRYPT_SUPPORTED}", text)
    mode, iv_bits = found
    return CipherSpec(text, mode, iv_bits)


def parse_default_key_cipher(text: str) -> CipherSpec:
    """dm-default-key's ``<cipher>``: one of two exact names."""
    mode = _DEFAULT_KEY_CIPHERS.get(text)
    if mode is None:
        raise TargetArgError("cipher", DEFAULT_KEY_SUPPORTED, text)
    return CipherSpec(text, mode, 64)


_HEX_RE = re.compile(r"^[0-9a-fA-F]*$")

# BLK_CRYPTO_MAX_HW_WRAPPED_KEY_SIZE: the largest ephemerally-wrapped blob a table may carry
# (dm-default-key's DM_DEFAULT_KEY_MAX_WRAPPED_KEY_SIZE, dm-inlinecrypt's BLK_CRYPTO_MAX_ANY_KEY_SIZE).
MAX_WRAPPED_KEY_SIZE = 128
# ``blk_crypto_modes[].security_strength`` of the modes these targets name: the fewest bytes a
# wrapped blob can have and still hold a key that strong (``blk_crypto_init_key``).
_SECURITY_STRENGTH = {
    CryptoMode.AES_256_XTS: 32,
    CryptoMode.AES_128_CBC_ESSIV: 16,
    CryptoMode.ADIANTUM: 32,
    CryptoMode.SM4_XTS: 16,
}


def _hex_bytes(text: str, max_size: int | None = None) -> bytes:
    """The bytes of a hex key argument; errors describe it by length only (the text is secret)."""
    if text.startswith(":"):
        raise TargetArgError("key", "a hex key: keyring keys are not supported", text)
    if text == "-":
        raise TargetArgError("key", "a hex key (an empty key, '-', is only for cipher_null)", text)
    if not _HEX_RE.match(text):
        raise TargetArgError("key", "hex digits only", f"{len(text)} characters, not all hex")
    if len(text) % 2:
        raise TargetArgError("key", "an even number of hex digits", f"{len(text)} hex digits")
    if max_size is not None and (not text or len(text) > 2 * max_size):
        raise TargetArgError("key", f"1 to {max_size} bytes of hex", f"a {len(text) // 2}-byte key")
    return bytes.fromhex(text)


def parse_hex_key(text: str, spec: CipherSpec, supported: str) -> bytes:
    """The raw key from its hex; its length must be the key size of ``spec``'s mode."""
    raw = _hex_bytes(text)
    want = spec.mode.key_size
    if len(raw) != want:
        raise TargetArgError(
            "key",
            f"{want} bytes for {spec.text} ({spec.mode.sysfs_name}); supported: {supported}",
            f"a {len(raw)}-byte key",
        )
    return raw


def parse_wrapped_key(text: str, spec: CipherSpec) -> bytes:
    """An ephemerally-wrapped key from its hex: from the mode's security strength to 128 bytes.

    What is inside the blob is the hardware's business; only its size is checked here, as
    ``blk_crypto_init_key`` does for ``BLK_CRYPTO_KEY_TYPE_HW_WRAPPED``.
    """
    raw = _hex_bytes(text, MAX_WRAPPED_KEY_SIZE)
    least = _SECURITY_STRENGTH[spec.mode]
    if not least <= len(raw) <= MAX_WRAPPED_KEY_SIZE:
        raise TargetArgError(
            "key",
            f"a hardware-wrapped key of {least} to {MAX_WRAPPED_KEY_SIZE} bytes for {spec.text}",
            f"a {len(raw)}-byte key",
        )
    return raw


def parse_key(text: str, spec: CipherSpec, key_type: KeyType, supported: str) -> bytes:
    """The key argument as ``key_type`` says: raw bytes of the mode's size, or a wrapped blob."""
    if key_type == KeyType.HW_WRAPPED:
        return parse_wrapped_key(text, spec)
    return parse_hex_key(text, spec, supported)


def parse_sector_size(option: str, value: str) -> int:
    """``sector_size:N``: a power of two from 512 to 4096."""
    n = read_decimal(value, MAX_SECTOR_SIZE) or 0
    if n < SECTOR_SIZE or n & (n - 1):
        raise TargetArgError(f"option {option!r}", "a power of two from 512 to 4096", value)
    return n


def check_iv_range(iv_offset: int, iv_offset_text: str, length: int) -> None:
    """The IV sector of the target's last sector, ``iv_offset + length - 1``, must be a u64.

    The kernel adds them in ``sector_t`` and wraps silently, reusing IVs from the start of the
    range; a table that would need that is refused instead (on purpose).
    """
    last = SECTOR_MAX - ((length >> SECTOR_SHIFT) - 1)
    if iv_offset > last:
        raise TargetArgError(
            "iv_offset",
            f"at most {last}, so that iv_offset + length stays below 2^64 sectors",
            iv_offset_text,
        )


def check_whole_units(iv_offset: int, iv_offset_text: str, sector_size: int, length: int) -> None:
    """The IV offset and the target length must be whole data units (``crypt_ctr``'s checks).

    Both targets address whole data units: a length that ends inside one leaves a unit no bio
    can cover, and with large-sector IVs an offset inside one has no DUN.
    """
    sectors_per_unit = sector_size >> SECTOR_SHIFT
    if iv_offset % sectors_per_unit:
        raise TargetArgError(
            "iv_offset", f"a multiple of {sectors_per_unit} (sector_size)", iv_offset_text
        )
    if length % sector_size:
        raise TargetArgError(
            f"option 'sector_size:{sector_size}'",
            f"a divisor of the target length ({length >> SECTOR_SHIFT} sectors)",
        )


def positional(args: list[str], names: tuple[str, ...]) -> list[str]:
    """The leading ``names`` arguments; the first missing one is the error's field."""
    if len(args) < len(names):
        raise TargetArgError(names[len(args)], f"{len(names)} arguments: {' '.join(names)}", None)
    return args[: len(names)]


def split_optional(args: list[str], max_count: int) -> list[str]:
    """``[<#opt_params> <opt_params>...]`` after the positional arguments (``dm_read_arg_group``)."""
    if not args:
        return []
    count_text, rest = args[0], args[1:]
    count = read_decimal(count_text, max_count)
    if count is None:
        raise TargetArgError("#opt_params", f"a count from 0 to {max_count}", count_text)
    if len(rest) != count:
        raise TargetArgError(
            "#opt_params", f"exactly {count} optional parameters to follow", " ".join(rest)
        )
    return rest


def format_optional(params: list[str]) -> str:
    """`` <#opt_params> <opt_params>`` as ``dmsetup table`` prints it (nothing when empty)."""
    return f" {len(params)} {' '.join(params)}" if params else ""


@dataclass
class InlineCryptOptions:
    """The optional parameters of the targets that attach a key for blk-crypto to use
    (dm-default-key, dm-inlinecrypt): both read them in the same loop, except the key type."""

    allow_discards: bool = False
    sector_size: int = SECTOR_SIZE
    key_type: KeyType = KeyType.RAW

    def table_params(self) -> list[str]:
        """The shared parameters as both targets print them; the key type is each target's."""
        params = ["allow_discards"] if self.allow_discards else []
        if self.sector_size != SECTOR_SIZE:
            params += [f"sector_size:{self.sector_size}", "iv_large_sectors"]
        return params


def parse_inline_crypt_options(
    args: list[str],
    max_count: int,
    key_type_option: Callable[[str], KeyType | None],
    accepted: str,
    target: str,
) -> InlineCryptOptions:
    """``allow_discards``, ``sector_size:N``, ``iv_large_sectors`` and the target's key-type
    option (``key_type_option`` gives the type an option names, None for no such option).

    Both targets implement only large-sector IVs, so ``sector_size`` other than 512 requires
    ``iv_large_sectors``.
    """
    opts = InlineCryptOptions()
    iv_large_sectors = False
    for opt in split_optional(args, max_count):
        if opt == "allow_discards":
            opts.allow_discards = True
        elif opt.startswith("sector_size:"):
            opts.sector_size = parse_sector_size(opt, opt.partition(":")[2])
        elif opt == "iv_large_sectors":
            iv_large_sectors = True
        else:
            key_type = key_type_option(opt)
            if key_type is None:
                raise TargetArgError(f"option {opt!r}", accepted)
            opts.key_type = key_type
    if opts.sector_size != SECTOR_SIZE and not iv_large_sectors:
        raise TargetArgError(
            "option 'iv_large_sectors'",
            f"to be given with sector_size:{opts.sector_size} ({target} implements only large-sector IVs)",
        )
    return opts


def largest_dun(iv_offset: int, length: int, sector_size: int) -> int:
    """The DUN of a target's last data unit: ``(iv_offset + sectors - 1) >> log2(N / 512)``,
    what dm-default-key and dm-inlinecrypt size the key's DUN width by."""
    unit_shift = sector_size.bit_length() - 1 - SECTOR_SHIFT
    return (iv_offset + (length >> SECTOR_SHIFT) - 1) >> unit_shift


def describe_key(key: BlkCryptoKey) -> str:
    """A target's key in its status: the configuration and identifier, never the bytes."""
    text = (
        f"{key.mode.sysfs_name} key_id={key.key_id} data_unit_size={key.data_unit_size}"
        f" dun_bytes={key.dun_bytes}"
    )
    return text + " key_type=hw-wrapped" if key.key_type == KeyType.HW_WRAPPED else text


def start_using_key(env: TargetEnv, dev: BlockDevice, key: BlkCryptoKey) -> None:
    """``blk_crypto_start_using_key`` at table load, failing it as the targets do ("Error
    starting to use blk-crypto") with the block layer's errno (EOPNOTSUPP for a wrapped key
    no device below can take)."""
    try:
        env.block_layer.start_using_key(dev, key)
    except FuseblkError as exc:
        raise TargetArgError(
            "key",
            f"a key {dev.name} can take (Error starting to use blk-crypto: {exc.message})",
            errno=exc.errno,
        ) from None
