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

import os
from pathlib import Path

from fuseblk import SECTOR_SIZE
from fuseblk.config.config_file import BackendSpec, Config, ConfigOptions, DeviceSpec
from fuseblk.keyfile import read_key_file

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

    Read as every key file is (fuseblk.keyfile), so it may be replaced by one holding the hex.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return read_key_file(path, KEY_SIZE, "AES-256-XTS")
    try:
        os.write(fd, os.urandom(KEY_SIZE))
        os.fsync(fd)
    finally:
        os.close(fd)
    return read_key_file(path, KEY_SIZE, "AES-256-XTS")


def default_config(state_dir: Path | None = None) -> Config:
    """The default setup's Config; creates the state directory and the key if needed."""
    state = Path(state_dir) if state_dir is not None else default_state_dir()
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
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
