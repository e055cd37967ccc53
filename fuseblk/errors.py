"""Errors are exceptions carrying an errno; the FUSE and CLI boundaries convert them once.

Every layer raises :class:`FuseblkError` (or a subclass) with the errno the kernel would return
for the same failure, so the FUSE layer can hand ``err.errno`` to the kernel unchanged and the
CLI can print ``err.message`` without guessing.
"""

from __future__ import annotations

import errno as _errno
import os
import re

# The shortest raw key (AES-128-CBC-ESSIV) is 16 bytes: 32 hex digits.
_KEY_LIKE_HEX = re.compile(r"[0-9a-fA-F]{32,}")


def redact_key_hex(text: str) -> str:
    """Replace every run of 32 or more hex digits by its length.

    Table text quoted back in an error can hold a key that the user put in the wrong field (key
    and cipher swapped, a key pasted as an option): the error must not repeat it.
    """
    return _KEY_LIKE_HEX.sub(lambda m: f"<{len(m.group())} hex digits>", text)


class FuseblkError(Exception):
    """A failure with the errno the kernel would report and a one-line human message.

    Messages must never contain raw key bytes: name keys by their identifier instead.
    """

    def __init__(self, errno: int, message: str | None = None) -> None:
        self.errno = errno
        self.message = message or os.strerror(errno)
        super().__init__(errno, self.message)

    def __str__(self) -> str:
        return self.message

    @property
    def errno_name(self) -> str:
        return errno_name(self.errno)


# Linux gives EOPNOTSUPP and ENOTSUP one number; Python names it ENOTSUP, the kernel's sources
# (and so these docs and messages) EOPNOTSUPP.
_ERRNO_NAMES = {**_errno.errorcode, _errno.EOPNOTSUPP: "EOPNOTSUPP"}


def errno_name(number: int) -> str:
    """The symbolic name of an errno as the kernel spells it (``EOPNOTSUPP``, not ``ENOTSUP``)."""
    return _ERRNO_NAMES.get(number, str(number))


class TableError(FuseblkError):
    """A malformed table line: names the line, the field, and what was expected."""

    def __init__(self, line: int, field: str, expected: str, got: str | None = None) -> None:
        self.line = line
        self.field = redact_key_hex(field)
        detail = f"line {line}: {field}: expected {expected}"
        if got is not None:
            detail += f", got {got!r}"
        super().__init__(_errno.EINVAL, redact_key_hex(detail))


class ImageFormatError(FuseblkError):
    """An image header that cannot be used, with the reason."""

    def __init__(self, message: str, errno: int = _errno.EINVAL) -> None:
        super().__init__(errno, message)


def einval(message: str) -> FuseblkError:
    return FuseblkError(_errno.EINVAL, message)
