"""Every target type, by the name tables use (the kernel's ``dm_register_target`` calls).

Adding a target is one module under ``targets/`` and one line here.
"""

from __future__ import annotations

from fuseblk.dm.targets.base import Target
from fuseblk.dm.targets.crypt import CryptTarget
from fuseblk.dm.targets.default_key import DefaultKeyTarget
from fuseblk.dm.targets.delay import DelayTarget
from fuseblk.dm.targets.error import ErrorTarget
from fuseblk.dm.targets.flakey import FlakeyTarget
from fuseblk.dm.targets.inlinecrypt import InlineCryptTarget
from fuseblk.dm.targets.linear import LinearTarget
from fuseblk.dm.targets.raid1 import Raid1Target
from fuseblk.dm.targets.striped import StripedTarget
from fuseblk.dm.targets.zero import ZeroTarget

_TARGET_TYPES: dict[str, type[Target]] = {
    cls.name: cls
    for cls in (
        LinearTarget,
        StripedTarget,
        ZeroTarget,
        ErrorTarget,
        FlakeyTarget,
        DelayTarget,
        CryptTarget,
        DefaultKeyTarget,
        InlineCryptTarget,
        Raid1Target,
    )
}


def get_target(name: str) -> type[Target] | None:
    return _TARGET_TYPES.get(name)


def target_names() -> list[str]:
    return sorted(_TARGET_TYPES)
