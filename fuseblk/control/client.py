"""The CLI's side of the control socket: a plain blocking client, since the CLI is synchronous.

Error responses come back as :class:`FuseblkError` with the daemon's errno and message, so a
command-line verb reports a daemon-side failure exactly as it would a local one.
"""

from __future__ import annotations

import errno
import os
import select
import socket
from pathlib import Path
from types import TracebackType
from typing import Any

from fuseblk.control.protocol import MAX_LINE, decode_response, encode_request, response_result
from fuseblk.control.runtime import check_private, find_daemons, socket_path_for
from fuseblk.errors import FuseblkError


class ControlClient:
    """One connection to a daemon, opened on first use and reused for later calls."""

    def __init__(
        self,
        socket_path: str | os.PathLike[str] | None = None,
        timeout: float | None = None,
        *,
        mountpoint: str | os.PathLike[str] | None = None,
    ) -> None:
        """``socket_path``, or (when it is ``None``) the daemon of ``mountpoint`` or the only one,
        found on first use so that command-line errors can be reported before that."""
        self._socket_path = Path(socket_path) if socket_path is not None else None
        self.mountpoint = mountpoint
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._reader: Any = None
        self._next_id = 1

    @classmethod
    def for_mount(cls, mountpoint: str | os.PathLike[str] | None = None) -> ControlClient:
        """The daemon serving ``mountpoint``, or the only one running when it is ``None``."""
        return cls(mountpoint=mountpoint)

    @property
    def socket_path(self) -> Path:
        if self._socket_path is None:
            self._socket_path = resolve_socket(self.mountpoint)
        return self._socket_path

    def _connect(self) -> socket.socket:
        if self._sock is not None and _closed_by_peer(self._sock):
            self.close()  # the daemon drops idle connections; this request was not sent yet
        if self._sock is None:
            path = self.socket_path
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(os.fspath(path))
            except FileNotFoundError:
                sock.close()
                raise FuseblkError(
                    errno.ENOENT, f"no fuseblk daemon listens on {self.socket_path}"
                ) from None
            except OSError as exc:
                sock.close()
                code = exc.errno or errno.EIO
                raise FuseblkError(
                    code,
                    f"cannot reach the fuseblk daemon at {self.socket_path}: {os.strerror(code)}",
                ) from None
            self._sock = sock
            self._reader = sock.makefile("rb")
        return self._sock

    def call(self, cmd: str, **args: Any) -> Any:
        """Run ``cmd`` in the daemon and return its result; raise its error as FuseblkError.

        Arguments that are ``None`` are left out, so optional ones can be passed through as-is.
        """
        req_id = self._next_id
        self._next_id += 1
        payload = {k: v for k, v in args.items() if v is not None}
        request = encode_request(req_id, cmd, payload)
        if len(request) - 1 > MAX_LINE:
            raise FuseblkError(
                errno.EMSGSIZE,
                f"{cmd}: request too long ({len(request) - 1} bytes; the control protocol takes "
                f"at most {MAX_LINE} bytes a line)",
            )
        sock = self._connect()
        try:
            sock.sendall(request)
            line = self._reader.readline(MAX_LINE + 2)
        except OSError as exc:
            self.close()
            raise FuseblkError(
                exc.errno or errno.EIO, f"lost the connection to the fuseblk daemon: {exc}"
            ) from None
        if not line.endswith(b"\n"):
            self.close()
            raise FuseblkError(errno.ECONNRESET, "the fuseblk daemon closed the connection")
        response = decode_response(line)
        if response.get("id") is None and not response["ok"]:
            # an error about the connection or the line itself, not one request's result: the
            # daemon may have closed the connection after it
            self.close()
            response_result(response)
        if response.get("id") != req_id:
            self.close()
            raise FuseblkError(
                errno.EPROTO, "response from the fuseblk daemon does not match the request"
            )
        return response_result(response)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _closed_by_peer(sock: socket.socket) -> bool:
    """Whether a connection between requests has something to read: the end of the stream
    (the daemon closed it) or bytes nobody asked for; either way it is of no further use."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def resolve_socket(mountpoint: str | os.PathLike[str] | None) -> Path:
    """The socket for ``--mount MP``, or that of the single running daemon; clear errors otherwise."""
    if mountpoint is not None:
        path = socket_path_for(mountpoint)
        check_private(path.parent)
        if not path.exists():
            raise FuseblkError(errno.ENOENT, f"no fuseblk daemon serves {os.fspath(mountpoint)}")
        return path
    daemons = find_daemons()
    if not daemons:
        raise FuseblkError(
            errno.ENOENT, "no fuseblk daemon is running (start one with 'fuseblk mount MP')"
        )
    if len(daemons) > 1:
        where = ", ".join(d.mountpoint or str(d.socket) for d in daemons)
        raise FuseblkError(
            errno.EINVAL, f"several fuseblk daemons are running ({where}): choose one with --mount"
        )
    return daemons[0].socket
