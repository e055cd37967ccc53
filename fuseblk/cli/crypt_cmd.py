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
import errno
import os
import stat
import string
import sys
from collections.abc import Callable
from typing import BinaryIO, TextIO, TypeVar

from fuseblk.ciphers import DataUnitCipher, get_cipher
from fuseblk.dun import DUN_MAX_BYTES, dun_bytes_needed
from fuseblk.errors import FuseblkError, einval
from fuseblk.key import BlkCryptoKey
from fuseblk.keyfile import read_key_file
from fuseblk.modes import CryptoMode
from fuseblk.numbers import U64_MAX, parse_int

STREAM_BYTES = 1 << 20  # per read; rounded to whole data units
T = TypeVar("T")
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
    dun = parse_number(args.dun, "--dun", hi=(1 << 8 * DUN_MAX_BYTES) - 1)
    key = BlkCryptoKey.create(mode, raw, dus, dun_bytes)
    stdin, stdout = _standard_stream(sys.stdin, "input"), _standard_stream(sys.stdout, "output")
    total = _regular_file_remaining(stdin)
    if total is not None:
        _check_whole_units(total, dus)
        _check_dun_range(dun, total // dus, key)
    cipher = get_cipher(key)
    stream(cipher, stdin, stdout, dun, args.direction == "encrypt", key)
    return 0


def _standard_stream(stream: TextIO | None, name: str) -> BinaryIO:
    """The binary side of stdin or stdout; EBADF when the command was started with it closed
    (``fuseblk crypt ... >&-``), which Python shows as ``sys.stdout is None``."""
    if stream is None:
        raise FuseblkError(errno.EBADF, f"standard {name} is closed")
    return stream.buffer


def stream(
    cipher: DataUnitCipher,
    src: BinaryIO,
    dst: BinaryIO,
    dun: int,
    encrypt: bool,
    key: BlkCryptoKey,
) -> None:
    """Pipe ``src`` through ``cipher`` in pieces of whole data units, advancing the DUN.

    A failing read or write (a full disk, ``< directory``) is a FuseblkError naming the stream.
    """
    dus = cipher.data_unit_size
    piece = max(dus, STREAM_BYTES // dus * dus)
    while True:
        data = _stdio(src.read, piece, name="input")
        if not data:
            break
        _check_whole_units(len(data), dus)
        units = len(data) // dus
        _check_dun_range(dun, units, key)
        _stdio(dst.write, cipher.encrypt(data, dun) if encrypt else cipher.decrypt(data, dun))
        dun += units
    _stdio(dst.flush)


def _stdio(op: Callable[..., T], *args: object, name: str = "output") -> T:
    try:
        return op(*args)
    except BrokenPipeError:
        raise  # the reader went away: the CLI exits quietly
    except OSError as exc:
        raise FuseblkError(exc.errno or errno.EIO, f"standard {name}: {exc.strerror}") from None


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


def parse_number(text: str, what: str, hi: int = U64_MAX) -> int:
    """A non-negative integer in ASCII decimal or 0x hex (fuseblk.numbers)."""
    return parse_int(text, what, hi=hi, allow_hex=True)


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
