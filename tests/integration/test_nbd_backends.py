"""Backends on NBD servers: images on exports, devices over them, failures as I/O errors.

Each test starts its own servers (nbdkit, qemu-storage-daemon) on Unix sockets in its tmp dir or
on 127.0.0.1, and a fuseblk mount from a config file whose backends are NBD URIs. Servers over
a file let the test read what the export holds without fuseblk.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from harness import (
    BackgroundFio,
    FuseblkMount,
    LoopDevices,
    MiB,
    check_fio,
    fio_command,
    fuseblk,
    read_tree,
    require_fuse_mount,
    require_loop_devices,
    require_tools,
    run,
    write_tree,
)
from nbd_helpers import NbdServer, NbdServers, nbd_servers, read_at, require_libnbd, sparse_file
from test_secure_ciphertext import cli_encrypt

from fuseblk.hw.factory import open_storage
from fuseblk.hw.image_format import read_headers, write_headers

pytestmark = pytest.mark.integration

EXPORT_SIZE = 64 * MiB
DATA_SIZE = 32 * MiB
DATA_OFFSET = MiB  # where every image's data area starts (docs/image-format.md)
SECTORS = DATA_SIZE // 512
KEY = bytes(range(64))
TIMEOUT = 1.0  # FUSEBLK_NBD_TIMEOUT for the daemons of these tests


class ConfigMount(FuseblkMount):
    """A fuseblk mount of a config file."""

    def __init__(self, root: Path, config: str) -> None:
        root.mkdir()
        (root / "mnt").mkdir()
        super().__init__(root / "mnt", root / "state", root / "daemon.log")
        self.config = root / "config.toml"
        self.config.write_text(config)

    def mount(self) -> None:
        self.try_mount(check=True)
        assert self.is_mounted()

    def try_mount(self, *options: str, check: bool = False) -> tuple[int, str]:
        proc = fuseblk(
            "mount",
            self.mountpoint,
            "--config",
            self.config,
            "--state-dir",
            self.state_dir,
            "--log-file",
            self.log_file,
            *options,
            timeout=60,
            check=check,
        )
        return proc.returncode, proc.stderr.decode(errors="replace")


@pytest.fixture
def servers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NbdServers]:
    require_libnbd()
    monkeypatch.setenv("FUSEBLK_NBD_TIMEOUT", str(TIMEOUT))  # the daemons inherit it
    with nbd_servers(tmp_path) as s:
        yield s


@pytest.fixture
def mounts(
    request: pytest.FixtureRequest, servers: NbdServers, tmp_path: Path
) -> Iterator[list[ConfigMount]]:
    """Mounts made by the test, torn down before its servers go."""
    require_fuse_mount()
    made: list[ConfigMount] = []
    try:
        yield made
    finally:
        for m in reversed(made):
            m.force_cleanup()


def new_mount(mounts: list[ConfigMount], root: Path, config: str) -> ConfigMount:
    m = ConfigMount(root, config)
    mounts.append(m)
    return m


def create_image(uri: str, profile: str = "ufs") -> None:
    fuseblk("image", "create", uri, "--size", str(DATA_SIZE), "--profile", profile)


def config(backends: dict[str, str], devices: dict[str, str]) -> str:
    out = []
    for name, uri in backends.items():
        out += [f"[backends.{name}]", f'image = "{uri}"', ""]
    for name, table in devices.items():
        out += [f"[devices.{name}]", f"table = '{table}'", ""]
    return "\n".join(out)


def secure_table(backend: str) -> str:
    return (
        f"0 {SECTORS} default-key aes-xts-plain64 {KEY.hex()} 0 {backend} 0 "
        "2 sector_size:4096 iv_large_sectors"
    )


def dd_direct(
    src: Path, dst: Path, count_mib: int, *, seek: int = 0, skip: int = 0, check: bool = True
) -> tuple[int, str]:
    flag = "oflag=direct" if dst.parent.name == "mnt" else "iflag=direct"
    proc = run(
        [
            "dd",
            f"if={src}",
            f"of={dst}",
            "bs=1M",
            f"count={count_mib}",
            f"seek={seek}",
            f"skip={skip}",
            flag,
            "conv=notrunc",
        ],
        check=check,
        timeout=60,
    )
    return proc.returncode, proc.stderr.decode(errors="replace")


def backend_stats(m: FuseblkMount, name: str) -> dict:
    result: dict = m.stats()["backends"][name]
    return result


# -- images on exports --------------------------------------------------------------------------


def test_image_create_on_an_export_writes_the_header_at_its_start(
    servers: NbdServers, tmp_path: Path
) -> None:
    disk = sparse_file(tmp_path / "disk.raw", EXPORT_SIZE)
    export = servers.nbdkit("file", str(disk))
    create_image(export.uri)

    assert read_at(disk, 0, 8) == b"FBLKIMG\x00"
    via_export = json.loads(fuseblk("image", "inspect", "--json", export.uri).stdout)
    via_file = json.loads(fuseblk("image", "inspect", "--json", disk).stdout)
    assert via_export["header"] == via_file["header"]
    assert via_export["header"]["data_size"] == DATA_SIZE
    assert via_export["header"]["holder"] is None and not via_export["in_use"]
    assert b": ok" in fuseblk("image", "check", export.uri).stdout

    refused = fuseblk(
        "image", "create", export.uri, "--size", "1M", "--profile", "ufs", check=False
    )
    assert refused.returncode != 0 and b"already holds an image" in refused.stderr


def test_image_create_on_a_qemu_storage_daemon_export(servers: NbdServers, tmp_path: Path) -> None:
    disk = sparse_file(tmp_path / "disk.raw", EXPORT_SIZE)
    export = servers.qemu_storage_daemon(disk)
    create_image(export.uri)
    assert read_at(disk, 0, 8) == b"FBLKIMG\x00"
    assert b": ok" in fuseblk("image", "check", export.uri).stdout


# -- devices over exports -----------------------------------------------------------------------


def test_default_key_over_an_export_stores_the_ciphertext_fuseblk_crypt_makes(
    servers: NbdServers, mounts: list[ConfigMount], tmp_path: Path
) -> None:
    disk = sparse_file(tmp_path / "disk.raw", EXPORT_SIZE)
    export = servers.nbdkit("file", str(disk))
    create_image(export.uri)
    m = new_mount(
        mounts,
        tmp_path / "a",
        config({"remote": export.uri}, {"secure": secure_table("remote")}),
    )
    m.mount()
    plaintext = os.urandom(4 * MiB)
    plain = tmp_path / "plain.bin"
    plain.write_bytes(plaintext)
    dd_direct(plain, m.dev("secure"), 4)
    back = tmp_path / "back.bin"
    dd_direct(m.dev("secure"), back, 4)
    assert back.read_bytes() == plaintext
    m.umount()

    key_file = tmp_path / "key"
    key_file.write_bytes(KEY)
    expected = cli_encrypt(key_file, plaintext)
    assert read_at(disk, DATA_OFFSET, len(plaintext)) == expected != plaintext


def test_fio_verifies_a_secure_device_over_an_nbdkit_tcp_export(
    servers: NbdServers, mounts: list[ConfigMount], tmp_path: Path
) -> None:
    """The table names the export by its URI: no backend in the config."""
    require_tools("fio")
    export = servers.nbdkit("memory", str(EXPORT_SIZE), tcp=True)
    create_image(export.uri)
    m = new_mount(mounts, tmp_path / "a", "")
    m.mount()
    m.dm("create", "secure", "--table", secure_table(export.uri))
    for rw in ("write", "randwrite"):
        check_fio(run(fio_command(m.dev("secure"), rw=rw, size=4 * MiB, numjobs=4)))
    stats = backend_stats(m, export.uri)
    assert stats["connection"]["state"] == "connected"
    assert stats["inline_bios"] > 0 and stats.get("errors", 0) == 0


@pytest.fixture
def nbd_loops(mounts: list[ConfigMount]) -> Iterator[LoopDevices]:
    """Loop devices over files of the test's mounts; released before the mounts go."""
    require_loop_devices()
    ld = LoopDevices()
    try:
        yield ld
    finally:
        ld.release_all()


