"""Key files: the raw key bytes, or exactly their hex optionally followed by one newline.

One reader for every key file (``fuseblk dm evict-key --key-file``, ``fuseblk crypt
--key-file``, the default setup's ``secure.key``; docs/architecture.md, "Key files"), so a file
one command accepts the others accept too. Errors describe the file's shape, never its content: it may be a key.
"""

from __future__ import annotations

import errno
import os

from fuseblk.errors import FuseblkError
from fuseblk.inputfile import read_input_file

_HEX_DIGITS = b"0123456789abcdefABCDEF"


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
