"""The backend factory: a reference's form picks the storage; opening is bounded and guarded.

A daemon resolves table references on its only trio thread, which also serves its FUSE mount:
whatever a reference leads to must never make that thread wait for itself.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fuseblk.dm.manager import DeviceManager
from fuseblk.errors import FuseblkError
from fuseblk.hw import factory
from fuseblk.hw.factory import (
    IMAGE_FILES,
    STORAGE_KINDS,
    OwnMount,
    StorageKind,
    StorageRef,
    create_backend,
    find_or_open_backend,
    open_backend,
)
from fuseblk.hw.file_storage import create_image_file
from fuseblk.hw.image_format import ImageHeader
from fuseblk.hw.memory_storage import MemoryStorage
from fuseblk.hw.profiles import load_profile

MiB = 1 << 20


# --- reference forms ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ref, scheme, location",
    [
        ("/var/lib/fuseblk/disk.img", "file", "/var/lib/fuseblk/disk.img"),
        ("disk.img", "file", "disk.img"),
        ("memory://scratch", "memory", "scratch"),
        ("./memory://scratch", "file", "./memory://scratch"),  # a file that looks like a scheme
        ("nosuchscheme://x", "file", "nosuchscheme://x"),
        ("memory:scratch", "file", "memory:scratch"),
    ],
)
def test_a_reference_picks_its_kind_of_storage_by_its_form(
    ref: str, scheme: str, location: str
) -> None:
    parsed = StorageRef.parse(ref)
    assert (parsed.scheme, parsed.location) == (scheme, location)
    assert parsed.kind is (IMAGE_FILES if scheme == "file" else STORAGE_KINDS[scheme])


def test_a_path_object_is_always_an_image_file(tmp_path: Path) -> None:
    assert StorageRef.parse(tmp_path / "memory://x").kind is IMAGE_FILES


async def test_backends_are_named_after_their_reference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    b = create_backend("rel.img", MiB, load_profile("tiny"))
    assert b.name == b.path == str(tmp_path / "rel.img")
    await b.close()
    m = create_backend("memory://named", MiB, load_profile("tiny"))
    assert m.name == m.path == "memory://named"
    await m.close()


async def test_a_new_kind_of_storage_is_one_module_and_one_factory_entry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    opened: list[str] = []

    def open_ram(location: str) -> MemoryStorage:
        opened.append(location)
        return MemoryStorage.open(location)

    monkeypatch.setitem(STORAGE_KINDS, "ram", StorageKind(open_ram, MemoryStorage.create))
    made = create_backend("ram://disk", MiB, load_profile("tiny"))
    await made.close()
    again = open_backend("ram://disk")
    assert opened == ["disk"] and again.header.uuid == made.header.uuid
    await again.close()


# --- one backend per storage ------------------------------------------------------------------------


async def test_two_references_to_one_image_find_one_backend(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    create_image_file(image, load_profile("tiny"), MiB)
    (tmp_path / "link.img").symlink_to(image)
    first, new = find_or_open_backend(str(image), ())
    assert new
    again, new = find_or_open_backend(str(tmp_path / "link.img"), [first])
    assert again is first and not new
    await first.close()


async def test_a_manager_refuses_a_second_name_for_an_attached_image(
    tmp_path: Path, manager: DeviceManager
) -> None:
    image = tmp_path / "disk.img"
    create_image_file(image, load_profile("tiny"), MiB)
    manager.add_backend("disk", image)
    with pytest.raises(FuseblkError) as err:
        manager.add_backend("other", tmp_path / "." / "disk.img")
    assert err.value.errno == errno.EBUSY and "already attached as disk" in err.value.message


# --- only regular files are images ----------------------------------------------------------------


def test_a_fifo_is_refused_at_once_not_waited_on(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    start = time.monotonic()
    with pytest.raises(FuseblkError) as err:
        open_backend(fifo)
    assert err.value.errno == errno.EINVAL and "not a regular file" in err.value.message
    assert time.monotonic() - start < 2


def test_a_directory_is_eisdir(tmp_path: Path) -> None:
    with pytest.raises(FuseblkError) as err:
        open_backend(tmp_path)
    assert err.value.errno == errno.EISDIR


# --- bounded opens ------------------------------------------------------------------------------------


def test_an_open_that_does_not_answer_fails_in_time_and_its_late_result_is_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(factory, "OPEN_TIMEOUT", 0.2)
    disk = MemoryStorage.create("", ImageHeader(load_profile("tiny"), MiB))
    name = disk.reference.removeprefix("memory://")
    disk.close()
    answer = threading.Event()
    late: list[MemoryStorage] = []

    def hung_open(location: str) -> MemoryStorage:
        answer.wait(10)  # a lookup the kernel sends to a server that does not answer
        late.append(MemoryStorage.open(location))
        return late[-1]

    monkeypatch.setitem(STORAGE_KINDS, "hung", StorageKind(hung_open, MemoryStorage.create))
    start = time.monotonic()
    with pytest.raises(FuseblkError) as err:
        open_backend(f"hung://{name}")
    assert err.value.errno == errno.ETIMEDOUT and "hung://" in err.value.message
    assert "mount" not in err.value.message  # only a path can lead into the daemon's mount
    assert time.monotonic() - start < 2
    answer.set()
    assert _eventually(lambda: bool(late) and _is_closed(late[0]))
    again = MemoryStorage.open(name)
    again.lock()  # the late open took the lock and gave it back
    again.close()


def test_a_path_that_does_not_answer_asks_whether_it_leads_into_the_mount(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(factory, "OPEN_TIMEOUT", 0.2)
    answer = threading.Event()

    def hung_open(location: str) -> MemoryStorage:
        answer.wait(10)
        raise FuseblkError(errno.ENOENT, f"{location}: gone")

    monkeypatch.setattr(
        factory, "IMAGE_FILES", StorageKind(hung_open, MemoryStorage.create, local_path=True)
    )
    try:
        with pytest.raises(FuseblkError) as err:
            open_backend(tmp_path / "disk.img")
    finally:
        answer.set()
    assert err.value.errno == errno.ETIMEDOUT
    assert "does it lead into a mount this daemon serves?" in err.value.message


def _is_closed(storage: MemoryStorage) -> bool:
    try:
        storage.read_header(0, 1)
    except OSError as exc:
        return exc.errno == errno.EBADF
    return False


def _eventually(condition: Callable[[], bool], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


# --- the daemon's own mount -----------------------------------------------------------------------------


def test_references_into_the_own_mount_are_refused_before_any_lookup(tmp_path: Path) -> None:
    own = OwnMount(tmp_path / "mnt")  # nothing there: a lookup would say ENOENT
    for ref in (tmp_path / "mnt", tmp_path / "mnt" / "plain", tmp_path / "x" / ".." / "mnt/a"):
        with pytest.raises(FuseblkError) as err:
            open_backend(str(ref), own_mount=own)
        assert (
            err.value.errno == errno.EINVAL and "the mount this daemon serves" in err.value.message
        )
    with pytest.raises(FuseblkError) as err:
        open_backend(str(tmp_path / "mnt2" / "plain"), own_mount=own)  # a neighbour is fine
    assert err.value.errno == errno.ENOENT


def test_a_symlink_into_the_own_mount_is_refused_once_resolved(tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    create_image_file(mnt / "plain", load_profile("tiny"), MiB)
    own = OwnMount(mnt)
    (tmp_path / "link.img").symlink_to(mnt / "plain")
    with pytest.raises(FuseblkError) as err:
        open_backend(str(tmp_path / "link.img"), own_mount=own)
    assert err.value.errno == errno.EINVAL
    with pytest.raises(FuseblkError) as err:
        create_backend(str(tmp_path / "link.img"), MiB, load_profile("tiny"), own_mount=own)
    assert err.value.errno == errno.EINVAL


def test_a_mount_reached_through_a_symlinked_parent_is_still_its_own(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    own = OwnMount(tmp_path / "alias" / "mnt")
    with pytest.raises(FuseblkError) as err:
        open_backend(str(tmp_path / "real" / "mnt" / "plain"), own_mount=own)
    assert err.value.errno == errno.EINVAL


async def test_a_table_naming_a_file_in_the_own_mount_is_einval_in_one_line(
    tmp_path: Path, manager: DeviceManager
) -> None:
    manager.own_mount = OwnMount(tmp_path / "mnt")
    with pytest.raises(FuseblkError) as err:
        await manager.create("x", f"0 8 linear {tmp_path}/mnt/plain 0")
    assert err.value.errno == errno.EINVAL
    assert "the mount this daemon serves" in err.value.message and "\n" not in err.value.message
    assert manager.names() == []
