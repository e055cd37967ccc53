"""The emulated inline-encryption hardware: an engine (keyslots, ciphers) in front of a storage,
its on-disk image header, and the hardware profiles that describe controllers."""
