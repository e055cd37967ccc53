"""Block I/O requests: what every layer passes down (``struct bio``, much simplified).

A bio covers ``length`` bytes at byte ``offset`` of the device it is submitted to. Its buffer is
a memoryview: for a READ the destination, filled in place (so splitting a read is slicing); for a
WRITE the source, which no layer may modify (encryption goes to bounce buffers). FLUSH and
DISCARD carry no buffer.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

from fuseblk.crypt_context import BioCryptContext


class BioOp(enum.Enum):
    READ = "read"
    WRITE = "write"
    FLUSH = "flush"
    DISCARD = "discard"

    @property
    def has_data(self) -> bool:
        return self is BioOp.READ or self is BioOp.WRITE


class Bio(NamedTuple):
    """Immutable, and a tuple so that making one costs a single allocation: every layer that
    remaps a bio makes a new one."""

    op: BioOp
    offset: int  # bytes, on the device this bio is submitted to
    length: int  # bytes
    buf: memoryview | None = None  # len(buf) == length for READ/WRITE
    crypt_ctx: BioCryptContext | None = None

    @classmethod
    def read(
        cls, offset: int, buf: memoryview | bytearray, ctx: BioCryptContext | None = None
    ) -> Bio:
        mv = memoryview(buf).cast("B")
        return cls(BioOp.READ, offset, len(mv), mv, ctx)

    @classmethod
    def write(
        cls, offset: int, data: bytes | bytearray | memoryview, ctx: BioCryptContext | None = None
    ) -> Bio:
        mv = memoryview(data).cast("B")
        return cls(BioOp.WRITE, offset, len(mv), mv, ctx)

    @classmethod
    def flush(cls) -> Bio:
        return cls(BioOp.FLUSH, 0, 0)

    @classmethod
    def discard(cls, offset: int, length: int) -> Bio:
        return cls(BioOp.DISCARD, offset, length)

    @property
    def end(self) -> int:
        return self.offset + self.length

    def split(self, nbytes: int) -> tuple[Bio, Bio]:
        """``bio_split``: the first ``nbytes`` and the rest; the rest's DUN advances with carry."""
        if not 0 < nbytes < self.length:
            raise ValueError(f"split at {nbytes} outside bio of {self.length} bytes")
        head_buf = tail_buf = None
        if self.buf is not None:
            head_buf, tail_buf = self.buf[:nbytes], self.buf[nbytes:]
        tail_ctx = self.crypt_ctx.advanced(nbytes) if self.crypt_ctx else None
        head = Bio(self.op, self.offset, nbytes, head_buf, self.crypt_ctx)
        tail = Bio(self.op, self.offset + nbytes, self.length - nbytes, tail_buf, tail_ctx)
        return head, tail

    def slice(self, start: int, length: int) -> Bio:
        """The part ``[start, start+length)`` relative to this bio, with its DUN advanced."""
        buf = self.buf[start : start + length] if self.buf is not None else None
        ctx = self.crypt_ctx.advanced(start) if self.crypt_ctx and start else self.crypt_ctx
        return Bio(self.op, self.offset + start, length, buf, ctx)

    def remap(self, offset: int) -> Bio:
        """The same bio sent to ``offset`` of another device: the DUN does not change."""
        return Bio(self.op, offset, self.length, self.buf, self.crypt_ctx)

    def with_ctx(self, ctx: BioCryptContext | None) -> Bio:
        return Bio(self.op, self.offset, self.length, self.buf, ctx)

    def with_buf(self, buf: memoryview | bytearray | bytes) -> Bio:
        return Bio(self.op, self.offset, self.length, memoryview(buf).cast("B"), self.crypt_ctx)

    def __repr__(self) -> str:
        ctx = f", {self.crypt_ctx!r}" if self.crypt_ctx else ""
        return f"Bio({self.op.value}, offset={self.offset}, length={self.length}{ctx})"
