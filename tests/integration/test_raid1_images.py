"""raid1 over image files, driven through the CLI against a real mount: writes that miss a leg
are counted, and each leg's image stays attached exactly while the mirror's table names it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from harness import FuseblkMount, MiB, fuseblk, require_tools, run

pytestmark = pytest.mark.integration

SIZE = 16 * MiB
SECTORS = SIZE // 512


def make_image(directory: Path, name: str, profile: str) -> Path:
    path = directory / f"{name}.img"
    fuseblk("image", "create", path, "--size", "16M", "--profile", profile)
    return path


def in_use(image: Path) -> bool:
    """What ``fuseblk image inspect`` tells a user: whether a daemon has the image attached."""
    info = json.loads(fuseblk("image", "inspect", "--json", image).stdout)
    return bool(info["in_use"])


def test_a_degraded_mirror_counts_its_writes_and_holds_exactly_the_legs_it_names(
    default_setup: FuseblkMount, tmp_path: Path
) -> None:
    require_tools("dd")
    m = default_setup
    a, b, other = (make_image(tmp_path, name, "ufs") for name in ("a", "b", "other"))
    plain = make_image(tmp_path, "plain", "none")
    m.dm("create", "mirror", "--table", f"0 {SECTORS} raid1 2 {a} 0 {b} 0 1 nosync")
    m.dm("create", "unrelated", "--table", f"0 {SECTORS} linear {other} 0")

    m.dm("message", "mirror", "0", "fail", "1")
    data_file = tmp_path / "data.bin"
    data_file.write_bytes(os.urandom(MiB))
    run(["dd", f"if={data_file}", f"of={m.dev('mirror')}", "bs=64k", "oflag=direct"])
    counters = m.stats()["devices"]["mirror"]
    assert counters["degraded_writes"] >= 1 and counters["degraded_bytes"] == MiB
    status = m.dm("status", "mirror").stdout.decode()
    assert status.split()[3:5] == ["2", "AD"] and status.endswith(" 2 degraded\n"), status

    refused = m.dm("message", "mirror", "0", "add", plain, "0", check=False)
    assert refused.returncode == 1 and b"more restrictive" in refused.stderr
    assert not in_use(plain)

    m.dm("remove", "unrelated")
    assert not in_use(other)
    assert in_use(b) and str(b) in m.dm("table", "mirror").stdout.decode()
    assert str(b) in m.stats()["backends"]

    m.dm("message", "mirror", "0", "remove", "1")
    assert not in_use(b) and in_use(a)
