"""The target interface (``struct target_type``): ctr, map, status, message, iterate_devices.

A target instance covers ``length`` bytes of its mapped device starting at ``begin``. The mapped
device hands ``map`` bios already split at target boundaries (and never inside a data unit of
their crypt context), with ``bio.offset`` relative to the **target's** start; the target performs
the I/O itself by awaiting :attr:`Target.submit_bio` on its underlying devices: the block layer
of the table's environment, where a context a device cannot take falls back to software.
"""

from __future__ import annotations

import abc
import errno
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, ClassVar, Protocol

from fuseblk import SECTOR_SIZE
from fuseblk.bio import Bio
from fuseblk.errors import FuseblkError, redact_key_hex

if TYPE_CHECKING:
    from fuseblk.blkcrypto.block_layer import BlockLayer
    from fuseblk.capabilities import CryptoCapabilities
    from fuseblk.device import BlockDevice
    from fuseblk.key import BlkCryptoKey
    from fuseblk.stats import Counters


class TargetArgError(Exception):
    """A constructor argument is wrong; the table parser adds the line number.

    ``field`` names the argument (e.g. ``"offset"`` or ``"option 'sector_size'"``), ``expected``
    says what was wanted, ``got`` the offending text.
    """

    def __init__(
        self, field: str, expected: str, got: str | None = None, errno: int | None = None
    ) -> None:
        self.field = field
        self.expected = expected
        self.got = got
        self.errno = errno
        super().__init__(
            f"{field}: expected {expected}" + (f", got {got!r}" if got is not None else "")
        )


class TargetEnv(Protocol):
    """What a constructor may ask of the table being loaded."""

    def get_device(self, ref: str) -> BlockDevice:
        """Resolve a device argument (image path, backend name, or mapped device name).

        Raises TargetArgError if it cannot be resolved (or would make a cycle).
        """
        ...

    @property
    def device_name(self) -> str:
        """The mapped device this table belongs to (for messages and logs)."""
        ...

    @property
    def block_layer(self) -> BlockLayer:
        """What targets submit bios to their devices through (and evict keys with)."""
        ...

    @property
    def clock(self) -> Callable[[], float]:
        """Seconds, monotonic: what time-driven targets (flakey) see; tests move it by hand."""
        ...


class Target(abc.ABC):
    name: ClassVar[str]
    version: ClassVar[tuple[int, int, int]] = (1, 0, 0)
    passes_crypto: ClassVar[bool] = False  # DM_TARGET_PASSES_CRYPTO
    # A FLUSH needs nothing from the target but reaching its devices: the mapped device sends it
    # to them directly, once per device however many targets share it, instead of to ``map``.
    flush_to_devices: ClassVar[bool] = False
    # The smallest I/O the target can do (a data unit of crypt or default-key with sector_size:N):
    # the mapped device's logical block size is the largest of its targets'.
    io_granularity: int = SECTOR_SIZE

    def __init__(self, env: TargetEnv, begin: int, length: int, args: list[str]) -> None:
        """``ctr``: parse and validate ``args`` as the kernel target does; raise TargetArgError."""
        self.begin = begin  # bytes from the mapped device's start
        self.length = length  # bytes
        self.counters: Counters | None = None  # set by the mapped device
        # blk-crypto prep, then the device's submit: how a target reaches the devices below
        self.submit_bio: Callable[[BlockDevice, Bio], Awaitable[None]] = env.block_layer.submit_bio

    @abc.abstractmethod
    async def map(self, bio: Bio) -> None:
        """Perform ``bio`` (offset relative to this target's start)."""

    @abc.abstractmethod
    def table_args(self, show_keys: bool = False) -> str:
        """The arguments as ``dmsetup table`` prints them (keys hidden unless ``show_keys``)."""

    def devices(self) -> list[BlockDevice]:
        """``iterate_devices``: the devices I/O goes to (for crypto profiles, flushes, eviction)."""
        return []

    def held_devices(self) -> list[BlockDevice]:
        """``dm_get_device``: every device the table line names, whether or not I/O goes there.

        What keeps an image attached and a device below from being removed, and what makes a
        stack a cycle. A superset of :meth:`devices`: raid1 holds a failed leg, which takes no
        I/O, until a ``remove`` message drops it.
        """
        return self.devices()

    def crypto_requirement(self) -> CryptoCapabilities | None:
        """Capabilities each of :meth:`devices` must keep offering for the table to stay valid
        (raid1: what it promised upward at load); None: no such rule. A live hardware change
        that would break it is refused (:mod:`fuseblk.dm.hw_change`)."""
        return None

    def attached_keys(self) -> list[BlkCryptoKey]:
        """Keys the target attaches to the bios it sends to :meth:`devices` (default-key)."""
        return []

    def status(self) -> str:
        """``STATUSTYPE_INFO`` as ``dmsetup status`` prints it after the target name."""
        return ""

    async def message(self, args: list[str]) -> str:
        """``dmsetup message``; unknown messages are EINVAL."""
        words = redact_key_hex(" ".join(args))  # e.g. dm-crypt's "key set <hex>"
        raise FuseblkError(errno.EINVAL, f"{self.name}: unrecognised message {words!r}")

    def _count(self, name: str, n: int = 1) -> None:
        """Add to the mapped device's counters; a target built outside a device has none."""
        if self.counters is not None:
            self.counters.add(name, n)

    async def presuspend(self) -> None:  # noqa: B027 (optional hook)
        """Called before the device suspends (e.g. raid1 stops resync)."""

    async def resume(self) -> None:  # noqa: B027 (optional hook)
        """Called when the table becomes live."""

    async def destroy(self) -> None:  # noqa: B027 (optional hook)
        """``dtr``: the table was replaced or the device removed."""
