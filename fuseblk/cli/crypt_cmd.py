"""``fuseblk crypt {encrypt,decrypt}``: the per-data-unit ciphers as a stdin → stdout filter.

The same code path as the emulated hardware and the fallback (``get_cipher``), so it doubles as
an oracle for what an image should hold: ``fuseblk crypt encrypt ... < plain > cipher``. Input is
streamed in pieces of whole data units with the DUN advancing, so it never holds more than a
few MiB whatever the input size. Input that is not a whole number of data units is refused
(EINVAL, exit 2); when stdin is a regular file that is checked before anything is written,
on a pipe only when the short tail arrives.
"""

from __future__ import annotations

import argparse
import os
import stat
import string
import sys
from typing import BinaryIO

from fuseblk.ciphers import DataUnitCipher, get_cipher
from fuseblk.dun import dun_bytes_needed
from fuseblk.errors import einval
from fuseblk.key import BlkCryptoKey
from fuseblk.keyfile import read_key_file
from fuseblk.modes import CryptoMode

STREAM_BYTES = 1 << 20  # per read; rounded to whole data units
_HEX = set(string.hexdigits)


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "crypt",
        help="en/decrypt stdin to stdout, data unit by data unit, like inline-encryption hardware",
        description="En/decrypt whole data units from stdin to stdout; data unit i uses DUN "
        "(--dun + i). The key is never printed.",
    )
    parser.add_argument("direction", choices=("encrypt", "decrypt"))
    parser.add_argument(
        "--mode",
        required=True,
        help="AES-256-XTS, AES-128-CBC-ESSIV, Adiantum or SM4-XTS (case-insensitive)",
    )
    key = parser.add_mutually_exclusive_group(required=True)
    key.add_argument("--key-file", metavar="FILE", help="raw key bytes, or the key's hex")
    key.add_argument("--key-hex", metavar="HEX", help="the raw key in hex")
    parser.add_argument(
        "--data-unit-size", required=True, metavar="N", help="bytes, a power of two"
    )
    parser.add_argument(
        "--dun", required=True, metavar="N", help="DUN of the first data unit (decimal or 0x hex)"
    )
    parser.add_argument(
        "--dun-bytes", metavar="N", help="the key's DUN width (default: the mode's IV size)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    mode = CryptoMode.parse(args.mode)
    raw = load_key(mode, key_hex=args.key_hex, key_file=args.key_file)
    dus = parse_number(args.data_unit_size, "--data-unit-size")
    dun_bytes = None if args.dun_bytes is None else parse_number(args.dun_bytes, "--dun-bytes")
    dun = parse_number(args.dun, "--dun")
    key = BlkCryptoKey.create(mode, raw, dus, dun_bytes)
    stdin = sys.stdin.buffer
    total = _regular_file_remaining(stdin)
    if total is not None:
        _check_whole_units(total, dus)
        _check_dun_range(dun, total // dus, key)
    cipher = get_cipher(key)
    stream(cipher, stdin, sys.stdout.buffer, dun, args.direction == "encrypt", key)
    return 0


def stream(
    cipher: DataUnitCipher,
    src: BinaryIO,
    dst: BinaryIO,
    dun: int,
    encrypt: bool,
    key: BlkCryptoKey,
) -> None:
    """Pipe ``src`` through ``cipher`` in pieces of whole data units, advancing the DUN."""
    dus = cipher.data_unit_size
    piece = max(dus, STREAM_BYTES // dus * dus)
    while True:
        data = src.read(piece)
        if not data:
            break
        _check_whole_units(len(data), dus)
        units = len(data) // dus
        _check_dun_range(dun, units, key)
        dst.write(cipher.encrypt(data, dun) if encrypt else cipher.decrypt(data, dun))
        dun += units
    dst.flush()


def load_key(mode: CryptoMode, key_hex: str | None = None, key_file: str | None = None) -> bytes:
    """The raw key from --key-hex, or from --key-file as every command reads key files
    (:mod:`fuseblk.keyfile`), sized for ``mode``.

    Errors say what is wrong with the key's shape, never what it holds.
    """
    if key_hex is not None:
        raw = _from_hex(key_hex.strip(), "--key-hex")
        if len(raw) != mode.key_size:
            raise einval(
                f"{mode.sysfs_name} needs a {mode.key_size}-byte key, got {len(raw)} bytes"
            )
        return raw
    if key_file is not None:
        return read_key_file(key_file, mode.key_size, mode.sysfs_name)
    raise einval("a key is needed: --key-hex or --key-file")


def parse_number(text: str, what: str) -> int:
    """A non-negative integer in decimal or 0x hex."""
    t = text.strip().replace("_", "")
    try:
        value = int(t[2:], 16) if t.lower().startswith("0x") else int(t, 10)
    except ValueError:
        raise einval(f"{what}: expected a decimal or 0x-hex number, got {text!r}") from None
    if value < 0:
        raise einval(f"{what}: must not be negative, got {text!r}")
    return value


def _from_hex(text: str, what: str) -> bytes:
    if len(text) % 2 or not set(text) <= _HEX:
        raise einval(f"{what} is not valid hex ({len(text)} characters)")
    return bytes.fromhex(text)


def _regular_file_remaining(f: BinaryIO) -> int | None:
    try:
        fd = f.fileno()
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        return max(0, st.st_size - os.lseek(fd, 0, os.SEEK_CUR))
    except (OSError, ValueError):
        return None


def _check_whole_units(nbytes: int, dus: int) -> None:
    if nbytes % dus:
        raise einval(f"input is not a whole number of {dus}-byte data units ({nbytes} bytes)")


def _check_dun_range(dun: int, units: int, key: BlkCryptoKey) -> None:
    """Every data unit's DUN must fit in the key's DUN width, as blk-crypto requires."""
    if units == 0:
        return
    last = dun + units - 1
    if dun_bytes_needed(last) > key.dun_bytes:
        raise einval(f"DUN {last:#x} does not fit in the key's {key.dun_bytes}-byte DUN width")