def test_ext4_on_losetup_over_a_secure_device_on_an_export_survives_a_remount(
    servers: NbdServers, mounts: list[ConfigMount], nbd_loops: LoopDevices, tmp_path: Path
) -> None:
    disk = sparse_file(tmp_path / "disk.raw", EXPORT_SIZE)
    export = servers.nbdkit("file", str(disk))
    create_image(export.uri)
    cfg = config({"remote": export.uri}, {"secure": secure_table("remote")})
    m = new_mount(mounts, tmp_path / "a", cfg)
    m.mount()
    fs = tmp_path / "fs"

    dev = nbd_loops.attach(m.dev("secure"))
    run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-E", "nodiscard", dev], timeout=180)
    nbd_loops.mount(dev, fs)
    expected = write_tree(fs, seed=7)
    os.sync()
    nbd_loops.umount(fs)
    run(["fsck.ext4", "-fn", dev], timeout=180)
    nbd_loops.detach(dev)
    m.umount()

    m.mount()
    dev = nbd_loops.attach(m.dev("secure"))
    run(["fsck.ext4", "-fn", dev], timeout=180)
    nbd_loops.mount(dev, fs)
    assert read_tree(fs) == expected


def test_raid1_with_legs_on_two_servers_survives_one_killed_mid_fio(
    servers: NbdServers, mounts: list[ConfigMount], tmp_path: Path
) -> None:
    """One leg on nbdkit, one on qemu-storage-daemon; nbdkit dies under fio, comes back, and the
    leg added again is resynchronised to the same bytes."""
    require_tools("fio")
    left_disk = sparse_file(tmp_path / "left.raw", EXPORT_SIZE)
    right_disk = sparse_file(tmp_path / "right.raw", EXPORT_SIZE)
    left = servers.qemu_storage_daemon(left_disk)
    right = servers.nbdkit("file", str(right_disk))
    create_image(left.uri)
    create_image(right.uri)
    table = f"0 {SECTORS} raid1 2 left 0 right 0"
    m = new_mount(
        mounts, tmp_path / "a", config({"left": left.uri, "right": right.uri}, {"mirror": table})
    )
    m.mount()
    wait_for_status(m, "mirror", "AA", "idle")

    cmd = fio_command(m.dev("mirror"), rw="randwrite", size=4 * MiB, numjobs=2, runtime=4)
    with BackgroundFio(cmd) as fio:
        time.sleep(1.5)
        assert fio.running()
        right.kill()
        report = fio.finish()
    assert all(job["error"] == 0 for job in report["jobs"])
    assert "D" in status(m, "mirror").split()[4]

    right.start()  # the same file behind the same socket
    deadline = time.monotonic() + 20
    while backend_stats(m, "right")["connection"]["state"] != "connected":
        assert time.monotonic() < deadline, backend_stats(m, "right")
        time.sleep(0.2)
    assert backend_stats(m, "right")["connection"]["reconnects"] >= 1
    m.dm("message", "mirror", "0", "remove", "1")
    m.dm("message", "mirror", "0", "add", "right", "0")
    wait_for_status(m, "mirror", "AA", "idle")
    m.umount()
    assert read_at(left_disk, DATA_OFFSET, DATA_SIZE) == read_at(right_disk, DATA_OFFSET, DATA_SIZE)


