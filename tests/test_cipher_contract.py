"""The ``DataUnitCipher`` contract, for every mode: what callers of ``get_cipher`` rely on.

Each mode's own test file checks its ciphertext against vectors and independent oracles; this
one checks, in the same words for all of them, how a cipher treats its buffers.
"""

from __future__ import annotations

import errno
import os

import pytest

from fuseblk.ciphers import DataUnitCipher, get_cipher
from fuseblk.errors import FuseblkError
from fuseblk.key import BlkCryptoKey
from fuseblk.modes import CryptoMode

EVERY_MODE = pytest.mark.parametrize("mode", list(CryptoMode), ids=str)


def _cipher(mode: CryptoMode, dus: int = 512, raw: bytes | None = None) -> DataUnitCipher:
    raw = os.urandom(mode.key_size) if raw is None else raw
    return get_cipher(BlkCryptoKey.create(mode, raw, dus))


@EVERY_MODE
@pytest.mark.parametrize("units", [1, 2, 20, 200])
def test_inputs_are_never_modified(mode: CryptoMode, units: int) -> None:
    cipher = _cipher(mode)
    data = bytearray(os.urandom(512 * units))
    before = bytes(data)
    ct = cipher.encrypt(data, 5)
    assert data == before
    ct_before = bytes(ct)
    cipher.decrypt(ct, 5)
    assert ct == ct_before
    cipher.decrypt(memoryview(ct), 5)
    assert ct == ct_before


@EVERY_MODE
@pytest.mark.parametrize(
    ("dus", "units", "pad"),
    [(4096, 1, 0), (4096, 3, 0), (4096, 64, 0), (512, 1, 100), (512, 3, 7), (512, 4, 100)]
    + [(512, 5, 100), (512, 200, 100)],
)
def test_decrypt_into_decrypts_in_place_and_leaves_the_rest_alone(
    mode: CryptoMode, dus: int, units: int, pad: int
) -> None:
    cipher = _cipher(mode, dus)
    data = os.urandom(dus * units)
    buf = bytearray(b"A" * pad) + cipher.encrypt(data, 11) + bytearray(b"Z" * pad)
    cipher.decrypt_into(memoryview(buf)[pad : len(buf) - pad], 11)
    assert buf == b"A" * pad + data + b"Z" * pad


@EVERY_MODE
@pytest.mark.parametrize("nbytes", [513, 600, 700])
@pytest.mark.parametrize("encrypt", [True, False], ids=["encrypt", "decrypt"])
def test_partial_data_unit_is_einval(mode: CryptoMode, nbytes: int, encrypt: bool) -> None:
    cipher = _cipher(mode)
    with pytest.raises(FuseblkError) as exc:
        (cipher.encrypt if encrypt else cipher.decrypt)(bytes(nbytes), 0)
    assert exc.value.errno == errno.EINVAL


@EVERY_MODE
def test_empty_request_gives_empty_result(mode: CryptoMode) -> None:
    cipher = _cipher(mode)
    assert cipher.encrypt(b"", 0) == b""
    assert cipher.decrypt(b"", 0) == b""


@EVERY_MODE
def test_repr_does_not_show_the_key(mode: CryptoMode) -> None:
    cipher = _cipher(mode, raw=bytes.fromhex("ab" * mode.key_size))
    assert "abab" not in repr(cipher)
