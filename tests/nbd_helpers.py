"""NBD servers for the integration suite: nbdkit and qemu-storage-daemon started by the test.

Every server listens on a Unix socket in the test's tmp dir, or on 127.0.0.1 at a free port, runs
in the foreground as the test's child, and is killed when the test ends, whatever happened
(:class:`NbdServers`). A test skips only when the server's binary is missing.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

START_TIMEOUT = 10.0


def require_binary(name: str) -> None:
    if shutil.which(name) is None:
        pytest.skip(f"{name} is not installed")


def require_libnbd() -> None:
    try:
        import nbd  # noqa: F401
    except ImportError:
        pytest.skip("libnbd's Python module (python3-libnbd) is not importable")


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class NbdServer:
    """One server process and the URI of its export."""

    def __init__(self, argv: Sequence[str], uri: str, ready: Path | int, log: Path) -> None:
        self.argv = list(argv)
        self.uri = uri
        self._ready = ready  # the socket path, or the TCP port
        self._log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> NbdServer:
        if isinstance(self._ready, Path):
            self._ready.unlink(missing_ok=True)
        with open(self._log, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=log)
        deadline = time.monotonic() + START_TIMEOUT
        while not self._listening():
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.argv[0]} exited {self.proc.returncode}: {self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.argv[0]} did not listen in time: {self.log()}")
            time.sleep(0.05)
        return self

    def _listening(self) -> bool:
        if isinstance(self._ready, Path):
            family, address = socket.AF_UNIX, str(self._ready)
            if not self._ready.exists():
                return False
        else:
            family, address = socket.AF_INET, ("127.0.0.1", self._ready)  # type: ignore[assignment]
        with socket.socket(family) as s:
            try:
                s.connect(address)
            except OSError:
                return False
        return True

    def kill(self) -> None:
        """SIGKILL, as a machine that dies."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)

    def stall(self) -> None:
        """SIGSTOP: the connection stays up, nothing answers (once every thread has stopped)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        deadline = time.monotonic() + START_TIMEOUT
        while not all(_stopped(task) for task in Path(f"/proc/{self.proc.pid}/task").iterdir()):
            assert time.monotonic() < deadline, f"{self.argv[0]} did not stop"
            time.sleep(0.01)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def log(self) -> str:
        try:
            return self._log.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"


def _stopped(task: Path) -> bool:
    try:
        return (task / "stat").read_text().rsplit(")", 1)[1].split()[0] in ("T", "t")
    except OSError:
        return True  # the thread is gone


class NbdServers:
    """The servers of one test, all killed at its end."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.servers: list[NbdServer] = []
        self._count = 0

    def _name(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}{self._count}"

    def nbdkit(self, *plugin: str, filters: Sequence[str] = (), tcp: bool = False) -> NbdServer:
        """``nbdkit -f PLUGIN ARGS`` with ``--filter=F`` for each of ``filters`` (followed by
        their parameters in ``plugin``), on a Unix socket or on 127.0.0.1."""
        require_binary("nbdkit")
        name = self._name("nbdkit")
        argv = ["nbdkit", "-f", "--exit-with-parent"]
        ready: Path | int
        if tcp:
            port = free_tcp_port()
            argv += ["-i", "127.0.0.1", "-p", str(port)]
            uri, ready = f"nbd://127.0.0.1:{port}/", port
        else:
            sock = self.tmp / f"{name}.sock"
            argv += ["-U", str(sock)]
            uri, ready = f"nbd+unix:///?socket={sock}", sock
        argv += [f"--filter={f}" for f in filters]
        server = NbdServer([*argv, *plugin], uri, ready, self.tmp / f"{name}.log")
        self.servers.append(server)
        return server.start()

    def qemu_storage_daemon(self, image: Path, export: str = "disk") -> NbdServer:
        """qemu-storage-daemon exporting a raw file, as it would an RBD or iSCSI disk."""
        require_binary("qemu-storage-daemon")
        name = self._name("qsd")
        sock = self.tmp / f"{name}.sock"
        argv = [
            "qemu-storage-daemon",
            "--blockdev",
            f"driver=file,node-name=file0,filename={image}",
            "--blockdev",
            "driver=raw,node-name=disk0,file=file0",
            "--nbd-server",
            f"addr.type=unix,addr.path={sock}",
            "--export",
            f"type=nbd,id=exp0,node-name=disk0,name={export},writable=on",
        ]
        server = NbdServer(
            argv, f"nbd+unix:///{export}?socket={sock}", sock, self.tmp / f"{name}.log"
        )
        self.servers.append(server)
        return server.start()

    def kill_all(self) -> None:
        for server in reversed(self.servers):
            server.kill()


@contextmanager
def nbd_servers(tmp: Path) -> Iterator[NbdServers]:
    servers = NbdServers(tmp)
    try:
        yield servers
    finally:
        servers.kill_all()


def sparse_file(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def read_at(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def environ_with(**values: str) -> dict[str, str]:
    return {**os.environ, **values}
