"""What the inline-encryption engine stores its sectors and its header on.

A storage is a flat range of bytes holding a whole image: the header copies at its start and the
data area after them (:mod:`fuseblk.hw.image_format`), exactly as in an image file. The engine
knows the layout; a storage knows only offsets. Like an nbdkit plugin, a storage does plain I/O
and nothing else: keyslots, ciphers and counters are the engine's.

Calls are synchronous and may block (a disk): the engine decides which run inline on the trio
thread and which in a worker thread. A storage behind a server also offers its data path as
coroutines (:attr:`Storage.network`, a :class:`NetworkIO`), which the engine awaits on the trio
thread instead: many requests in flight, none holding a thread. Failures are ``OSError`` with the
errno of the underlying call; the engine names the device in the error it raises.

Kinds of storage (one module each) are opened through :mod:`fuseblk.hw.factory`.
"""

from __future__ import annotations

from typing import Any, Protocol

from fuseblk.ciphers import Buffer


class NetworkIO(Protocol):
    """The data path of a storage behind a server, awaited on the trio thread.

    A request without an answer in the storage's timeout fails (EIO) instead of hanging.
    """

    async def aread_into(self, buf: memoryview, offset: int) -> None: ...

    async def awrite(self, data: Buffer, offset: int) -> None: ...

    async def aflush(self) -> None: ...

    async def adiscard(self, offset: int, length: int) -> None:
        """Later reads return zeroes, as :meth:`Storage.discard`."""
        ...

    def state(self) -> dict[str, Any]:
        """The connection (server, state, reconnects) for ``stats`` and ``status``."""
        ...


class Storage(Protocol):
    @property
    def reference(self) -> str:
        """The reference that opens this storage again (an absolute path, ``memory://NAME``)."""
        ...

    @property
    def size(self) -> int:
        """Bytes, header copies included."""
        ...

    @property
    def network(self) -> NetworkIO | None:
        """The asynchronous data path of a storage behind a server; None for local storage."""
        ...

    def read_into(self, buf: memoryview, offset: int) -> None:
        """Fill ``buf`` with the bytes at ``offset``; ranges never written read as zeroes."""
        ...

    def write(self, data: Buffer, offset: int) -> None:
        """Store ``data`` at ``offset`` (durable at the next :meth:`flush`)."""
        ...

    def flush(self) -> None:
        """Make every completed write durable (``fdatasync``)."""
        ...

    def discard(self, offset: int, length: int) -> None:
        """Forget a range: later reads return zeroes, and the space may be freed."""
        ...

    def read_header(self, offset: int, length: int) -> bytes:
        """The bytes of a header copy (short if the storage ends first)."""
        ...

    def write_header(self, offset: int, data: bytes) -> None:
        """Write a header copy and make it durable before returning: the crash-safety of header
        updates rests on one copy being on stable storage before the other is touched."""
        ...

    def lock(self, *, take_over: bool = False) -> None:
        """Become the storage's only owner, or fail at once with EBUSY (a FuseblkError).

        Idempotent for the holder. The lock goes with :meth:`close` and with the process.
        ``take_over`` also takes a claim this machine cannot judge stale (a holder on another
        host, recorded in the header); a lock the kernel keeps dies with its holder, so storage
        locked that way has no such claim and ignores it.
        """
        ...

    def close(self) -> None:
        """Release the lock and whatever the storage holds open; idempotent."""
        ...
