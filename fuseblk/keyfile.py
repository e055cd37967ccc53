"""Key files: the raw key bytes, or exactly their hex optionally followed by one newline.

One reader for every key file (``fuseblk dm evict-key --key-file``, ``fuseblk crypt
--key-file``, the default setup's ``secure.key``; docs/architecture.md, "Key files"), so a file
one command accepts the others accept too. Keys of no fixed size (a hardware-wrapped key's blobs,
``fuseblk key``, ``dm evict-key --key-type hw-wrapped``) are read by :func:`read_key_or_blob`. Errors describe the file's shape, never its content: it may be a key.
"""

from __future__ import annotations

import errno
import os

from fuseblk.errors import FuseblkError
from fuseblk.inputfile import read_input_file

_HEX_DIGITS = b"0123456789abcdefABCDEF"
MAX_BLOB_FILE = 4096  # bytes: far more than any key or blob, in hex or not


class KeyFileError(FuseblkError):
    """The file was read but holds no key of the expected size (EINVAL).

    Its own class so a CLI can tell a wrong key (a usage error) from an unreadable file.
    """

    def __init__(self, message: str) -> None:
        super().__init__(errno.EINVAL, message)


def read_key_file(path: str | os.PathLike[str], key_size: int, what: str) -> bytes:
    """The ``key_size``-byte key in ``path``; ``what`` names the key's use in the error.

    Reads at most one byte more than the longest valid file (hex and a newline), so pointing
    ``--key-file`` at something large costs nothing. An unreadable file is a FuseblkError with
    the OS's errno; a FIFO or device is refused without waiting on it (fuseblk.inputfile).
    """
    longest = 2 * key_size + 1
    data = read_input_file(path, longest + 1)
    if len(data) == key_size:
        return data
    text = data[:-1] if data.endswith(b"\n") else data
    if len(text) == 2 * key_size and all(c in _HEX_DIGITS for c in text):
        return bytes.fromhex(text.decode("ascii"))  # digits only: fromhex would skip spaces
    got = f"{len(data)} bytes" if len(data) <= longest else f"more than {longest} bytes"
    raise KeyFileError(
        f"{path}: {what} needs a {key_size}-byte key, got {got} "
        f"(give {key_size} raw key bytes or {2 * key_size} hex digits)"
    )


def read_key_or_blob(path: str | os.PathLike[str]) -> bytes:
    """A key or key blob of any size: the file's bytes, or exactly their hex and one newline."""
    data = read_input_file(path, MAX_BLOB_FILE + 1)
    if len(data) > MAX_BLOB_FILE:
        raise KeyFileError(f"{path}: longer than {MAX_BLOB_FILE} bytes: not a key or key blob")
    text = data[:-1] if data.endswith(b"\n") else data
    if text and len(text) % 2 == 0 and all(c in _HEX_DIGITS for c in text):
        return bytes.fromhex(text.decode("ascii"))
    return data
