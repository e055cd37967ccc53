"""The target registry: every target type by name, in one place; targets stand below dm core."""

from __future__ import annotations

import subprocess
import sys

from fuseblk.dm.targets.base import Target
from fuseblk.dm.targets.registry import get_target, target_names

DM_CORE = ("fuseblk.dm.manager", "fuseblk.dm.mapped_device", "fuseblk.dm.table")


def test_every_target_is_registered_under_its_own_name():
    names = target_names()
    assert names == sorted(
        [
            "crypt",
            "default-key",
            "delay",
            "error",
            "flakey",
            "inlinecrypt",
            "linear",
            "raid1",
            "striped",
            "zero",
        ]
    )
    for name in names:
        cls = get_target(name)
        assert cls is not None and issubclass(cls, Target) and cls.name == name
    assert get_target("mirror") is None


def test_loading_every_target_loads_no_dm_core():
    code = (
        "import sys, fuseblk.dm.targets.registry\n"
        f"print(sorted(m for m in {DM_CORE!r} if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
