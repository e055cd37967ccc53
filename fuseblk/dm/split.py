"""Splitting a bio at target boundaries (the split in dm core's ``__split_and_process_bio``).

A bio that spans targets is cut at every boundary it crosses. Each piece's offset is relative to
its target, and its context's DUN is advanced by the bytes before it. A boundary never falls
inside a data unit of the bio's context, because a DUN can only advance by whole units: such a
bio fails with EINVAL before any piece is submitted.
"""

from __future__ import annotations

import errno

from fuseblk import SECTOR_SIZE
from fuseblk.bio import Bio
from fuseblk.dm.table import Table
from fuseblk.dm.targets.base import Target
from fuseblk.errors import FuseblkError


def split_at_targets(table: Table, bio: Bio, device_name: str) -> list[tuple[Target, Bio]]:
    """``(target, piece)`` in device order for a bio inside ``table`` (range already checked)."""
    targets = table.targets
    i = table.index_at(bio.offset)
    target = targets[i]
    if bio.end <= target.begin + target.length:  # inside one target: only the offset moves
        return [
            (target, Bio(bio.op, bio.offset - target.begin, bio.length, bio.buf, bio.crypt_ctx))
        ]
    dus = bio.crypt_ctx.key.data_unit_size if bio.crypt_ctx is not None else SECTOR_SIZE
    pieces: list[tuple[Target, Bio]] = []
    pos = bio.offset
    while pos < bio.end:
        target = targets[i]
        if (pos - bio.offset) % dus:
            raise FuseblkError(
                errno.EINVAL,
                f"{device_name}: target boundary at sector {pos // SECTOR_SIZE} falls inside a "
                f"{dus}-byte data unit of the bio",
            )
        n = min(bio.end, target.begin + target.length) - pos
        pieces.append((target, bio.slice(pos - bio.offset, n).remap(pos - target.begin)))
        pos += n
        i += 1
    return pieces
