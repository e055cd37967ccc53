"""``fuseblk key``: the hardware-wrapped key operations of a backend or mapped device.

The kernel offers them as ioctls on the block device (include/uapi/linux/blk-crypto.h); a FUSE
file cannot carry those (docs/wrapped-keys.md), so the daemon offers them here:

* ``import DEV --raw-key-file F``: BLKCRYPTOIMPORTKEY, a raw key (16..64 bytes) → long-term blob;
* ``generate DEV``: BLKCRYPTOGENERATEKEY, a long-term blob of a key the hardware draws;
* ``prepare DEV --lt-key-file F``: BLKCRYPTOPREPAREKEY, long-term blob → ephemeral blob (valid
  until the hardware's next reset or the daemon's restart; the one tables take);
* ``derive-sw-secret DEV --eph-key-file F``: ``blk_crypto_derive_sw_secret`` (in-kernel only,
  fscrypt's), ephemeral blob → 32-byte software secret.

A key file holds the bytes themselves, or their hex digits and at most one newline. The result
goes to standard output in hex, or with ``--out FILE`` as bytes to a new file of mode 0600.
``--buffer-size N`` is the size of the ioctl's output buffer (default 128): a result that does
not fit is EOVERFLOW, as from the kernel. Errors end with the errno's name; exit status 2 for
EINVAL, 1 for any other errno. Keys travel over the daemon's control socket, which only root can
reach; they never reach its log.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from typing import Any

from fuseblk.cli import output
from fuseblk.cli.arguments import integer
from fuseblk.cli.dm_cmd import common_options
from fuseblk.control.client import ControlClient
from fuseblk.errors import FuseblkError
from fuseblk.keyfile import read_key_or_blob

DEFAULT_BUFFER_SIZE = 128  # BLK_CRYPTO_MAX_HW_WRAPPED_KEY_SIZE: fits any blob

# verb -> (control command, input file option or None, result field, what the result is)
_VERBS: dict[str, tuple[str, str | None, str, str]] = {
    "import": ("key_import", "raw_key_file", "lt_key_hex", "long-term blob"),
    "generate": ("key_generate", None, "lt_key_hex", "long-term blob"),
    "prepare": ("key_prepare", "lt_key_file", "eph_key_hex", "ephemeral blob"),
    "derive-sw-secret": ("key_derive_sw_secret", "eph_key_file", "sw_secret_hex", "secret"),
}
_INPUT_ARG = {
    "raw_key_file": "raw_key_hex",
    "lt_key_file": "lt_key_hex",
    "eph_key_file": "eph_key_hex",
}


def add_parser(subparsers: Any) -> None:
    common = common_options()
    key = subparsers.add_parser(
        "key",
        help="hardware-wrapped keys: import, generate, prepare, derive a software secret",
        description="The hardware-wrapped key operations of a running fuseblk daemon's "
        "backends and mapped devices (the BLKCRYPTO*KEY ioctls; docs/wrapped-keys.md).",
        parents=[common_options(suppress=False)],
    )
    verbs = key.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True
    helps = {
        "import": "BLKCRYPTOIMPORTKEY: a raw key (16..64 bytes) to a long-term blob",
        "generate": "BLKCRYPTOGENERATEKEY: a long-term blob of a key the hardware draws",
        "prepare": "BLKCRYPTOPREPAREKEY: a long-term blob to an ephemeral blob",
        "derive-sw-secret": "blk_crypto_derive_sw_secret (in-kernel only, no ioctl): "
        "an ephemeral blob to the 32-byte software secret",
    }
    files = {
        "raw_key_file": "the raw key",
        "lt_key_file": "the long-term blob",
        "eph_key_file": "the ephemeral blob",
    }
    for verb, (_, file_option, _, what) in _VERBS.items():
        p = verbs.add_parser(verb, help=helps[verb], description=helps[verb], parents=[common])
        p.set_defaults(func=run, key_verb=verb)
        p.add_argument("device", metavar="DEV", help="a backend or mapped device")
        if file_option is not None:
            p.add_argument(
                "--" + file_option.replace("_", "-"),
                dest=file_option,
                required=True,
                metavar="FILE",
                help=f"{files[file_option]}: its bytes, or their hex digits",
            )
        if verb != "derive-sw-secret":  # the in-kernel call has a fixed 32-byte buffer
            p.add_argument(
                "--buffer-size",
                type=integer(0, 2**63 - 1),
                default=DEFAULT_BUFFER_SIZE,
                metavar="N",
                help=f"the ioctl's output buffer in bytes (default {DEFAULT_BUFFER_SIZE}); "
                "a longer result is EOVERFLOW",
            )
        p.add_argument(
            "--out", metavar="FILE", help=f"write the {what} to this new file (mode 0600)"
        )


def write_output(path: str, data: bytes) -> None:
    """``data`` to a new file only its owner can read; EEXIST rather than overwrite a key."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        raise FuseblkError(exc.errno or errno.EIO, f"{path}: {exc.strerror}") from None
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except OSError as exc:
        raise FuseblkError(exc.errno or errno.EIO, f"{path}: {exc.strerror}") from None
    finally:
        os.close(fd)


def run(args: argparse.Namespace) -> int:
    cmd, file_option, field, _ = _VERBS[args.key_verb]
    try:
        request: dict[str, Any] = {"name": args.device}
        if file_option is not None:
            request[_INPUT_ARG[file_option]] = read_key_or_blob(getattr(args, file_option)).hex()
        if args.key_verb != "derive-sw-secret":
            request["buffer_size"] = args.buffer_size
        if args.out is not None and os.path.lexists(args.out):  # before a key is made for it
            raise FuseblkError(errno.EEXIST, f"{args.out}: {os.strerror(errno.EEXIST)}")
        with ControlClient.for_mount(args.mount) as client:
            result = client.call(cmd, **request)
        value = bytes.fromhex(result[field])
        if args.out is not None:
            write_output(args.out, value)
    except FuseblkError as err:
        print(f"fuseblk key {args.key_verb}: {err.message} ({err.errno_name})", file=sys.stderr)
        return 2 if err.errno == errno.EINVAL else 1
    if args.out is None:
        print(output.to_json({field: value.hex()}) if args.json else value.hex())
    return 0
