"""Helpers nothing calls are removed, not kept "just in case": each one is API to maintain and a
second way to do what callers already do another way."""

from __future__ import annotations

import pytest

from fuseblk import errors
from fuseblk.bio import Bio
from fuseblk.dm.table import Table
from fuseblk.key import BlkCryptoKey


@pytest.mark.parametrize(
    ("owner", "name", "callers_use"),
    [
        (errors, "eio", "FuseblkError(errno.EIO, ...)"),
        (BlkCryptoKey, "data_unit_shift", "data_unit_size"),
        (Bio, "sector", "offset, in bytes"),
        (Table, "passes_crypto", "crypto_caps, or each target's passes_crypto"),
    ],
)
def test_unused_helpers_are_gone(owner: object, name: str, callers_use: str) -> None:
    assert not hasattr(owner, name), f"{name} has no caller: callers use {callers_use}"
