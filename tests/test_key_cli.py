"""``fuseblk key``: the wrapped-key operations against a running daemon, every errno included.

The daemon serves four backends (``ice``: wrapped keys only, like Qualcomm's ICE; ``both``: raw
and wrapped; ``inline``: raw only; ``legacy``: no inline encryption) and mapped devices over
them. Most tests call ``fuseblk.cli.main`` in-process; one runs the CLI as a user does.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from control_helpers import DaemonThread, cli_env, cli_run

from fuseblk.bio import Bio
from fuseblk.ciphers.hw_kdf import sw_secret
from fuseblk.cli import main
from fuseblk.dm.manager import DeviceManager
from fuseblk.errors import errno_name
from fuseblk.hw.factory import create_backend
from fuseblk.hw.profiles import load_profile

MiB = 1 << 20
SECTORS = 4 * MiB // 512
RAW = bytes(range(100, 132))  # a 32-byte raw key: the KDF's key itself
PROFILES = {"ice": "ice-wrapped", "both": "ufs-wrapped", "inline": "ufs", "legacy": "none"}


def factory(directory: Path) -> Callable[[], Awaitable[DeviceManager]]:
    async def make() -> DeviceManager:
        manager = DeviceManager()
        for name, profile in PROFILES.items():
            path = directory / f"{name}.img"
            if not path.exists():
                await create_backend(path, 4 * MiB, load_profile(profile)).close()
            manager.add_backend(name, path)
        await manager.create("wrapped", f"0 {SECTORS} linear ice 0\n")
        await manager.create("stacked", f"0 {SECTORS} linear wrapped 0\n")
        await manager.create("plain", f"0 {SECTORS} linear legacy 0\n")
        await manager.create("mixed", f"0 {SECTORS} linear inline 0\n")
        await manager.create("empty", "")
        await manager.create("nothing", f"0 {SECTORS} zero\n")
        return manager

    return make


@pytest.fixture
def keyd(rundir: Path, tmp_path: Path) -> Iterator[DaemonThread]:
    d = DaemonThread(factory(tmp_path), tmp_path / "mnt").start()
    try:
        yield d
    finally:
        d.stop()


def key(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    return cli_run(capsys, "key", *argv)


def file_with(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def ok(capsys: pytest.CaptureFixture[str], *argv: str) -> bytes:
    status, out, err = key(capsys, *argv)
    assert (status, err) == (0, "")
    return bytes.fromhex(out.strip())


def refused(capsys: pytest.CaptureFixture[str], expected: int, *argv: str) -> str:
    status, out, err = key(capsys, *argv)
    assert out == ""
    assert status == (2 if expected == errno.EINVAL else 1)
    assert err.endswith(f" ({errno_name(expected)})\n"), err
    assert err.count("\n") == 1
    return err


# --- round trips ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dev", ["ice", "both", "wrapped", "stacked"])
def test_import_prepare_derive_gives_the_kdf_secret_of_the_raw_key(
    keyd: DaemonThread, tmp_path: Path, capsys: pytest.CaptureFixture[str], dev: str
) -> None:
    raw_file = file_with(tmp_path, "raw.key", RAW.hex().encode() + b"\n")
    lt = ok(capsys, "import", dev, "--raw-key-file", raw_file)
    eph = ok(capsys, "prepare", dev, "--lt-key-file", file_with(tmp_path, "lt", lt))
    secret = ok(capsys, "derive-sw-secret", dev, "--eph-key-file", file_with(tmp_path, "e", eph))
    assert secret == sw_secret(RAW)


def test_generate_then_prepare_and_derive(
    keyd: DaemonThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lt = ok(capsys, "generate", "ice")
    eph = ok(
        capsys, "prepare", "ice", "--lt-key-file", file_with(tmp_path, "lt", lt.hex().encode())
    )
    assert (
        len(ok(capsys, "derive-sw-secret", "ice", "--eph-key-file", file_with(tmp_path, "e", eph)))
        == 32
    )


def test_out_writes_the_blob_to_a_new_file_only_root_can_read(
    keyd: DaemonThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "lt.blob"
    old = os.umask(0)
    try:
        status, stdout, err = key(capsys, "generate", "ice", "--out", str(out))
    finally:
        os.umask(old)
    assert (status, stdout, err) == (0, "", "")
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert len(out.read_bytes()) == 60
    eph = ok(capsys, "prepare", "ice", "--lt-key-file", str(out))  # a binary blob file works
    assert len(eph) == 60
    refused(capsys, errno.EEXIST, "generate", "ice", "--out", str(out))  # never overwritten


def test_json_output_names_the_result(
    keyd: DaemonThread, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = key(capsys, "generate", "ice", "--json")
    assert status == 0 and set(json.loads(out)) == {"lt_key_hex"}


# --- every errno ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dev", ["legacy", "plain", "empty"])
def test_a_device_without_inline_encryption_is_eopnotsupp_even_for_a_bad_size(
    keyd: DaemonThread, tmp_path: Path, capsys: pytest.CaptureFixture[str], dev: str
) -> None:
    """blk_crypto_ioctl refuses a device without a profile before looking at the arguments."""
    refused(
        capsys,
        errno.EOPNOTSUPP,
        "import",
        dev,
        "--raw-key-file",
        file_with(tmp_path, "k", bytes(8)),
    )
    refused(capsys, errno.EOPNOTSUPP, "generate", dev)


@pytest.mark.parametrize("dev", ["inline", "mixed"])
def test_hardware_without_wrapped_keys_is_eopnotsupp(
    keyd: DaemonThread, tmp_path: Path, capsys: pytest.CaptureFixture[str], dev: str
) -> None:
    blob = file_with(tmp_path, "blob", os.urandom(60))
    refused(
        capsys, errno.EOPNOTSUPP, "import", dev, "--raw-key-file", file_with(tmp_path, "k", RAW)
    )
    refused(capsys, errno.EOPNOTSUPP, "generate", dev)
    refused(capsys, errno.EOPNOTSUPP, "prepare", dev, "--lt-key-file", blob)
    refused(capsys, errno.EOPNOTSUPP, "derive-sw-secret", dev, "--eph-key-file", blob)


def test_a_table_of_targets_that_do_not_pass_crypto_is_eopnotsupp(
    keyd: DaemonThread, capsys: pytest.CaptureFixture[str]
) -> None:
    refused(capsys, errno.EOPNOTSUPP, "generate", "nothing")


@pytest.mark.parametrize("size", [0, 15, 65, 100])
def test_a_raw_key_outside_16_to_64_bytes_is_einval(
    keyd: DaemonThread, tmp_path: Path, capsys: pytest.CaptureFixture[str], size: int
) -> None:
    path = file_with(tmp_path, "raw", b"\xff" * size)
    refused(capsys, errno.EINVAL, "import", "ice", "--raw-key-file", path)
    refused(capsys, errno.EINVAL, "import", "inline", "--raw-key-file", path)  # before EOPNOTSUPP


@pytest.mark.parametrize("size", [16, 24, 48, 64])
def test_a_raw_key_of_16_to_64_bytes_imports(
    keyd: DaemonThread, tmp_path: Path, capsys: pytest.CaptureFixture[str], size: int
) -> None:
    assert (
        len(ok(capsys, "import", "ice", "--raw-key-file", file_with(tmp_path, "r", b"\xfe" * size)))
        == 60
    )


def test_a_long_term_blob_over_128_bytes_is_einval(
    keyd: DaemonThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    refused(
        capsys,
        errno.EINVAL,
        "prepare",
        "ice",
        "--lt-key-file",
        file_with(tmp_path, "b", b"\xfe" * 129),
    )


@pytest.mark.parametrize("verb", ["import", "generate", "prepare"])
def test_an_output_buffer_too_small_is_eoverflow(
    keyd: DaemonThread, tmp_path: Path, capsys: pytest.CaptureFixture[str], verb: str
) -> None:
    lt = ok(capsys, "generate", "ice")
    inputs = {
        "import": ["--raw-key-file", file_with(tmp_path, "r", RAW)],
        "generate": [],
        "prepare": ["--lt-key-file", file_with(tmp_path, "lt", lt)],
    }
    refused(capsys, errno.EOVERFLOW, verb, "ice", *inputs[verb], "--buffer-size", "59")
    assert len(ok(capsys, verb, "ice", *inputs[verb], "--buffer-size", "60")) == 60


def test_blobs_the_hardware_does_not_accept_are_ebadmsg(
    keyd: DaemonThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lt = ok(capsys, "import", "ice", "--raw-key-file", file_with(tmp_path, "r", RAW))
    eph = ok(capsys, "prepare", "ice", "--lt-key-file", file_with(tmp_path, "lt", lt))
    tampered = bytes([lt[0] ^ 0x80]) + lt[1:]
    other = ok(capsys, "import", "both", "--raw-key-file", file_with(tmp_path, "r2", RAW))
    cases = [
        ("prepare", "--lt-key-file", tampered),
        ("prepare", "--lt-key-file", eph),  # ephemeral where long-term is expected
        ("prepare", "--lt-key-file", other),  # another image's
        ("derive-sw-secret", "--eph-key-file", lt),  # long-term where ephemeral is expected
        ("derive-sw-secret", "--eph-key-file", bytes(60)),
    ]
    for i, (verb, option, blob) in enumerate(cases):
        err = refused(
            capsys, errno.EBADMSG, verb, "ice", option, file_with(tmp_path, f"b{i}", blob)
        )
        for secret in (RAW, lt, eph, other, tampered):
            assert secret.hex() not in err


def test_a_mapped_device_over_two_images_answers_with_the_one_that_accepts_the_blob(
    keyd: DaemonThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keyd.run(
        keyd.manager.create,
        "pair",
        f"0 {SECTORS} linear ice 0\n{SECTORS} {SECTORS} linear both 0\n",
    )
    lt = ok(capsys, "import", "both", "--raw-key-file", file_with(tmp_path, "r", RAW))
    eph = ok(capsys, "prepare", "pair", "--lt-key-file", file_with(tmp_path, "lt", lt))
    secret = ok(capsys, "derive-sw-secret", "both", "--eph-key-file", file_with(tmp_path, "e", eph))
    assert secret == sw_secret(RAW)


def test_an_unknown_device_is_enxio(keyd: DaemonThread, capsys: pytest.CaptureFixture[str]) -> None:
    refused(capsys, errno.ENXIO, "generate", "nope")


# --- reset and restart --------------------------------------------------------------------------------


def test_hw_reset_invalidates_ephemeral_blobs_but_not_long_term_ones(
    keyd: DaemonThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lt_file = file_with(
        tmp_path, "lt", ok(capsys, "import", "ice", "--raw-key-file", file_with(tmp_path, "r", RAW))
    )
    eph_file = file_with(tmp_path, "eph", ok(capsys, "prepare", "ice", "--lt-key-file", lt_file))
    assert main(["hw", "fault", "ice", "reset"]) == 0
    capsys.readouterr()
    refused(capsys, errno.EBADMSG, "derive-sw-secret", "ice", "--eph-key-file", eph_file)
    eph = ok(capsys, "prepare", "ice", "--lt-key-file", lt_file)
    assert ok(
        capsys, "derive-sw-secret", "wrapped", "--eph-key-file", file_with(tmp_path, "e2", eph)
    ) == sw_secret(RAW)


def test_a_daemon_restart_invalidates_ephemeral_blobs_but_not_long_term_ones(
    rundir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = DaemonThread(factory(tmp_path), tmp_path / "mnt").start()
    try:
        lt_file = file_with(tmp_path, "lt", ok(capsys, "generate", "ice"))
        eph_file = file_with(
            tmp_path, "eph", ok(capsys, "prepare", "ice", "--lt-key-file", lt_file)
        )
        before = ok(capsys, "derive-sw-secret", "ice", "--eph-key-file", eph_file)
    finally:
        d.stop()
    d = DaemonThread(factory(tmp_path), tmp_path / "mnt").start()
    try:
        refused(capsys, errno.EBADMSG, "derive-sw-secret", "ice", "--eph-key-file", eph_file)
        eph = ok(capsys, "prepare", "ice", "--lt-key-file", lt_file)
        after = ok(
            capsys, "derive-sw-secret", "ice", "--eph-key-file", file_with(tmp_path, "e2", eph)
        )
        assert after == before
    finally:
        d.stop()


# --- nothing secret in the log ----------------------------------------------------------------------


def test_no_key_blob_or_secret_reaches_the_daemon_log(
    keyd: DaemonThread,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="fuseblk")
    lt = ok(capsys, "import", "ice", "--raw-key-file", file_with(tmp_path, "r", RAW))
    eph = ok(capsys, "prepare", "ice", "--lt-key-file", file_with(tmp_path, "lt", lt))
    secret = ok(capsys, "derive-sw-secret", "ice", "--eph-key-file", file_with(tmp_path, "e", eph))
    refused(capsys, errno.EBADMSG, "prepare", "ice", "--lt-key-file", file_with(tmp_path, "x", eph))
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "control: key_import" in logged  # the requests were logged, redacted
    for needle in (RAW, lt, eph, secret):
        assert needle.hex() not in logged
        assert needle.hex()[:32] not in logged


# --- as a user runs it ------------------------------------------------------------------------------


def test_the_cli_as_a_subprocess_prints_hex_and_exits_by_errno(
    keyd: DaemonThread, rundir: Path, tmp_path: Path
) -> None:
    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "fuseblk", "key", *argv],
            capture_output=True,
            text=True,
            env=cli_env(rundir),
            timeout=60,
            stdin=subprocess.DEVNULL,
        )

    made = run("generate", "ice")
    assert made.returncode == 0 and len(bytes.fromhex(made.stdout.strip())) == 60
    small = run("generate", "ice", "--buffer-size", "8")
    assert small.returncode == 1 and small.stderr.startswith("fuseblk key generate: ")
    assert small.stderr.endswith("(EOVERFLOW)\n")
    short = run("import", "ice", "--raw-key-file", file_with(tmp_path, "r", b"\x01" * 8))
    assert short.returncode == 2 and "BLKCRYPTOIMPORTKEY" in short.stderr


# --- key types in dm info ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("legs", "shown"),
    [
        (["ice"], "hw_wrapped"),
        (["both"], "raw,hw_wrapped"),
        (["ice", "both"], "hw_wrapped"),
        (["inline", "both"], "raw"),
    ],
)
def test_dm_info_shows_the_intersected_key_types(
    keyd: DaemonThread, capsys: pytest.CaptureFixture[str], legs: list[str], shown: str
) -> None:
    table = "".join(f"{i * SECTORS} {SECTORS} linear {leg} 0\n" for i, leg in enumerate(legs))
    keyd.run(keyd.manager.create, "probe", table)
    assert main(["dm", "info", "probe"]) == 0
    assert f"max_dun_bytes=8 key_types={shown}\n" in capsys.readouterr().out


def test_dm_evict_key_names_a_wrapped_key_by_its_ephemeral_blob(
    keyd: DaemonThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lt = ok(capsys, "import", "ice", "--raw-key-file", file_with(tmp_path, "r", RAW))
    eph = ok(capsys, "prepare", "ice", "--lt-key-file", file_with(tmp_path, "lt", lt))
    keyd.run(
        keyd.manager.create,
        "vault",
        f"0 {SECTORS} default-key aes-xts-plain64 {eph.hex()} 0 ice 0 "
        "3 wrappedkey_v0 sector_size:4096 iv_large_sectors\n",
    )

    async def write() -> None:
        await keyd.manager.get("vault").submit(Bio.write(0, b"w" * 8192))

    keyd.run(write)
    evictions = keyd.manager.stats()["backends"]["ice"]["profile"].get("evictions", 0)
    blob_file = file_with(tmp_path, "eph", eph.hex().encode() + b"\n")
    argv = ["dm", "evict-key", "vault", "--mode", "AES-256-XTS", "--data-unit-size", "4096"]
    assert main([*argv, "--key-file", blob_file]) == 2  # as a raw key: the wrong size
    assert main([*argv, "--key-file", blob_file, "--key-type", "hw-wrapped"]) == 0
    assert keyd.manager.stats()["backends"]["ice"]["profile"]["evictions"] == evictions + 1
    out, err = capsys.readouterr()
    assert eph.hex() not in out + err
