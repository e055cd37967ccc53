"""fuseblk: Linux inline encryption (blk-crypto) and device-mapper, emulated in userspace.

Layers, top to bottom: the FUSE layer translates requests into bios; mapped devices and their
targets decide where each piece goes; backends (emulated inline-encryption hardware) store.
See docs/architecture.md for the contracts between the layers.
"""

__version__ = "0.1.0"

SECTOR_SIZE = 512
SECTOR_SHIFT = 9
