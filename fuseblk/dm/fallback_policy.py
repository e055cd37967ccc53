"""A mapped device's fallback policy: where a context its profile cannot take is encrypted.

``device`` (the kernel's way): the whole bio falls back at the mapped device, and the table
sees plain data. ``target`` (beyond the kernel): the device takes every context; only the pieces
for targets that do not pass crypto fall back at this device, the others keep their context and
each device below falls back for itself if it must. The ciphertext on disk is the same.
"""

from __future__ import annotations

import errno

from fuseblk.errors import FuseblkError

FALLBACK_POLICIES = ("device", "target")


def falls_back_per_target(policy: str) -> bool:
    """Whether ``policy`` is ``target``; EINVAL for a policy that does not exist."""
    if policy not in FALLBACK_POLICIES:
        raise FuseblkError(
            errno.EINVAL,
            f"fallback must be one of {', '.join(FALLBACK_POLICIES)}, got {policy!r}",
        )
    return policy == "target"
