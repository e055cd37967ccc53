"""``fuseblk crypt``: the real command in a subprocess, against independent ciphers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cipher_helpers import openssl_cbc_essiv, openssl_xts


def _fuseblk(*args: str, stdin: bytes | Path = b"") -> subprocess.CompletedProcess[bytes]:
    cmd = [sys.executable, "-m", "fuseblk", "crypt", *args]
    if isinstance(stdin, Path):
        with stdin.open("rb") as f:
            return subprocess.run(cmd, stdin=f, capture_output=True, timeout=120)
    return subprocess.run(cmd, input=stdin, capture_output=True, timeout=120)


def _assert_one_line_error(proc: subprocess.CompletedProcess[bytes], secret: str = "") -> None:
    assert proc.returncode == 2
    assert proc.stdout == b""
    err = proc.stderr.decode()
    assert err.count("\n") == 1 and err.startswith("fuseblk crypt: "), err
    if secret:
        assert secret.lower() not in err.lower()


def test_encrypt_aes_xts_matches_openssl_per_data_unit() -> None:
    raw, data = os.urandom(64), os.urandom(4096 * 5)
    proc = _fuseblk(
        "encrypt", "--mode", "AES-256-XTS", "--key-hex", raw.hex(),
        "--data-unit-size", "4096", "--dun", "1000", stdin=data,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == openssl_xts(raw, data, 1000, 4096)


def test_decrypt_inverts_encrypt_for_every_mode_with_lowercase_names(tmp_path: Path) -> None:
    for mode, size in [
        ("aes-256-xts", 64),
        ("aes-128-cbc-essiv", 16),
        ("adiantum", 32),
        ("sm4-xts", 32),
    ]:
        raw, data = os.urandom(size), os.urandom(512 * 6)
        common = ["--mode", mode, "--key-hex", raw.hex(), "--data-unit-size", "512", "--dun", "7"]
        enc = _fuseblk("encrypt", *common, stdin=data)
        assert enc.returncode == 0, enc.stderr
        assert enc.stdout != data and len(enc.stdout) == len(data)
        dec = _fuseblk("decrypt", *common, stdin=enc.stdout)
        assert dec.returncode == 0, dec.stderr
        assert dec.stdout == data, mode


def test_cbc_essiv_matches_independent_construction() -> None:
    raw, data = os.urandom(16), os.urandom(512 * 4)
    proc = _fuseblk(
        "encrypt", "--mode", "AES-128-CBC-ESSIV", "--key-hex", raw.hex(),
        "--data-unit-size", "512", "--dun", "0x20", stdin=data,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == openssl_cbc_essiv(raw, data, 0x20, 512)


def test_hex_and_decimal_duns_agree() -> None:
    raw, data = os.urandom(64), os.urandom(1024)
    common = ["--mode", "AES-256-XTS", "--key-hex", raw.hex(), "--data-unit-size", "512"]
    a = _fuseblk("encrypt", *common, "--dun", "0xFFFFFFFFFFFFFFFF", stdin=data)
    b = _fuseblk("encrypt", *common, "--dun", str((1 << 64) - 1), stdin=data)
    assert a.returncode == b.returncode == 0
    assert a.stdout == b.stdout == openssl_xts(raw, data, (1 << 64) - 1, 512)


def test_key_file_holds_raw_bytes_or_hex(tmp_path: Path) -> None:
    raw, data = os.urandom(32), os.urandom(1024)
    binary = tmp_path / "k.bin"
    binary.write_bytes(raw)
    text = tmp_path / "k.hex"
    text.write_text(raw.hex() + "\n")
    common = ["--mode", "SM4-XTS", "--data-unit-size", "512", "--dun", "3"]
    via_hex_arg = _fuseblk("encrypt", *common, "--key-hex", raw.hex(), stdin=data)
    via_binary = _fuseblk("encrypt", *common, "--key-file", str(binary), stdin=data)
    via_text = _fuseblk("encrypt", *common, "--key-file", str(text), stdin=data)
    assert via_hex_arg.returncode == via_binary.returncode == via_text.returncode == 0
    assert via_hex_arg.stdout == via_binary.stdout == via_text.stdout


def test_large_input_streams_in_pieces_with_the_dun_advancing(tmp_path: Path) -> None:
    # more than one read piece (1 MiB), from a regular file and from a pipe
    raw = os.urandom(64)
    data = os.urandom((3 << 20) + 4096 * 3)
    plain = tmp_path / "plain"
    plain.write_bytes(data)
    common = ["--mode", "AES-256-XTS", "--key-hex", raw.hex(), "--data-unit-size", "4096"]
    from_file = _fuseblk("encrypt", *common, "--dun", "5", stdin=plain)
    from_pipe = _fuseblk("encrypt", *common, "--dun", "5", stdin=data)
    assert from_file.returncode == from_pipe.returncode == 0
    assert from_file.stdout == from_pipe.stdout == openssl_xts(raw, data, 5, 4096)


def test_console_script_is_installed_and_works() -> None:
    script = shutil.which("fuseblk", path=str(Path(sys.executable).parent)) or shutil.which(
        "fuseblk"
    )
    if script is None:
        pytest.skip("the fuseblk console script is not installed in this environment")
    raw, data = os.urandom(64), os.urandom(512)
    proc = subprocess.run(
        [script, "crypt", "encrypt", "--mode", "AES-256-XTS", "--key-hex", raw.hex(),
         "--data-unit-size", "512", "--dun", "0"],
        input=data, capture_output=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == openssl_xts(raw, data, 0, 512)


def test_partial_data_unit_from_a_file_is_refused_before_any_output(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_bytes(os.urandom(4096 * 2 + 100))
    key = os.urandom(64).hex()
    proc = _fuseblk(
        "encrypt", "--mode", "AES-256-XTS", "--key-hex", key,
        "--data-unit-size", "4096", "--dun", "0", stdin=plain,
    )  # fmt: skip
    _assert_one_line_error(proc, secret=key)


def test_partial_data_unit_from_a_pipe_is_refused() -> None:
    proc = _fuseblk(
        "encrypt", "--mode", "AES-256-XTS", "--key-hex", os.urandom(64).hex(),
        "--data-unit-size", "512", "--dun", "0", stdin=os.urandom(100),
    )  # fmt: skip
    _assert_one_line_error(proc)


@pytest.mark.parametrize(
    ("change", "expect"),
    [
        ({"--key-hex": "ab" * 63}, "64-byte key"),
        ({"--key-hex": "xy" * 64}, "not valid hex"),
        ({"--key-hex": "abc"}, "not valid hex"),
        ({"--mode": "AES-512-XTS"}, "unknown crypto mode"),
        ({"--data-unit-size": "1000"}, "power of two"),
        ({"--data-unit-size": "four"}, "--data-unit-size"),
        ({"--dun": "-1"}, "negative"),
        ({"--dun": "0xg"}, "--dun"),
        ({"--dun-bytes": "17"}, "dun_bytes"),
        ({"--data-unit-size": "５１２"}, "--data-unit-size: expected a decimal or 0x-hex integer"),
        ({"--dun": "０"}, "in ASCII digits, got '０'"),
        ({"--dun-bytes": "８"}, "--dun-bytes"),
        ({"--dun": "1" * 5000}, "--dun: must be 0.."),
    ],
)
def test_bad_arguments_give_one_line_and_exit_2(change: dict[str, str], expect: str) -> None:
    args = {
        "--mode": "AES-256-XTS",
        "--key-hex": "5a" * 64,
        "--data-unit-size": "512",
        "--dun": "0",
    }
    args.update(change)
    flat = [item for pair in args.items() for item in pair]
    proc = _fuseblk("encrypt", *flat, stdin=bytes(512))
    _assert_one_line_error(proc, secret="5a" * 64)
    assert expect in proc.stderr.decode()


def test_dun_beyond_the_keys_dun_width_is_refused() -> None:
    proc = _fuseblk(
        "encrypt", "--mode", "AES-256-XTS", "--key-hex", os.urandom(64).hex(),
        "--data-unit-size", "512", "--dun", "0xff", "--dun-bytes", "1", stdin=bytes(1024),
    )  # fmt: skip
    _assert_one_line_error(proc)
    assert "DUN" in proc.stderr.decode()


def test_key_file_of_the_wrong_size_names_sizes_not_bytes(tmp_path: Path) -> None:
    keyfile = tmp_path / "k"
    keyfile.write_bytes(b"\x11" * 20)
    proc = _fuseblk(
        "encrypt", "--mode", "Adiantum", "--key-file", str(keyfile),
        "--data-unit-size", "512", "--dun", "0", stdin=bytes(512),
    )  # fmt: skip
    _assert_one_line_error(proc, secret="1111")
    assert "32-byte key, got 20 bytes" in proc.stderr.decode()


def test_empty_input_gives_empty_output() -> None:
    proc = _fuseblk(
        "decrypt", "--mode", "AES-256-XTS", "--key-hex", os.urandom(64).hex(),
        "--data-unit-size", "512", "--dun", "0",
    )  # fmt: skip
    assert proc.returncode == 0 and proc.stdout == b""


# -- standard streams and key files that are not what they should be ----------------------------

_ARGS = ["encrypt", "--mode", "AES-256-XTS", "--key-hex", "5a" * 64, "--data-unit-size", "512",
         "--dun", "0"]  # fmt: skip


def _run_with(
    preexec: Any = None, stdout: Any = subprocess.PIPE
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "fuseblk", "crypt", *_ARGS],
        input=bytes(1024),
        stdout=stdout,
        stderr=subprocess.PIPE,
        preexec_fn=preexec,
        timeout=60,
    )


def test_closed_stdout_is_one_line_and_exit_1() -> None:
    proc = _run_with(preexec=lambda: os.close(1))  # as `fuseblk crypt ... >&-`
    assert proc.returncode == 1
    assert proc.stderr == b"fuseblk crypt: standard output is closed\n"


def test_a_full_stdout_is_one_line_and_exit_1() -> None:
    with open("/dev/full", "wb") as full:
        proc = _run_with(stdout=full)
    assert proc.returncode == 1
    assert proc.stderr == b"fuseblk crypt: standard output: No space left on device\n"


def test_a_fifo_as_key_file_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "key"
    os.mkfifo(fifo)
    proc = subprocess.run(
        [sys.executable, "-m", "fuseblk", "crypt", "encrypt", "--mode", "AES-256-XTS",
         "--key-file", str(fifo), "--data-unit-size", "512", "--dun", "0"],
        input=bytes(512), capture_output=True, timeout=30,
    )  # fmt: skip
    _assert_one_line_error(proc)
    assert proc.stderr.decode() == f"fuseblk crypt: {fifo}: is a FIFO, not a regular file\n"
