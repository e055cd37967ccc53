"""The one place backends are opened and created: a reference's form picks the kind of storage.

A reference is ``SCHEME://LOCATION`` for a registered kind of storage (``memory://NAME``, an NBD
export ``nbd://HOST[:PORT]/EXPORT`` or ``nbd+unix:///EXPORT?socket=PATH``), and an image path for
anything else (``/var/lib/fuseblk/disk.img``, ``disk.img``; a file whose name looks
like a scheme is reached as ``./memory://x``). A new kind of storage is one module implementing
:class:`fuseblk.hw.storage.Storage` plus one entry in :data:`STORAGE_KINDS`; whatever the
storage, the backend is the same inline-encryption engine (:mod:`fuseblk.hw.engine`).

Opening runs in a worker thread that the caller waits for at most ``OPEN_TIMEOUT`` seconds. A
daemon serving a FUSE mount on its one trio thread would otherwise hang for good on a reference
leading into its own mount: the kernel would send the lookup to the very thread that is waiting
for it. References into the daemon's own mount (:class:`OwnMount`) are refused before anything is
looked up, and again once symlinks are resolved; the timeout covers what a textual check cannot
see. A late result is thrown away (the storage it opened is closed).
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import trio

from fuseblk.device import Backend
from fuseblk.errors import FuseblkError
from fuseblk.hw.engine import InlineEncryptionEngine
from fuseblk.hw.file_storage import FileStorage, create_image_file
from fuseblk.hw.header_store import Attached, attach_header
from fuseblk.hw.image_format import ImageHeader
from fuseblk.hw.memory_storage import MemoryStorage
from fuseblk.hw.profiles import HardwareProfile
from fuseblk.hw.storage import Storage

OPEN_TIMEOUT = 5.0  # seconds an open may take before the caller gives up on it

T = TypeVar("T")


class StorageOpener(Protocol):
    def __call__(self, location: str, /) -> Storage:
        """An existing storage, opened but not locked."""
        ...


class StorageCreator(Protocol):
    def __call__(
        self, location: str, header: ImageHeader, /, *, overwrite: bool = False
    ) -> Storage:
        """A new storage holding ``header`` (both copies durable), returned locked."""
        ...


@dataclass(frozen=True)
class StorageKind:
    """How one kind of storage is opened and created."""

    open: StorageOpener
    create: StorageCreator
    # Locations are file system paths: a backend is named by the absolute path, two paths are
    # the same storage when they resolve to the same file, and the daemon's own mount is refused.
    local_path: bool = False


def _nbd_kind(scheme: str) -> StorageKind:
    """NBD exports (:mod:`fuseblk.hw.nbd_storage`), imported when first used: fuseblk runs
    without libnbd's Python module as long as no reference names an export."""

    def nbd_storage() -> Any:
        try:
            from fuseblk.hw import nbd_storage
        except ImportError as exc:
            raise FuseblkError(
                errno.ENOSYS,
                f"{scheme}:// references need libnbd's Python module (python3-libnbd): {exc}",
            ) from None
        return nbd_storage

    def open_export(location: str) -> Storage:
        storage: Storage = nbd_storage().NbdStorage.open(scheme, location)
        return storage

    def create_export(location: str, header: ImageHeader, *, overwrite: bool = False) -> Storage:
        storage: Storage = nbd_storage().NbdStorage.create(
            scheme, location, header, overwrite=overwrite
        )
        return storage

    return StorageKind(open_export, create_export)


IMAGE_FILES = StorageKind(FileStorage.open, FileStorage.create, local_path=True)
STORAGE_KINDS: dict[str, StorageKind] = {
    "memory": StorageKind(MemoryStorage.open, MemoryStorage.create),
    "nbd": _nbd_kind("nbd"),
    "nbd+unix": _nbd_kind("nbd+unix"),
}


