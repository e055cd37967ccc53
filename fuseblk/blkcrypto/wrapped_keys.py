"""The block layer's side of hardware-wrapped key operations (block/blk-crypto.c).

Userspace reaches a device's key manager through three ioctls on the block device,
BLKCRYPTOIMPORTKEY, BLKCRYPTOGENERATEKEY and BLKCRYPTOPREPAREKEY (include/uapi/linux/blk-crypto.h);
the fourth operation, ``blk_crypto_derive_sw_secret``, is called by fscrypt inside the kernel and
has no ioctl. This module holds what the kernel checks around them, in its order:

1. a device without a crypto profile: EOPNOTSUPP (``blk_crypto_ioctl``);
2. the ioctl's own argument checks: a raw key outside 16..64 bytes
   (BLK_CRYPTO_MAX_RAW_KEY_SIZE) or a long-term blob over 128 bytes
   (BLK_CRYPTO_MAX_HW_WRAPPED_KEY_SIZE): EINVAL;
3. a profile without BLK_CRYPTO_KEY_TYPE_HW_WRAPPED: EOPNOTSUPP (``blk_crypto_import_key`` and
   its siblings), then the driver, whose EBADMSG says a blob does not unwrap;
4. a result longer than the caller's output buffer: EOVERFLOW (the ioctls' ``*_key_size``).

The hardware behind step 3 is a :class:`WrappedKeyHardware`; device-mapper passes the call down
to its devices (``DeviceManager.wrapped_key_op``).
"""

from __future__ import annotations

import enum
import errno
from typing import Protocol

from fuseblk.blkcrypto.keyslot_manager import CryptoProfile
from fuseblk.errors import FuseblkError, einval
from fuseblk.key import MAX_HW_WRAPPED_KEY_SIZE, KeyType

MIN_RAW_KEY_SIZE = 16  # the ioctl refuses shorter raw keys
MAX_RAW_KEY_SIZE = 64  # BLK_CRYPTO_MAX_RAW_KEY_SIZE
SW_SECRET_SIZE = 32  # BLK_CRYPTO_SW_SECRET_SIZE: derive_sw_secret's fixed output buffer
DEFAULT_BUFFER_SIZE = MAX_HW_WRAPPED_KEY_SIZE  # an output buffer that fits any blob


class WrappedKeyOp(enum.Enum):
    """The four operations; the value is the control protocol's name."""

    IMPORT = "import"
    GENERATE = "generate"
    PREPARE = "prepare"
    DERIVE_SW_SECRET = "derive_sw_secret"

    @property
    def kernel_name(self) -> str:
        """The ioctl (or, for derive_sw_secret, the in-kernel function) it stands for."""
        return _KERNEL_NAMES[self]

    @property
    def takes_input(self) -> bool:
        return self is not WrappedKeyOp.GENERATE


_KERNEL_NAMES = {
    WrappedKeyOp.IMPORT: "BLKCRYPTOIMPORTKEY",
    WrappedKeyOp.GENERATE: "BLKCRYPTOGENERATEKEY",
    WrappedKeyOp.PREPARE: "BLKCRYPTOPREPAREKEY",
    WrappedKeyOp.DERIVE_SW_SECRET: "blk_crypto_derive_sw_secret",
}


class WrappedKeyHardware(Protocol):
    """A driver's wrapped-key operations (``blk_crypto_ll_ops``): each returns the blob or
    secret it made, or raises the driver's error (EBADMSG for a blob it does not accept)."""

    def import_key(self, raw: bytes) -> bytes: ...

    def generate_key(self) -> bytes: ...

    def prepare_key(self, lt_blob: bytes) -> bytes: ...

    def derive_sw_secret(self, eph_blob: bytes) -> bytes: ...


def check_profile(profile: CryptoProfile | None, name: str, op: WrappedKeyOp) -> None:
    """Steps 1 and 3: EOPNOTSUPP unless ``profile`` supports hardware-wrapped keys."""
    if profile is None:
        raise FuseblkError(
            errno.EOPNOTSUPP, f"{name}: {op.kernel_name}: the device has no inline encryption"
        )
    if not int(profile.caps.key_types) & int(KeyType.HW_WRAPPED):
        raise FuseblkError(
            errno.EOPNOTSUPP,
            f"{name}: {op.kernel_name}: the device does not support hardware-wrapped keys",
        )


def check_input(op: WrappedKeyOp, data: bytes) -> None:
    """Step 2: the sizes the ioctl refuses before the hardware sees anything (EINVAL)."""
    if op is WrappedKeyOp.IMPORT and not MIN_RAW_KEY_SIZE <= len(data) <= MAX_RAW_KEY_SIZE:
        raise einval(
            f"{op.kernel_name}: a raw key is {MIN_RAW_KEY_SIZE}..{MAX_RAW_KEY_SIZE} bytes, "
            f"got {len(data)}"
        )
    if op in (WrappedKeyOp.PREPARE, WrappedKeyOp.DERIVE_SW_SECRET) and (
        len(data) > MAX_HW_WRAPPED_KEY_SIZE
    ):
        kind = "long-term" if op is WrappedKeyOp.PREPARE else "ephemeral"
        raise einval(
            f"{op.kernel_name}: a {kind} key blob is at most {MAX_HW_WRAPPED_KEY_SIZE} bytes, "
            f"got {len(data)}"
        )


def call(hw: WrappedKeyHardware, op: WrappedKeyOp, data: bytes) -> bytes:
    """Step 3's driver call."""
    if op is WrappedKeyOp.IMPORT:
        return hw.import_key(data)
    if op is WrappedKeyOp.GENERATE:
        return hw.generate_key()
    if op is WrappedKeyOp.PREPARE:
        return hw.prepare_key(data)
    return hw.derive_sw_secret(data)


def check_output(op: WrappedKeyOp, result: bytes, buffer_size: int) -> bytes:
    """Step 4: EOVERFLOW when ``result`` does not fit the caller's ``buffer_size`` bytes."""
    if len(result) > buffer_size:
        raise FuseblkError(
            errno.EOVERFLOW,
            f"{op.kernel_name}: the result is {len(result)} bytes, the output buffer {buffer_size}",
        )
    return result
