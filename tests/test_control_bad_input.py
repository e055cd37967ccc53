"""Generated bad input for the control plane: the decoder answers EINVAL and nothing else, and
a running daemon answers or closes every connection and keeps serving new ones.

Each strategy is one kind of input the hardening rules name: arbitrary bytes, JSON nested past
the recursion limit, number literals of thousands of digits, numbers written as strings (in any
script's digits), and values of the wrong JSON type for a command's argument.
"""

from __future__ import annotations

import errno
import json
import socket
from pathlib import Path
from typing import Any

from control_helpers import DaemonThread
from hypothesis import given, settings
from hypothesis import strategies as st

from fuseblk.control.protocol import COMMANDS, MAX_LINE, Arg, Request, RequestError, decode_request
from fuseblk.errors import FuseblkError

# Every command but shutdown, which would end the daemon under test when it is valid.
CMDS = sorted(cmd for cmd in COMMANDS if cmd != "shutdown")

arbitrary_bytes = st.binary(max_size=2048)


@st.composite
def deeply_nested(draw: st.DrawFn) -> bytes:
    """A request whose id or argument holds arrays and objects nested up to 200,000 deep."""
    depth = draw(st.integers(900, 200_000))
    opener = draw(st.sampled_from([b"[", b'{"a":', b"[{}, "]))
    closed = draw(st.booleans())
    value = opener * depth + (b"]" * depth if closed and opener == b"[" else b"")
    where = draw(st.sampled_from(["id", "arg", "top"]))
    if where == "top":
        return value
    if where == "id":
        return b'{"id": ' + value + b', "cmd": "ls"}'
    return b'{"id": 1, "cmd": "stats", "args": {"name": ' + value + b"}}"


def _number_position(cmd_and_arg: tuple[str, str], literal: bytes) -> bytes:
    """A request with ``literal`` (raw JSON) as the id or as an integer argument."""
    cmd, arg = cmd_and_arg
    if arg == "id":
        return b'{"id": ' + literal + b', "cmd": "ping"}'
    args = {k: _valid(spec) for k, spec in COMMANDS[cmd].items() if k != arg}
    head = json.dumps({"id": 1, "cmd": cmd, "args": args}).encode()[:-2]  # drop "}}"
    return head + b', "' + arg.encode() + b'": ' + literal + b"}}"


INT_ARGS = [(cmd, arg) for cmd in CMDS for arg, spec in COMMANDS[cmd].items() if spec.type is int]


@st.composite
def huge_number(draw: st.DrawFn) -> bytes:
    """An integer (or float) literal of 21 to 20,000 digits as the id or an integer argument."""
    digits = draw(st.text(alphabet="0123456789", min_size=21, max_size=20_000))
    sign = draw(st.sampled_from(["", "-"]))
    tail = draw(st.sampled_from(["", ".5", "e999", "e-999"]))
    where = draw(st.sampled_from([("", "id"), *INT_ARGS]))
    return _number_position(where, (sign + digits + tail).encode())


@st.composite
def digits_in_a_string(draw: st.DrawFn) -> bytes:
    """A number written as a JSON string, in any script's decimal digits (int() would read
    Arabic-Indic or Devanagari digits), where an integer argument belongs."""
    text = draw(st.text(alphabet=st.characters(categories=["Nd"]), min_size=1, max_size=30))
    return _number_position(draw(st.sampled_from(INT_ARGS)), json.dumps(text).encode())


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)  # longer literals are refused before their argument
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def _valid(spec: Arg) -> Any:
    """A value of the declared type within its bounds: the other arguments of a request must be
    right for the error to be about the wrong one."""
    if spec.type is int:
        return spec.bounds.start if spec.bounds is not None else 0
    return {str: "dev", bool: False, list: ["x"], float: 0.5}[spec.type]


def _is_declared_type(value: Any, spec: Arg) -> bool:
    if isinstance(value, bool) or spec.type is bool:
        return isinstance(value, bool) and spec.type is bool
    return isinstance(value, spec.type)