def status(m: FuseblkMount, name: str) -> str:
    return m.dm("status", name).stdout.decode()


def wait_for_status(m: FuseblkMount, name: str, health: str, action: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        fields = status(m, name).split()
        if fields[4] == health and fields[6] == action:
            return
        assert time.monotonic() < deadline, f"{name}: {' '.join(fields)}"
        time.sleep(0.2)


# -- failures -----------------------------------------------------------------------------------


def test_errors_the_server_injects_reach_the_device_file_as_eio(
    servers: NbdServers, mounts: list[ConfigMount], tmp_path: Path
) -> None:
    disk = sparse_file(tmp_path / "disk.raw", EXPORT_SIZE)
    trigger = tmp_path / "inject-errors"
    export = servers.nbdkit(
        "file",
        str(disk),
        "error-pread=EIO",
        "error-pread-rate=1",
        f"error-file={trigger}",
        filters=["error"],
    )
    create_image(export.uri)
    m = new_mount(
        mounts,
        tmp_path / "a",
        config({"remote": export.uri}, {"plain": f"0 {SECTORS} linear remote 0"}),
    )
    m.mount()
    out = tmp_path / "out.bin"
    dd_direct(m.dev("plain"), out, 1)
    trigger.touch()
    code, err = dd_direct(m.dev("plain"), out, 1, skip=1, check=False)
    assert code != 0 and "Input/output error" in err
    assert backend_stats(m, "remote")["errors"] >= 1
    trigger.unlink()
    dd_direct(m.dev("plain"), out, 1, skip=1)


def test_a_second_daemon_is_refused_naming_the_holder(
    servers: NbdServers, mounts: list[ConfigMount], tmp_path: Path
) -> None:
    disk = sparse_file(tmp_path / "disk.raw", EXPORT_SIZE)
    export = servers.nbdkit("file", str(disk))
    create_image(export.uri)
    cfg = config({"remote": export.uri}, {"plain": f"0 {SECTORS} linear remote 0"})
    first = new_mount(mounts, tmp_path / "a", cfg)
    first.mount()
    holder = json.loads(fuseblk("image", "inspect", "--json", export.uri).stdout)["header"][
        "holder"
    ]
    assert holder["pid"] in first.daemon_pids()

    second = new_mount(mounts, tmp_path / "b", cfg)
    code, err = second.try_mount()
    assert code != 0 and not second.is_mounted()
    assert "in use" in err and f"pid {holder['pid']}" in err

    first.umount()  # a clean close drops the claim
    assert (
        json.loads(fuseblk("image", "inspect", "--json", export.uri).stdout)["header"]["holder"]
        is None
    )
    second.mount()


def claim_left_by_a_killed_daemon(
    servers: NbdServers, mounts: list[ConfigMount], tmp_path: Path
) -> tuple[NbdServer, str, int]:
    """An image on nbdkit's file export whose claim a SIGKILLed daemon left behind: the export,
    the config that mounted it, and the dead daemon's pid."""
    disk = sparse_file(tmp_path / "disk.raw", EXPORT_SIZE)
    export = servers.nbdkit("file", str(disk))
    create_image(export.uri)
    cfg = config({"remote": export.uri}, {"plain": f"0 {SECTORS} linear remote 0"})
    first = new_mount(mounts, tmp_path / "a", cfg)
    first.mount()
    (pid,) = first.kill()
    first.force_cleanup()
    return export, cfg, pid


def test_image_check_repair_takes_over_the_claim_of_a_killed_daemon(
    servers: NbdServers, mounts: list[ConfigMount], tmp_path: Path
) -> None:
    export, cfg, pid = claim_left_by_a_killed_daemon(servers, mounts, tmp_path)
    check = fuseblk("image", "check", export.uri, check=False)
    assert check.returncode == 1 and f"pid {pid}".encode() in check.stdout
    repaired = fuseblk("image", "check", "--repair", export.uri).stdout
    assert b"took over the claim" in repaired
    assert b": ok" in fuseblk("image", "check", export.uri).stdout


def claim_for_another_host(uri: str) -> None:
    """Make the claim a killed daemon left look like one from a machine this one cannot see."""
    storage = open_storage(uri)
    try:
        current = read_headers(storage).current
        assert current.holder is not None
        write_headers(storage, replace(current, holder=replace(current.holder, host="elsewhere")))
    finally:
        storage.close()


def holder_of(uri: str) -> dict | None:
    holder: dict | None = json.loads(fuseblk("image", "inspect", "--json", uri).stdout)["header"][
        "holder"
    ]
    return holder


def test_force_attach_takes_over_the_claim_a_killed_daemon_on_another_host_left(
    servers: NbdServers, mounts: list[ConfigMount], tmp_path: Path
) -> None:
    export, cfg, pid = claim_left_by_a_killed_daemon(servers, mounts, tmp_path)
    claim_for_another_host(export.uri)

    second = new_mount(mounts, tmp_path / "b", cfg)
    code, err = second.try_mount()
    assert code != 0 and not second.is_mounted()
    assert f"pid {pid} on elsewhere" in err and "--force-attach" in err

    second.try_mount("--force-attach", check=True)
    holder = holder_of(export.uri)
    assert holder is not None and holder["pid"] in second.daemon_pids()
    dd_direct(second.dev("plain"), tmp_path / "out.bin", 1)


def test_dm_create_force_attach_takes_over_an_export_a_table_names(
    servers: NbdServers, mounts: list[ConfigMount], tmp_path: Path
) -> None:
    local = servers.nbdkit("memory", str(EXPORT_SIZE))
    remote = servers.nbdkit("file", str(sparse_file(tmp_path / "disk.raw", EXPORT_SIZE)))
    for export in (local, remote):
        create_image(export.uri)
    cfg = config({"local": local.uri}, {"plain": f"0 {SECTORS} linear local 0"})
    first = new_mount(mounts, tmp_path / "a", config({"remote": remote.uri}, {}))
    first.mount()
    (pid,) = first.kill()
    first.force_cleanup()
    claim_for_another_host(remote.uri)

    m = new_mount(mounts, tmp_path / "b", cfg)
    m.mount()
    table = f"0 {SECTORS} linear {remote.uri} 0"
    refused = m.dm("create", "taken", "--table", table, check=False)
    assert refused.returncode == 1 and f"pid {pid} on elsewhere".encode() in refused.stderr
    m.dm("create", "taken", "--table", table, "--force-attach")
    holder = holder_of(remote.uri)
    assert holder is not None and holder["pid"] in m.daemon_pids()
    m.dm("remove", "taken")  # the image is released again: its claim with it
    assert holder_of(remote.uri) is None


def test_dm_status_shows_the_connection_of_the_exports_a_table_reaches(
    servers: NbdServers, mounts: list[ConfigMount], tmp_path: Path
) -> None:
    export = servers.nbdkit("file", str(sparse_file(tmp_path / "disk.raw", EXPORT_SIZE)))
    create_image(export.uri)
    m = new_mount(
        mounts,
        tmp_path / "a",
        config(
            {"remote": export.uri},
            {"plain": f"0 {SECTORS} linear remote 0", "secure": secure_table("plain")},
        ),
    )
    m.mount()
    connection = f"  connection remote ({export.uri}): "
    for name, target in (("plain", "linear"), ("secure", "default-key")):
        lines = status(m, name).splitlines()
        assert lines[0].split()[:3] == ["0", str(SECTORS), target]  # dmsetup's line as it is
        assert lines[1:] == [connection + "connected"]

    export.kill()
    code, _ = dd_direct(m.dev("secure"), tmp_path / "out.bin", 1, check=False)
    assert code != 0
    for name in ("plain", "secure"):
        (_, state) = status(m, name).splitlines()
        assert state.startswith(connection + "disconnected")

    export.start()
    deadline = time.monotonic() + 20
    while status(m, "secure").splitlines()[1] != connection + "connected":
        assert time.monotonic() < deadline, status(m, "secure")
        time.sleep(0.2)
    dd_direct(m.dev("secure"), tmp_path / "out.bin", 1)


def test_a_stalled_server_fails_requests_within_the_timeout_then_serves_again(
    servers: NbdServers, mounts: list[ConfigMount], tmp_path: Path
) -> None:
    disk = sparse_file(tmp_path / "disk.raw", EXPORT_SIZE)
    export = servers.nbdkit("file", str(disk))
    create_image(export.uri)
    m = new_mount(
        mounts,
        tmp_path / "a",
        config({"remote": export.uri}, {"plain": f"0 {SECTORS} linear remote 0"}),
    )
    m.mount()
    out = tmp_path / "out.bin"
    dd_direct(m.dev("plain"), out, 1)

    export.stall()
    try:
        started = time.monotonic()
        code, err = dd_direct(m.dev("plain"), out, 1, skip=2, check=False)
        elapsed = time.monotonic() - started
        assert code != 0 and "Input/output error" in err
        assert elapsed < TIMEOUT + 5, f"a stalled server held a read for {elapsed:.1f} s"
        assert backend_stats(m, "remote")["connection"]["state"].startswith("disconnected")
    finally:
        export.resume()

    deadline = time.monotonic() + 20
    while dd_direct(m.dev("plain"), out, 1, skip=3, check=False)[0] != 0:
        assert time.monotonic() < deadline, backend_stats(m, "remote")
        time.sleep(0.2)
    connection = backend_stats(m, "remote")["connection"]
    assert connection["state"] == "connected" and connection["reconnects"] >= 1
