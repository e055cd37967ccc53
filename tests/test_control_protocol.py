"""The control socket's wire format: validation happens before the manager sees a request."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from fuseblk.control.protocol import (
    COMMANDS,
    MAX_LINE,
    RequestError,
    decode_request,
    decode_response,
    encode_request,
    error_response,
    ok_response,
    redacted_args,
    response_result,
)
from fuseblk.errors import FuseblkError

KEY_HEX = "ab" * 64


def test_request_round_trips_through_one_json_line() -> None:
    line = encode_request(7, "table", {"name": "secure", "show_keys": True})
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    req = decode_request(line.rstrip(b"\n"))
    assert (req.id, req.cmd, req.args) == (7, "table", {"name": "secure", "show_keys": True})


@pytest.mark.parametrize(
    ("line", "expected_id", "fragment"),
    [
        (b"{not json", None, "malformed request"),
        (b"[1, 2]", None, "expected a JSON object"),
        (b'{"id": 3}', 3, "'cmd' must be a string"),
        (b'{"id": 4, "cmd": "frobnicate"}', 4, "unknown command 'frobnicate'"),
        (b'{"id": 5, "cmd": "remove", "args": {}}', 5, "missing argument 'name'"),
        (
            b'{"id": 6, "cmd": "remove", "args": {"name": "a", "force": 1}}',
            6,
            "unexpected argument 'force'",
        ),
        (
            b'{"id": 7, "cmd": "message", "args": {"name": "a", "sector": true, "args": ["x"]}}',
            7,
            "wrong type",
        ),
        (b'{"id": 8, "cmd": "ls", "args": [1]}', 8, "'args' must be an object"),
        (b"\xff\xfe", None, "not UTF-8"),
    ],
)
def test_invalid_requests_are_einval_naming_the_problem(
    line: bytes, expected_id: object, fragment: str
) -> None:
    with pytest.raises(RequestError) as info:
        decode_request(line)
    assert info.value.req_id == expected_id
    assert info.value.err.errno == errno.EINVAL
    assert fragment in info.value.err.message


def _einval(line: bytes) -> RequestError:
    with pytest.raises(RequestError) as info:
        decode_request(line)
    assert info.value.err.errno == errno.EINVAL
    return info.value


def test_json_nested_deeper_than_the_recursion_limit_is_einval() -> None:
    assert "nested too deeply" in _einval(b"[" * 100_000).err.message
    deep = b"[" * 5000 + b"]" * 5000
    rejected = _einval(b'{"id": 1, "cmd": "ls", "args": {"x": ' + deep + b"}}")
    assert "nested too deeply" in rejected.err.message


def test_an_id_of_5000_digits_is_einval_without_converting_it() -> None:
    rejected = _einval(b'{"id": ' + b"9" * 5000 + b', "cmd": "ping"}')
    assert rejected.req_id is None
    assert rejected.err.message == "malformed request: integer literal too long"


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_and_infinity_are_not_json(constant: bytes) -> None:
    assert "is not JSON" in _einval(b'{"id": ' + constant + b', "cmd": "ping"}').err.message


def _request(cmd: str, **args: object) -> bytes:
    return json.dumps({"id": 1, "cmd": cmd, "args": args}).encode()


DISCARD = {"name": "d", "offset": 0, "length": 512}
EVICT = {"name": "d", "mode": "AES-256-XTS", "key_hex": KEY_HEX, "data_unit_size": 4096}


@pytest.mark.parametrize(
    ("cmd", "args", "argument", "fragment"),
    [
        ("discard", {**DISCARD, "offset": -512}, "offset", "out of range"),
        ("discard", {**DISCARD, "offset": 2**63}, "offset", "out of range"),
        ("discard", {**DISCARD, "length": 2**64}, "length", "out of range"),
        ("discard", {**DISCARD, "offset": "\u0661\u0662"}, "offset", "wrong type"),
        ("discard", {**DISCARD, "length": "512"}, "length", "wrong type"),
        ("discard", {**DISCARD, "length": 512.0}, "length", "wrong type"),
        ("discard", {**DISCARD, "length": True}, "length", "wrong type"),
        ("message", {"name": "d", "sector": 2**63 // 512, "args": ["x"]}, "sector", "out of range"),
        ("message", {"name": "d", "sector": -1, "args": ["x"]}, "sector", "out of range"),
        ("message", {"name": "d", "sector": "\u0663", "args": ["x"]}, "sector", "wrong type"),
        ("message", {"name": "d", "sector": 0, "args": ["x", 1]}, "args", "list of strings"),
        ("evict_key", {**EVICT, "data_unit_size": 0}, "data_unit_size", "out of range"),
        ("evict_key", {**EVICT, "data_unit_size": 2**31 + 1}, "data_unit_size", "out of range"),
        ("evict_key", {**EVICT, "data_unit_size": "4096"}, "data_unit_size", "wrong type"),
        ("evict_key", {**EVICT, "dun_bytes": 0}, "dun_bytes", "out of range"),
        ("evict_key", {**EVICT, "dun_bytes": 33}, "dun_bytes", "out of range"),
        ("table", {"show_keys": 1}, "show_keys", "wrong type"),
        ("create", {"name": "d", "table": "", "force_attach": 1}, "force_attach", "wrong type"),
        ("load", {"name": "d", "table": "", "force_attach": "yes"}, "force_attach", "wrong type"),
        ("remove", {"name": ["d"]}, "name", "wrong type"),
        ("remove", {"name": "d" * 256}, "name", "longer than 255 characters"),
        ("remove", {"name": "\ud800"}, "name", "not valid Unicode"),
        ("message", {"name": "d", "sector": 0, "args": ["\udfff"]}, "args", "not valid Unicode"),
    ],
)
def test_numbers_out_of_range_and_wrong_types_are_einval_naming_the_argument(
    cmd: str, args: dict[str, object], argument: str, fragment: str
) -> None:
    rejected = _einval(_request(cmd, **args))
    assert rejected.req_id == 1
    assert f"argument {argument!r}" in rejected.err.message and fragment in rejected.err.message


def test_numbers_at_their_documented_limits_are_accepted() -> None:
    decode_request(_request("discard", name="d", offset=2**63 - 1, length=2**63 - 1))
    decode_request(_request("message", name="d", sector=2**63 // 512 - 1, args=["x"]))
    decode_request(_request("evict_key", **{**EVICT, "data_unit_size": 2**31, "dun_bytes": 32}))
    for rid in (-(2**63), 2**63 - 1, "r" * 128, None):
        assert decode_request(json.dumps({"id": rid, "cmd": "ping"}).encode()).id == rid


@pytest.mark.parametrize("rid", [2**63, -(2**63) - 1, 1.5, True, [1], {"a": 1}, "r" * 129])
def test_an_id_that_is_not_a_64_bit_integer_or_a_short_string_is_einval(rid: object) -> None:
    rejected = _einval(json.dumps({"id": rid, "cmd": "ping"}).encode())
    assert rejected.req_id is None and "'id' must be" in rejected.err.message


def test_errors_quote_unknown_names_shortened_and_without_keys() -> None:
    message = _einval(_request("z" * MAX_LINE)).err.message
    assert len(message) < 200 and "characters" in message
    message = _einval(json.dumps({"cmd": KEY_HEX}).encode()).err.message
    assert KEY_HEX[:32] not in message
    message = _einval(_request("ls", **{KEY_HEX: 1})).err.message
    assert KEY_HEX[:32] not in message and "unexpected argument" in message


def test_logged_arguments_are_short_and_a_key_cut_by_shortening_stays_hidden() -> None:
    logged = redacted_args("remove", {"name": "x" * 250 + KEY_HEX})
    assert len(logged["name"]) < 300 and KEY_HEX[:6] not in logged["name"]
    words = redacted_args("message", {"name": "d", "sector": 0, "args": ["w"] * 1000})["args"]
    assert len(words) < 20


def test_malformed_json_error_does_not_echo_the_line() -> None:
    line = b'{"id": 1, "cmd": "evict_key", "args": {"key_hex": "' + KEY_HEX.encode() + b'"'
    with pytest.raises(RequestError) as info:
        decode_request(line)
    assert KEY_HEX not in info.value.err.message


def test_secrets_are_redacted_for_logging() -> None:
    table = f"0 8 default-key aes-xts-plain64 {KEY_HEX} 0 base 0\n8 8 linear base 8\n"
    logged = redacted_args("create", {"name": "s", "table": table})
    assert logged == {"name": "s", "table": "<2 lines>"}
    logged = redacted_args("evict_key", {"name": "s", "key_hex": KEY_HEX, "mode": "AES-256-XTS"})
    assert KEY_HEX not in json.dumps(logged) and logged["mode"] == "AES-256-XTS"


def test_a_key_in_message_words_is_redacted_for_logging() -> None:
    # dmsetup's dm-crypt habit: "message DEV 0 key set HEX" (fuseblk's crypt refuses it, but the
    # request is logged before that)
    logged = redacted_args("message", {"name": "c", "sector": 0, "args": ["key", "set", KEY_HEX]})
    assert KEY_HEX[:32] not in json.dumps(logged)
    assert logged["args"][:2] == ["key", "set"] and logged["name"] == "c"


def test_error_response_carries_errno_name_and_message() -> None:
    resp = error_response(9, FuseblkError(errno.EBUSY, "key in use"))
    assert resp == {
        "id": 9,
        "ok": False,
        "errno": errno.EBUSY,
        "error": "EBUSY",
        "message": "key in use",
    }
    with pytest.raises(FuseblkError) as info:
        response_result(decode_response(json.dumps(resp).encode()))
    assert (info.value.errno, info.value.message) == (errno.EBUSY, "key in use")


def test_ok_response_yields_its_result() -> None:
    assert response_result(decode_response(json.dumps(ok_response(1, [1, 2])).encode())) == [1, 2]


def test_garbage_response_is_eproto() -> None:
    with pytest.raises(FuseblkError) as info:
        decode_response(b"hello")
    assert info.value.errno == errno.EPROTO


def test_every_documented_command_has_a_schema() -> None:
    documented = {
        "create", "load", "clear", "resume", "suspend", "remove", "rename", "table", "status",
        "info", "ls", "sysfs",
        "message", "evict_key", "discard", "stats", "hw_fault", "hw_status", "hw_set", "shutdown",
        "ping",
        "version",
        "key_import", "key_generate", "key_prepare", "key_derive_sw_secret",
    }  # fmt: skip
    assert set(COMMANDS) == documented


def test_every_command_is_documented_in_the_protocol_page() -> None:
    page = (Path(__file__).parent.parent / "docs" / "control-protocol.md").read_text()
    headings = {
        h.strip()
        for line in page.splitlines()
        if line.startswith("### ")
        for h in line[4:].split(",")
    }
    assert {f"`{cmd}`" for cmd in COMMANDS} <= headings