@st.composite
def wrong_type(draw: st.DrawFn) -> tuple[bytes, str]:
    """A request whose arguments are right but one, which holds a JSON value of another type."""
    cmd = draw(st.sampled_from([c for c in CMDS if COMMANDS[c]]))
    arg = draw(st.sampled_from(sorted(COMMANDS[cmd])))
    spec = COMMANDS[cmd][arg]
    value = draw(json_values.filter(lambda v: v is not None and not _is_declared_type(v, spec)))
    args = {k: _valid(s) for k, s in COMMANDS[cmd].items()}
    args[arg] = value
    return json.dumps({"id": 1, "cmd": cmd, "args": args}).encode(), arg


bad_lines = st.one_of(
    deeply_nested(), huge_number(), digits_in_a_string(), wrong_type().map(lambda t: t[0])
)


def _decode(line: bytes) -> Request | FuseblkError:
    try:
        return decode_request(line)
    except RequestError as exc:
        return exc.err


# --- (a) the decoder -----------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(arbitrary_bytes)
def test_arbitrary_bytes_decode_to_a_request_or_einval(line: bytes) -> None:
    outcome = _decode(line)
    if isinstance(outcome, FuseblkError):
        assert outcome.errno == errno.EINVAL and "\n" not in outcome.message


@settings(max_examples=60, deadline=None)
@given(st.one_of(deeply_nested(), huge_number(), digits_in_a_string()))
def test_deep_json_huge_numbers_and_digit_strings_are_einval(line: bytes) -> None:
    outcome = _decode(line)
    assert isinstance(outcome, FuseblkError) and outcome.errno == errno.EINVAL


@settings(max_examples=300, deadline=None)
@given(wrong_type())
def test_a_value_of_the_wrong_type_is_einval_naming_the_argument(case: tuple[bytes, str]) -> None:
    line, arg = case
    outcome = _decode(line)
    assert isinstance(outcome, FuseblkError) and outcome.errno == errno.EINVAL
    assert f"argument {arg!r}" in outcome.message


# --- (b) a running daemon, over its Unix socket --------------------------------------------------


def _exchange(path: Path, line: bytes) -> dict[str, Any] | None:
    """Send one line on a new connection: its one reply, or ``None`` if the server closed it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)  # a hang fails the test instead of stalling it
        sock.connect(str(path))
        try:
            sock.sendall(line + b"\n")
        except (BrokenPipeError, ConnectionResetError):
            return None
        with sock.makefile("rb") as reader:
            reply = reader.readline(MAX_LINE + 2)
    if not reply:
        return None
    assert reply.endswith(b"\n")
    response: dict[str, Any] = json.loads(reply)
    return response


def _assert_refused_then_still_serving(daemon: DaemonThread, line: bytes) -> None:
    response = _exchange(daemon.socket_path, line)
    if response is not None:
        assert response["ok"] is False
        assert response["errno"] in (errno.EINVAL, errno.EMSGSIZE), response
    ping = _exchange(daemon.socket_path, b'{"id": 1, "cmd": "ping"}')
    assert ping is not None and ping["ok"] is True
    assert daemon.alive


def _one_line(data: bytes) -> bytes:
    """``data`` as one non-blank request line."""
    return data.replace(b"\n", b" ") + b"x"


def test_a_daemon_refuses_generated_bad_lines_and_keeps_serving(daemon: DaemonThread) -> None:
    @settings(max_examples=150, deadline=None)
    @given(bad_lines)
    def check(line: bytes) -> None:
        _assert_refused_then_still_serving(daemon, line)

    check()


def test_a_daemon_survives_arbitrary_bytes(daemon: DaemonThread) -> None:
    @settings(max_examples=150, deadline=None)
    @given(arbitrary_bytes.map(_one_line))
    def check(line: bytes) -> None:
        _assert_refused_then_still_serving(daemon, line)

    check()