@dataclass(frozen=True)
class StorageRef:
    """A parsed reference."""

    scheme: str  # "file" for image paths
    kind: StorageKind
    location: str

    @classmethod
    def parse(cls, ref: str | os.PathLike[str]) -> StorageRef:
        if isinstance(ref, str):
            scheme, sep, location = ref.partition("://")
            kind = STORAGE_KINDS.get(scheme) if sep else None
            if kind is not None:
                return cls(scheme, kind, location)
        return cls("file", IMAGE_FILES, os.fspath(ref))

    @property
    def name(self) -> str:
        """What a backend attached by this reference is called (no I/O)."""
        if self.kind.local_path:
            return os.path.abspath(self.location)
        return f"{self.scheme}://{self.location}"

    def identity(self) -> str:
        """Equal for two references to the same storage; may look at the file system."""
        return os.path.realpath(self.location) if self.kind.local_path else self.name


class OwnMount:
    """The FUSE mount this process serves: references into it are refused (EINVAL).

    Made before the mount is up: the mountpoint's parent is resolved then, never the mountpoint
    itself (once mounted, looking at it asks this process).
    """

    def __init__(self, mountpoint: str | os.PathLike[str]) -> None:
        absolute = os.path.abspath(mountpoint)
        parent, base = os.path.split(absolute)
        self.roots = tuple(dict.fromkeys([absolute, os.path.join(os.path.realpath(parent), base)]))

    def check(self, path: str, ref: str) -> None:
        """Refuse ``path`` (absolute, of reference ``ref``) if it is the mount or inside it."""
        for root in self.roots:
            if path == root or path.startswith(root.rstrip("/") + "/"):
                raise FuseblkError(
                    errno.EINVAL,
                    f"{ref}: is inside {root}, the mount this daemon serves (it cannot be a backend)",
                )


def open_storage(ref: str | os.PathLike[str]) -> Storage:
    """The storage ``ref`` names, opened without taking its lock: to look at what the hardware
    stored (tests, tools), never to attach it. The caller closes it."""
    sref = StorageRef.parse(ref)
    return sref.kind.open(sref.location)


def open_backend(
    ref: str | os.PathLike[str],
    *,
    name: str | None = None,
    own_mount: OwnMount | None = None,
    take_over: bool = False,
) -> InlineEncryptionEngine:
    """Attach the image ``ref`` names: its lock taken (a stale claim taken over if
    ``take_over``, see :meth:`fuseblk.hw.storage.Storage.lock`), headers checked, hardware
    reset."""
    sref = StorageRef.parse(ref)
    shown = os.fspath(ref)
    _refuse_own_mount(sref, shown, own_mount)

    def open_locked() -> _Attaching:
        _refuse_own_mount_resolved(sref, shown, own_mount)
        return _attaching(_open_locked(sref, take_over))

    return _off_thread(open_locked, _Attaching.discard, sref, shown).engine(name)


def create_backend(
    ref: str | os.PathLike[str],
    size: int,
    hardware: HardwareProfile,
    label: str = "",
    *,
    overwrite: bool = False,
    name: str | None = None,
    own_mount: OwnMount | None = None,
) -> InlineEncryptionEngine:
    """Make a new image of ``size`` data bytes (refusing an existing one unless ``overwrite``)
    and attach it."""
    sref = StorageRef.parse(ref)
    header = ImageHeader(hardware, size, label=label, sequence=1, clean_shutdown=True)
    shown = os.fspath(ref)
    _refuse_own_mount(sref, shown, own_mount)

    def create() -> _Attaching:
        _refuse_own_mount_resolved(sref, shown, own_mount)
        return _attaching(sref.kind.create(sref.location, header, overwrite=overwrite))

    return _off_thread(create, _Attaching.discard, sref, shown).engine(name)


def create_image(
    ref: str | os.PathLike[str],
    size: int,
    hardware: HardwareProfile,
    label: str = "",
    *,
    overwrite: bool = False,
) -> ImageHeader:
    """Make a new image (``fuseblk image create``) and leave it closed cleanly, unclaimed."""
    sref = StorageRef.parse(ref)
    if sref.kind.local_path:
        return create_image_file(sref.location, hardware, size, label, overwrite)
    backend = create_backend(ref, size, hardware, label, overwrite=overwrite)
    trio.run(backend.close)
    return backend.header


