"""The FUSE layer: device files, block-file I/O with read-modify-write, the daemon's lifecycle."""
