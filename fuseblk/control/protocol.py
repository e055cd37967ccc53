"""The control socket's wire format: JSON lines, one request and one response each.

Shared by the daemon's server (:mod:`fuseblk.control.server`) and the CLI's client
(:mod:`fuseblk.control.client`) so both agree on the commands, their arguments and how an error
travels: as the errno the kernel would return plus a one-line message, turned back into a
:class:`FuseblkError` on the client side. docs/control-protocol.md is the prose version.

Requests may carry key material (``evict_key``'s ``key_hex``, a ``default-key`` table's key), so
:func:`redacted_args` is the only way arguments reach a log line.
"""

from __future__ import annotations

import errno
import json
from dataclasses import dataclass, field
from typing import Any

from fuseblk.errors import FuseblkError, einval, redact_key_hex

PROTOCOL_VERSION = 1
MAX_LINE = 1 << 20  # bytes per request or response line, newline excluded


@dataclass(frozen=True)
class Arg:
    """One argument of a command: its JSON type and whether the request must carry it."""

    type: type | tuple[type, ...]
    required: bool = True
    secret: bool = False  # never logged (key material)


_NAME = Arg(str)
_OPT_NAME = Arg(str, required=False)

# cmd -> its arguments. The server rejects anything else with EINVAL before touching the manager.
COMMANDS: dict[str, dict[str, Arg]] = {
    "ping": {},
    "version": {},
    "create": {"name": _NAME, "table": Arg(str, secret=True), "fallback": Arg(str, required=False)},
    "load": {"name": _NAME, "table": Arg(str, secret=True)},
    "resume": {"name": _NAME},
    "suspend": {"name": _NAME},
    "remove": {"name": _NAME},
    "rename": {"old": _NAME, "new": _NAME},
    "table": {"name": _OPT_NAME, "show_keys": Arg(bool, required=False)},
    "status": {"name": _OPT_NAME},
    "info": {"name": _OPT_NAME},
    "ls": {},
    "message": {"name": _NAME, "sector": Arg(int), "args": Arg(list)},
    "evict_key": {
        "name": _NAME,
        "mode": Arg(str),
        "key_hex": Arg(str, secret=True),
        "data_unit_size": Arg(int),
        "dun_bytes": Arg(int, required=False),
    },
    "discard": {"name": _NAME, "offset": Arg(int), "length": Arg(int)},
    "stats": {"name": _OPT_NAME},
    "shutdown": {"force": Arg(bool, required=False)},
}


@dataclass(frozen=True)
class Request:
    id: int | str | None
    cmd: str
    args: dict[str, Any] = field(default_factory=dict)


def encode(obj: dict[str, Any]) -> bytes:
    """One JSON line; compact, ASCII-only so the line length in bytes is predictable."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode() + b"\n"


def encode_request(req_id: int, cmd: str, args: dict[str, Any]) -> bytes:
    return encode({"id": req_id, "cmd": cmd, "args": args})


def _request_id(obj: object) -> int | str | None:
    """The id to echo in an error reply, if the request had a usable one."""
    if isinstance(obj, dict):
        rid = obj.get("id")
        if isinstance(rid, (int, str)) and not isinstance(rid, bool):
            return rid
    return None


def decode_request(line: bytes) -> Request:
    """Parse and validate one request line; ``RequestError`` carries the id to answer with."""
    try:
        obj = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        # The message names the position only: the line itself may hold a key.
        detail = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8"
        raise RequestError(None, einval(f"malformed request: {detail}")) from None
    rid = _request_id(obj)
    if not isinstance(obj, dict):
        raise RequestError(rid, einval("malformed request: expected a JSON object"))
    cmd = obj.get("cmd")
    if not isinstance(cmd, str):
        raise RequestError(rid, einval("malformed request: 'cmd' must be a string"))
    schema = COMMANDS.get(cmd)
    if schema is None:
        raise RequestError(rid, einval(f"unknown command {cmd!r}"))
    args = obj.get("args", {})
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise RequestError(rid, einval(f"{cmd}: 'args' must be an object"))
    try:
        validate_args(cmd, schema, args)
    except FuseblkError as err:
        raise RequestError(rid, err) from None
    return Request(rid, cmd, args)


def validate_args(cmd: str, schema: dict[str, Arg], args: dict[str, Any]) -> None:
    for key in args:
        if key not in schema:
            raise einval(f"{cmd}: unexpected argument {key!r}")
    for key, spec in schema.items():
        if key not in args or args[key] is None:
            if spec.required:
                raise einval(f"{cmd}: missing argument {key!r}")
            continue
        value = args[key]
        # bool is an int in Python; JSON true must not pass as a sector number.
        if isinstance(value, bool) and spec.type is not bool:
            raise einval(f"{cmd}: argument {key!r} has the wrong type")
        if not isinstance(value, spec.type):
            raise einval(f"{cmd}: argument {key!r} has the wrong type")


def redacted_args(cmd: str, args: dict[str, Any]) -> dict[str, Any]:
    """The arguments as they may be logged: secrets replaced by a placeholder."""
    schema = COMMANDS.get(cmd, {})
    out: dict[str, Any] = {}
    for key, value in args.items():
        spec = schema.get(key)
        if spec is not None and spec.secret:
            if key == "table" and isinstance(value, str):
                out[key] = f"<{len([ln for ln in value.splitlines() if ln.strip()])} lines>"
            else:
                out[key] = "<redacted>"
        elif isinstance(value, str):
            out[key] = redact_key_hex(value)
        elif isinstance(value, list):  # message words: "key set <hex>" is dm-crypt's habit
            out[key] = [redact_key_hex(v) if isinstance(v, str) else v for v in value]
        else:
            out[key] = value
    return out


class RequestError(Exception):
    """A request that cannot be executed; answered with ``err`` under ``req_id``."""

    def __init__(self, req_id: int | str | None, err: FuseblkError) -> None:
        super().__init__(err.message)
        self.req_id = req_id
        self.err = err


def ok_response(req_id: int | str | None, result: Any) -> dict[str, Any]:
    return {"id": req_id, "ok": True, "result": result}


def error_response(req_id: int | str | None, err: FuseblkError) -> dict[str, Any]:
    return {
        "id": req_id,
        "ok": False,
        "errno": err.errno,
        "error": err.errno_name,
        "message": err.message,
    }


def decode_response(line: bytes) -> dict[str, Any]:
    """Parse a response line; a malformed one is EPROTO (the daemon and client disagree)."""
    try:
        obj = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise FuseblkError(errno.EPROTO, "malformed response from the fuseblk daemon") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("ok"), bool):
        raise FuseblkError(errno.EPROTO, "malformed response from the fuseblk daemon")
    return obj


def response_result(obj: dict[str, Any]) -> Any:
    """The result of a decoded response, or its error raised as :class:`FuseblkError`."""
    if obj["ok"]:
        return obj.get("result")
    code = obj.get("errno")
    if not isinstance(code, int) or isinstance(code, bool):
        code = errno.EIO
    message = obj.get("message")
    raise FuseblkError(code, message if isinstance(message, str) else None)
