"""``/sys/block/<dev>/queue/crypto/`` as block/blk-crypto-sysfs.c shows a crypto profile.

Scripts that probe inline encryption read these files (``grep . /sys/block/*/queue/crypto/*``,
Android's vold, xfstests' ``_require_inline_encryption``); rendering them from a profile with
the kernel's names, formats and visibility rules lets such scripts run against fuseblk's devices
unchanged. The rules (Documentation/ABI/stable/sysfs-block):

- no profile (no inline encryption, or a mapped device whose table offers none): no ``crypto/``
  directory at all (``blk_crypto_sysfs_register`` creates nothing);
- ``max_dun_bits``: ``"%u\\n"`` of 8 × the largest DUN in bytes;
- ``num_keyslots``: ``"%u\\n"``, 0 for a passthrough profile (every device-mapper device);
- ``modes/<name>``: ``"0x%x\\n"`` of the data-unit-size mask (bit i set: 2^i-byte units), a file
  only for a mode with a non-zero mask; the ``modes/`` directory itself is always there;
- ``raw_keys`` and ``hw_wrapped_keys``: ``"supported\\n"``, present only when that key type is.

Pure: one profile in, the files out. The FUSE layer serves them under ``MNT/.sys``, the control
socket prints them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fuseblk.blkcrypto.keyslot_manager import CryptoProfile
from fuseblk.key import KeyType
from fuseblk.modes import ALL_MODES

CRYPTO_DIR = "queue/crypto"  # under /sys/block/<dev>/
MODES_DIR = "modes"  # under CRYPTO_DIR
SUPPORTED = "supported\n"


@dataclass(frozen=True)
class CryptoSysfs:
    """The ``crypto/`` directory of one device: its subdirectories and its files' contents,
    paths relative to ``crypto/`` ("max_dun_bits", "modes/AES-256-XTS")."""

    dirs: tuple[str, ...] = ()
    files: dict[str, str] = field(default_factory=dict)


def crypto_sysfs(profile: CryptoProfile | None) -> CryptoSysfs | None:
    """The files ``blk_crypto_sysfs_register`` would show for ``profile``; None: no ``crypto/``."""
    if profile is None:
        return None
    caps = profile.caps
    key_types = int(caps.key_types)
    files: dict[str, str] = {}
    # the attribute group's files in the kernel's order (ls sorts them anyway)
    if key_types & KeyType.HW_WRAPPED:
        files["hw_wrapped_keys"] = SUPPORTED
    files["max_dun_bits"] = f"{8 * caps.max_dun_bytes}\n"
    files["num_keyslots"] = f"{profile.num_slots}\n"
    if key_types & KeyType.RAW:
        files["raw_keys"] = SUPPORTED
    for mode in ALL_MODES:
        mask = caps.modes.get(mode, 0)
        if mask:
            files[f"{MODES_DIR}/{mode.sysfs_name}"] = f"0x{mask:x}\n"
    return CryptoSysfs((MODES_DIR,), files)


def grep_lines(device: str, files: dict[str, str] | None) -> list[str]:
    """``grep -r . /sys/block/<device>/queue/crypto``: one ``path:value`` line per file of a
    :attr:`CryptoSysfs.files`, sorted; nothing for a device without ``crypto/``."""
    if files is None:
        return []
    base = f"/sys/block/{device}/{CRYPTO_DIR}"
    return [f"{base}/{path}:{files[path].rstrip(chr(10))}" for path in sorted(files)]
