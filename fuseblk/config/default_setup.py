"""The built-in default setup: what ``fuseblk mount MP`` serves without ``--config``.

A state directory holds two sparse 1 GiB images and a key, made on the first mount and reused
afterwards (docs/architecture.md, "Built-in default setup"):

* ``inline.img`` — profile ``ufs`` (inline AES-256-XTS), ``legacy.img`` — profile ``none``;
* ``secure.key`` — 64 random bytes, mode 0600, made once;
* ``base`` = inline.img [0, 768 MiB) + legacy.img [0, 256 MiB), fallback per target;
* ``secure`` = default-key AES-256-XTS over all of base, 4 KiB data units, DUN = byte offset /
  4096: the first 768 MiB are encrypted inline, the rest by the software fallback;
* ``plain`` = legacy.img [256 MiB, 1 GiB), no encryption.

It is expressed as a :class:`fuseblk.config.Config`, exactly what a config file produces, so
the images are created and the devices built by the same code as for a config file.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from fuseblk import SECTOR_SIZE
from fuseblk.config.config_file import BackendSpec, Config, ConfigOptions, DeviceSpec
from fuseblk.errors import FuseblkError
from fuseblk.keyfile import KeyFileError, read_key_file
from fuseblk.statefile import create_state_file

MiB = 1 << 20
IMAGE_SIZE = 1024 * MiB
INLINE_PART = 768 * MiB  # of base, served by inline.img
KEY_SIZE = 64  # AES-256-XTS
KEY_FILE = "secure.key"


def default_state_dir() -> Path:
    """``$XDG_DATA_HOME/fuseblk``, else ``~/.local/share/fuseblk``."""
    data_home = os.environ.get("XDG_DATA_HOME")
    base = Path(data_home) if data_home else Path.home() / ".local" / "share"
    return base / "fuseblk"


def ensure_key(path: Path) -> bytes:
    """The key in ``path``, made once (64 random bytes, 0600, never overwritten).

    Made all or nothing (fuseblk.statefile): a full disk leaves no key file rather than an
    empty one. Read as every key file is (fuseblk.keyfile), so it may be replaced by one
    holding the hex.
    """
    if not os.path.lexists(path):
        try:
            create_state_file(path, os.urandom(KEY_SIZE), 0o600)
        except FileExistsError:
            pass  # another mount made it first: use that one
        except OSError as exc:
            raise FuseblkError(
                exc.errno or errno.EIO, f"cannot create the key {path}: {exc.strerror}"
            ) from None
    try:
        return read_key_file(path, KEY_SIZE, "AES-256-XTS")
    except KeyFileError as err:
        raise KeyFileError(f"{err.message}; to start over with a new key, remove it") from None


def make_state_dir(state: Path) -> None:
    """Create ``state`` (mode 0700: it holds the key) with its parents, or say why not."""
    try:
        state.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:  # exist_ok, so something other than a directory has the name
        raise FuseblkError(errno.ENOTDIR, f"state directory {state} is not a directory") from None
    except OSError as exc:
        raise FuseblkError(
            exc.errno or errno.EIO, f"cannot create state directory {state}: {exc.strerror}"
        ) from None


def state_warnings(state: Path) -> list[str]:
    """What in ``state`` others can reach although it is the key or holds it (an existing
    directory or key is never chmodded behind its owner's back)."""
    key = state / KEY_FILE
    checks = (
        (state, f"state directory {state} holds the key but is", "700"),
        (key, f"key file {key} is", "600"),
    )
    warnings = []
    for path, what, fix in checks:
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except OSError:
            continue
        if mode & 0o077:
            warnings.append(f"{what} open to others (mode {mode:04o}): chmod {fix} {path}")
    return warnings


def default_config(state_dir: Path | None = None) -> Config:
    """The default setup's Config; creates the state directory and the key if needed."""
    state = Path(state_dir) if state_dir is not None else default_state_dir()
    make_state_dir(state)
    key = ensure_key(state / KEY_FILE)
    sectors = IMAGE_SIZE // SECTOR_SIZE
    inline_sectors = INLINE_PART // SECTOR_SIZE
    legacy_part = (IMAGE_SIZE - INLINE_PART) // SECTOR_SIZE
    backends = (
        BackendSpec("inline", state / "inline.img", "ufs", IMAGE_SIZE, "fuseblk default: inline"),
        BackendSpec("legacy", state / "legacy.img", "none", IMAGE_SIZE, "fuseblk default: legacy"),
    )
    devices = (
        DeviceSpec(
            "base",
            f"0 {inline_sectors} linear inline 0\n{inline_sectors} {legacy_part} linear legacy 0\n",
            fallback="target",
        ),
        DeviceSpec(
            "secure",
            f"0 {sectors} default-key aes-xts-plain64 {key.hex()} 0 base 0 2 sector_size:4096 iv_large_sectors\n",
        ),
        DeviceSpec("plain", f"0 {sectors - legacy_part} linear legacy {legacy_part}\n"),
    )
    return Config(ConfigOptions(), backends, devices, source=f"default setup in {state}")
