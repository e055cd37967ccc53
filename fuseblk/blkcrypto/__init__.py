"""The block layer's inline-encryption support (block/blk-crypto*.c): keyslot manager, software
fallback, and the one place that decides between them when a bio is submitted."""
