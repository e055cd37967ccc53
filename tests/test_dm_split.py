"""Splitting a bio at target boundaries: offsets relative to each target, DUNs advanced."""

from __future__ import annotations

import errno

import pytest
from device_helpers import MemDevice, MiB, make_key
from dm_helpers import DeviceEnv

from fuseblk.bio import Bio
from fuseblk.crypt_context import BioCryptContext
from fuseblk.dm.split import split_at_targets
from fuseblk.dm.table import Table
from fuseblk.errors import FuseblkError

ENV = DeviceEnv({"a": MemDevice("a", MiB), "b": MemDevice("b", MiB)}, "dm-split")
TABLE = "0 8 linear a 0\n8 16 linear b 0\n24 8 zero\n"


async def test_a_bio_inside_one_target_is_one_piece_at_the_target_offset():
    table = await Table.parse(TABLE, ENV)
    [(target, piece)] = split_at_targets(table, Bio.read(10 * 512, bytearray(1024)), "d")
    assert target is table.targets[1] and (piece.offset, piece.length) == (2 * 512, 1024)


async def test_a_bio_across_targets_is_cut_at_every_boundary_and_advances_the_dun():
    table = await Table.parse(TABLE, ENV)
    key = make_key(1, dus=512)
    bio = Bio.write(4 * 512, bytes(24 * 512), BioCryptContext.at(key, 100))
    pieces = split_at_targets(table, bio, "d")
    assert [t for t, _ in pieces] == table.targets
    assert [(p.offset, p.length) for _, p in pieces] == [
        (4 * 512, 4 * 512),
        (0, 16 * 512),
        (0, 4 * 512),
    ]
    assert [p.crypt_ctx.dun_int for _, p in pieces if p.crypt_ctx] == [100, 104, 120]


async def test_a_boundary_inside_a_data_unit_is_einval_naming_the_device():
    table = await Table.parse(TABLE, ENV)
    key = make_key(2, dus=4096)
    with pytest.raises(FuseblkError) as info:
        split_at_targets(table, Bio.write(2048, bytes(8192), BioCryptContext.at(key, 0)), "d")
    assert info.value.errno == errno.EINVAL and info.value.message.startswith("d: ")
