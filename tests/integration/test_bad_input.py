"""Bad command lines against a real mount: each one fails cleanly and changes nothing.

The list holds what a user gets wrong: numbers in digits that are not ASCII (full-width
``５１２`` reads as 512 to Python), sizes and offsets out of range, device names, tables, key
files, crypto modes, files of the wrong kind (a FIFO, a directory, a device) or not UTF-8,
state and log paths that cannot work, and options out of range. Each one must exit non-zero
with exactly one line on stderr naming the problem (no traceback, no usage block); afterwards
the daemon still serves the same devices and the reference data on ``plain`` is unchanged.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from harness import FUSEBLK, FuseblkMount, MiB

pytestmark = pytest.mark.integration

REFERENCE = 2 * MiB  # random data at the start of plain, hashed after every invocation
KEY_HEX = "5a" * 64
TIMEOUT = 30  # a command that waits on a FIFO hangs: it fails the case, not the run


@dataclass(frozen=True)
class Bad:
    """One invocation: its arguments, what stderr must say, and how it is started."""

    argv: tuple[str, ...]
    says: str
    stdin: bytes = b""
    close_stdout: bool = False
    env: dict[str, str] = field(default_factory=dict)


def bad_invocations(m: FuseblkMount, tmp: Path) -> list[Bad]:
    """The list; ``m`` is the mount every dm verb talks to, ``tmp`` holds the bad files."""
    mp = str(m.mountpoint)
    other = tmp / "mnt2"  # where a second mount is tried: none may come up
    other.mkdir(parents=True)
    state2 = str(tmp / "state2")
    log2 = ("--log-file", str(tmp / "mnt2.log"))  # a config mount logs to the home directory
    files = _bad_files(tmp, m)
    f = {name: str(path) for name, path in files.items()}
    at = ("--mount", mp)
    evict = ("dm", "evict-key", "secure", "--mode", "AES-256-XTS")
    crypt = ("crypt", "encrypt", "--mode", "AES-256-XTS")
    dus = ("--data-unit-size", "4096")
    img = str(tmp / "new.img")
    cases = [
        # numbers: ASCII digits only
        Bad(("dm", "discard", "plain", "５１２", "512", *at), "invalid size '５１２'"),
        Bad(("dm", "discard", "plain", "0", "５１２", *at), "invalid size"),
        Bad(("dm", "message", "plain", "１", "x", *at), "argument SECTOR"),
        Bad((*evict, "--key-hex", KEY_HEX, "--data-unit-size", "４０９６", *at), "ASCII"),
        Bad(("image", "create", img, "--size", "１６M", "--profile", "ufs"), "invalid size"),
        Bad((*crypt, "--key-hex", KEY_HEX, "--data-unit-size", "４０９６", "--dun", "0"), "ASCII"),
        Bad((*crypt, "--key-hex", KEY_HEX, *dus, "--dun", "０"), "--dun"),
        Bad(("mount", str(other), "--state-dir", state2, "--fallback-slots", "１"), "ASCII"),
        Bad(
            (
                "image",
                "create",
                img,
                "--size",
                "8M",
                "--kind",
                "keyslots",
                "--keyslots",
                "4",
                "--mode",
                "AES-256-XTS:４０９６",
            ),
            "ASCII",
        ),  # fmt: skip
        # sizes and offsets
        Bad(("dm", "discard", "plain", "-512", "512", *at), "invalid size"),
        Bad(("dm", "discard", "plain", "0", "0", *at), "multiples of 512"),
        Bad(("dm", "discard", "plain", "1000", "512", *at), "multiples of 512"),
        Bad(("dm", "discard", "plain", "768M", "512", *at), "beyond"),
        Bad(("dm", "discard", "plain", "0", "8E", *at), "invalid size"),
        Bad(("dm", "discard", "plain", "0", "9" * 30, *at), "largest file offset"),
        Bad(("dm", "message", "plain", "9" * 30, "x", *at), "argument SECTOR"),
        Bad(("dm", "message", "plain", "-1", "x", *at), "negative"),
        Bad(("image", "create", img, "--size", str(1 << 63), "--profile", "ufs"), "largest"),
        Bad(("image", "create", img, "--size", "1000", "--profile", "ufs"), "multiple of 512"),
        Bad(("image", "create", img, "--size", "0", "--profile", "ufs"), "multiple of 512"),
        Bad((*crypt, "--key-hex", KEY_HEX, *dus, "--dun", "1" * 5000), "--dun"),
        # names and devices
        Bad(("dm", "create", "a/b", "--table", "0 8 zero", *at), "invalid device name"),
        Bad(("dm", "create", "", "--table", "0 8 zero", *at), "invalid device name"),
        Bad(("dm", "create", "..", "--table", "0 8 zero", *at), "invalid device name"),
        Bad(("dm", "create", "plain", "--table", "0 8 zero", *at), "already exists"),
        Bad(("dm", "remove", "nodev", *at), "nodev"),
        Bad(("dm", "remove", "base", *at), "in use"),
        Bad(("dm", "rename", "plain", "secure", *at), "already exists"),
        Bad(("dm", "resume", "nodev", *at), "nodev"),
        Bad(("dm", "table", "nodev", *at), "nodev"),
        Bad(("stats", "nodev", *at), "nodev"),
        Bad(("dm", "ls", "--mount", str(tmp / "nowhere")), "no fuseblk daemon"),
        # tables
        Bad(("dm", "create", "x", "--table", "0 8 nosuch", *at), "nosuch"),
        Bad(("dm", "create", "x", "--table", "0 8 zero extra", *at), "zero"),
        Bad(("dm", "create", "x", "--table", "0 ８ zero", *at), "length"),
        Bad(("dm", "create", "x", "--table", "8 8 zero", *at), "line 1"),
        Bad(("dm", "create", "x", "--table", "0 8 linear nodev 0", *at), "nodev"),
        Bad(("dm", "create", "x", "--table", f"0 8 linear plain {1 << 40}", *at), "plain"),
        Bad(
            ("dm", "load", "plain", "--table", "0 8 default-key aes-xts-plain64 00 0 base 0", *at),
            "line 1",
        ),  # fmt: skip
        Bad(
            ("dm", "create", "x", "--table", "0 8 zero", "--fallback", "sometimes", *at),
            "argument --fallback",
        ),  # fmt: skip
        Bad(("dm", "create", "x", "--table-file", f["table.latin1"], *at), "not UTF-8"),
        Bad(("dm", "create", "x", "--table-file", f["fifo"], *at), "is a FIFO"),
        Bad(("dm", "create", "x", "--table-file", f["dir"], *at), "Is a directory"),
        Bad(("dm", "create", "x", "--table-file", str(tmp / "missing"), *at), "No such file"),
        Bad(("dm", "create", "x", *at), "not UTF-8", stdin=b"0 8 zero \xe9\n"),
        # key files and keys
        Bad((*evict, "--key-file", f["fifo"], *dus, *at), "is a FIFO"),
        Bad((*evict, "--key-file", f["key.short"], *dus, *at), "got 63 bytes"),
        Bad((*evict, "--key-file", f["key.empty"], *dus, *at), "got 0 bytes"),
        Bad((*evict, "--key-file", f["dir"], *dus, *at), "Is a directory"),
        Bad((*evict, "--key-hex", "zz", *dus, *at), "not a hexadecimal"),
        Bad((*evict, "--key-file", f["key"], "--data-unit-size", "4095", *at), "power of two"),
        Bad((*evict, "--key-file", f["key"], *dus, "--dun-bytes", "99", *at), "dun_bytes"),
        Bad((*crypt, "--key-file", f["fifo"], *dus, "--dun", "0"), "is a FIFO"),
        Bad((*crypt, "--key-file", "/dev/zero", *dus, "--dun", "0"), "character device"),
        # modes
        Bad(
            ("dm", "evict-key", "secure", "--mode", "AES-999", "--key-hex", KEY_HEX, *dus, *at),
            "unknown crypto mode",
        ),  # fmt: skip
        Bad(
            ("crypt", "encrypt", "--mode", "rot13", "--key-hex", KEY_HEX, *dus, "--dun", "0"),
            "unknown crypto mode",
        ),  # fmt: skip
        # standard streams
        Bad(
            (*crypt, "--key-hex", KEY_HEX, *dus, "--dun", "0"),
            "standard output is closed",
            stdin=bytes(4096),
            close_stdout=True,
        ),  # fmt: skip
        Bad(
            (*crypt, "--key-hex", KEY_HEX, *dus, "--dun", "0"), "whole number", stdin=bytes(100)
        ),  # fmt: skip
        # files of the wrong kind or encoding
        Bad(
            ("image", "create", img, "--size", "8M", "--profile", f["profile.latin1"]), "not UTF-8"
        ),  # fmt: skip
        Bad(("image", "create", img, "--size", "8M", "--profile", f["fifo.toml"]), "is a FIFO"),
        Bad(("image", "inspect", str(tmp / "missing.img")), "No such file"),
        Bad(("mount", str(other), "--config", f["config.latin1"], *log2), "not UTF-8"),
        Bad(("mount", str(other), "--config", f["fifo"], *log2), "is a FIFO"),
        Bad(("mount", str(other), "--config", f["config.slots"], *log2), "1..65536"),
        Bad(("mount", str(other), "--state-dir", f["file"]), "not a directory"),
        Bad(("mount", str(other), "--state-dir", f["file"] + "/state"), "Not a directory"),
        Bad(
            ("mount", str(other), "--state-dir", state2, "--foreground", "--log-file", f["dir"]),
            "Is a directory",
        ),  # fmt: skip
        Bad(
            ("mount", str(other), "--state-dir", state2, "--fallback-slots", "99999999999999"),
            "1..65536",
        ),  # fmt: skip
        Bad(("mount", str(other), "--state-dir", state2, "--log-level", "loud"), "log level"),
        Bad(("mount", mp, "--state-dir", state2), "already a mount point"),
        Bad(
            ("mount", str(other), "--state-dir", state2),
            "runtime directory",
            env={"FUSEBLK_RUNTIME_DIR": f["runtime.open"]},
        ),  # fmt: skip
        Bad(
            ("mount", str(other), "--state-dir", state2),
            "socket path too long",
            env={"FUSEBLK_RUNTIME_DIR": str(tmp / ("r" * 120))},
        ),  # fmt: skip
        Bad(("umount", str(other)), "not mounted"),
        # last: if one of these is taken, the mount is gone and the run stops here
        Bad(("umount", mp, "--timeout", "１"), "argument --timeout"),
        Bad(("umount", mp, "--timeout", "nan"), "argument --timeout"),
    ]
    return cases


def _bad_files(tmp: Path, m: FuseblkMount) -> dict[str, Path]:
    files = {
        "table.latin1": b"0 8 zero # caf\xe9\n",
        "config.latin1": b'[options]\nfallback = "caf\xe9"\n',
        "config.slots": b"[options]\nfallback_slots = 99999999999999\n",
        "profile.latin1": b'kind = "none"\n# caf\xe9\n',
        "key.short": b"k" * 63,
        "key.empty": b"",
        "file": b"a file where a directory belongs\n",
    }
    paths = {}
    for name, content in files.items():
        paths[name] = tmp / name
        paths[name].write_bytes(content)
    for name in ("fifo", "fifo.toml"):
        paths[name] = tmp / name
        os.mkfifo(paths[name])
    paths["dir"] = tmp / "dir"
    paths["dir"].mkdir()
    paths["runtime.open"] = tmp / "runtime"
    paths["runtime.open"].mkdir()
    paths["runtime.open"].chmod(0o755)
    paths["key"] = m.key_file
    return paths


def test_bad_invocations_fail_in_one_line_and_change_nothing(
    default_setup: FuseblkMount, tmp_path: Path
) -> None:
    m = default_setup
    plain = m.dev("plain")
    _write(plain, 0, os.urandom(REFERENCE))
    reference = _digest(plain)
    devices = m.dm("ls").stdout
    cases = bad_invocations(m, tmp_path / "bad")
    assert len(cases) >= 40
    problems = []
    for case in cases:
        found = [_problem(case, tmp_path)]
        now_devices, now_reference = m.dm("ls", check=False).stdout, _digest(plain)
        if now_devices != devices:
            found.append(f"the devices changed:\n{now_devices.decode(errors='replace')}")
        if now_reference != reference:
            found.append("the reference data on plain changed")
        if any(found):
            text = "\n    ".join(p for p in found if p)
            shown = " ".join(
                a if len(a) <= 60 else f"{a[:20]}...({len(a)} chars)" for a in case.argv
            )
            problems.append(f"fuseblk {shown}\n    {text}")
        devices, reference = now_devices, now_reference  # each case is judged on its own
        if not m.is_mounted():
            break  # nothing after this would say anything more
    assert not problems, f"{len(problems)} of {len(cases)} invocations:\n" + "\n".join(problems)


def _problem(case: Bad, tmp: Path) -> str | None:
    """What is wrong with how ``case`` failed, or None if it failed as it should."""
    try:
        proc = subprocess.run(
            [*FUSEBLK, *case.argv],
            input=case.stdin,
            stdout=subprocess.DEVNULL if case.close_stdout else subprocess.PIPE,
            stderr=subprocess.PIPE,
            timeout=TIMEOUT,
            env={**os.environ, **case.env},
            preexec_fn=(lambda: os.close(1)) if case.close_stdout else None,  # as `>&-`
        )
    except subprocess.TimeoutExpired:
        return f"still running after {TIMEOUT} s"
    finally:
        _undo(tmp)
    err = proc.stderr.decode(errors="replace")
    if proc.returncode == 0:
        return f"exit status 0, stderr {err!r}"
    if "Traceback" in err or len(err.splitlines()) != 1:
        return f"exit status {proc.returncode}, stderr is not one line:\n{err}"
    if case.says not in err:
        return f"exit status {proc.returncode}, stderr does not say {case.says!r}: {err!r}"
    return None


def _undo(tmp: Path) -> None:
    """What a case made although it should not have is removed, so the next case starts clean:
    a second mount or daemon (killed if it lingers), an image."""
    stray = FuseblkMount(tmp / "bad" / "mnt2", tmp / "bad" / "state2", tmp / "stray.log")
    if stray.is_mounted() or stray.daemon_pids():
        stray.force_cleanup()
    (tmp / "bad" / "new.img").unlink(missing_ok=True)


def _write(path: Path, offset: int, data: bytes) -> None:
    buf = mmap.mmap(-1, len(data))
    buf[:] = data
    fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
    try:
        assert os.pwrite(fd, buf, offset) == len(data)
    finally:
        os.close(fd)


def _digest(path: Path) -> str:
    """SHA-256 of the reference region, read past the page cache."""
    buf = mmap.mmap(-1, REFERENCE)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        assert os.preadv(fd, [buf], 0) == REFERENCE
    finally:
        os.close(fd)
    return hashlib.sha256(buf).hexdigest()