@dataclass(frozen=True)
class _Attaching:
    """A storage opened and locked, its header attached (I/O that may block or, for a network
    storage, run a trio loop of its own: both belong in the worker thread)."""

    storage: Storage
    attached: Attached

    def engine(self, name: str | None) -> InlineEncryptionEngine:
        return InlineEncryptionEngine(self.storage, self.attached, name or self.storage.reference)

    def discard(self) -> None:
        self.storage.close()


def _attaching(storage: Storage) -> _Attaching:
    """Owns ``storage``: closes it if attaching fails."""
    try:
        return _Attaching(storage, attach_header(storage))
    except BaseException:
        storage.close()
        raise


@dataclass(frozen=True)
class _Found:
    """What the worker found: an attached backend, or the storage it opened and attached."""

    backend: Backend | None = None
    attaching: _Attaching | None = None

    def discard(self) -> None:
        if self.attaching is not None:
            self.attaching.discard()


def find_or_open_backend(
    ref: str | os.PathLike[str],
    attached: Iterable[Backend],
    *,
    name: str | None = None,
    own_mount: OwnMount | None = None,
    take_over: bool = False,
) -> tuple[Backend, bool]:
    """The backend among ``attached`` over the storage ``ref`` names (False), or that storage
    newly attached (True), named ``name`` or after the reference; ``take_over`` as for
    :func:`open_backend`.

    EBUSY if another process (or another open) holds it, EINVAL inside ``own_mount``, ETIMEDOUT
    if opening does not finish in time.
    """
    sref = StorageRef.parse(ref)
    shown = os.fspath(ref)
    _refuse_own_mount(sref, shown, own_mount)
    candidates = [(dev.path, dev) for dev in attached]

    def find_or_open() -> _Found:
        identity = sref.identity()
        _refuse_own_mount_resolved(sref, shown, own_mount)
        for path, dev in candidates:
            if StorageRef.parse(path).identity() == identity:
                return _Found(backend=dev)
        return _Found(attaching=_attaching(_open_locked(sref, take_over)))

    found = _off_thread(find_or_open, _Found.discard, sref, shown)
    if found.backend is not None:
        return found.backend, False
    assert found.attaching is not None
    return found.attaching.engine(name), True


def _open_locked(sref: StorageRef, take_over: bool) -> Storage:
    storage = sref.kind.open(sref.location)
    try:
        storage.lock(take_over=take_over)
    except BaseException:
        storage.close()
        raise
    return storage


def _refuse_own_mount(sref: StorageRef, shown: str, own_mount: OwnMount | None) -> None:
    if own_mount is not None and sref.kind.local_path:
        own_mount.check(os.path.abspath(sref.location), shown)


def _refuse_own_mount_resolved(sref: StorageRef, shown: str, own_mount: OwnMount | None) -> None:
    if own_mount is not None and sref.kind.local_path:
        own_mount.check(os.path.realpath(sref.location), shown)


def _off_thread(
    work: Callable[[], T], discard: Callable[[T], None], sref: StorageRef, shown: str
) -> T:
    """``work()`` in a worker thread, waited for at most OPEN_TIMEOUT seconds.

    Blocks the calling thread (table references are resolved synchronously), but never for
    longer than that. A result that comes after the caller gave up is passed to ``discard``.
    """
    future: Future[T] = Future()

    def run() -> None:
        try:
            value = work()
        except BaseException as exc:  # handed to the waiting thread, if it still waits
            with contextlib.suppress(InvalidStateError):
                future.set_exception(exc)
            return
        try:
            future.set_result(value)
        except InvalidStateError:  # cancelled: the caller gave up
            discard(value)

    threading.Thread(target=run, name=f"fuseblk open {shown}", daemon=True).start()
    try:
        return future.result(timeout=OPEN_TIMEOUT)
    except TimeoutError:
        if not future.cancel():  # finished meanwhile (or work itself timed out): take that
            return future.result()
        # only a path can lead into the daemon's own mount; other storage is just slow or gone
        hint = " (does it lead into a mount this daemon serves?)" if sref.kind.local_path else ""
        raise FuseblkError(
            errno.ETIMEDOUT, f"{shown}: no answer after {OPEN_TIMEOUT:g} s{hint}"
        ) from None
