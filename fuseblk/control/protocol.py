"""The control socket's wire format: JSON lines, one request and one response each.

Shared by the daemon's server (:mod:`fuseblk.control.server`) and the CLI's client
(:mod:`fuseblk.control.client`) so both agree on the commands, their arguments and how an error
travels: as the errno the kernel would return plus a one-line message, turned back into a
:class:`FuseblkError` on the client side. docs/control-protocol.md is the prose version.

Requests may carry key material (``evict_key``'s ``key_hex``, a ``default-key`` table's key, the
wrapped-key commands' keys and blobs), so :func:`redacted_args` is the only way arguments reach a
log line. The wrapped-key commands also answer with key material (blobs, a software secret):
responses are never logged, and the socket is private to root (:mod:`fuseblk.control.runtime`).

Any line a client sends is either a valid request or a :class:`RequestError` with ``EINVAL``: the
decoder is the daemon's first defence against bad input, so nothing a line holds (nesting, huge
numbers, wrong types, lone surrogates) may raise anything else from it.
"""

from __future__ import annotations

import builtins
import errno
import json
from dataclasses import dataclass, field
from typing import Any

from fuseblk import SECTOR_SIZE
from fuseblk.errors import FuseblkError, einval, redact_key_hex

PROTOCOL_VERSION = 1
MAX_LINE = 1 << 20  # bytes per request or response line, newline excluded

# The numbers a request may carry (docs/control-protocol.md, "Numbers"). Byte offsets and lengths
# are off_t, so below 2**63; a sector is one whose byte offset is.
ID_RANGE = range(-(2**63), 2**63)
BYTES_RANGE = range(0, 2**63)
SECTOR_RANGE = range(0, 2**63 // SECTOR_SIZE)
DATA_UNIT_SIZE_RANGE = range(1, 2**31 + 1)  # bit i of a mode's data unit size mask is 2**i bytes
DUN_BYTES_RANGE = range(1, 33)  # BLK_CRYPTO_MAX_IV_SIZE
MAX_ID_CHARS = 128
MAX_NAME_CHARS = 255  # the manager applies dm's own, shorter limit to new names
MAX_KEY_HEX_CHARS = 2048  # a key or blob in hex: far beyond any the kernel takes (128 bytes)
_MAX_INT_DIGITS = 20  # enough for any 64-bit value; longer literals are refused unparsed


@dataclass(frozen=True)
class Arg:
    """One argument of a command: its JSON type, the values it may take, whether it is required."""

    type: type
    required: bool = True
    secret: bool = False  # never logged (key material)
    bounds: range | None = None  # an int's accepted values
    max_chars: int | None = None  # a string's longest accepted length
    items: builtins.type | None = None  # the type of a list's elements


_NAME = Arg(str, max_chars=MAX_NAME_CHARS)
_OPT_NAME = Arg(str, required=False, max_chars=MAX_NAME_CHARS)
_WORD = Arg(str, max_chars=MAX_NAME_CHARS)

# cmd -> its arguments. The server rejects anything else with EINVAL before touching the manager.
COMMANDS: dict[str, dict[str, Arg]] = {
    "ping": {},
    "version": {},
    "create": {
        "name": _NAME,
        "table": Arg(str, secret=True),
        "fallback": Arg(str, required=False, max_chars=MAX_NAME_CHARS),
        "force_attach": Arg(bool, required=False),
    },
    "load": {
        "name": _NAME,
        "table": Arg(str, secret=True),
        "force_attach": Arg(bool, required=False),
    },
    "clear": {"name": _NAME},
    "resume": {"name": _NAME},
    "suspend": {"name": _NAME},
    "remove": {"name": _NAME},
    "rename": {"old": _NAME, "new": _NAME},
    "table": {"name": _OPT_NAME, "show_keys": Arg(bool, required=False)},
    "status": {"name": _OPT_NAME},
    "info": {"name": _OPT_NAME},
    "ls": {},
    "sysfs": {"name": _OPT_NAME},
    "message": {
        "name": _NAME,
        "sector": Arg(int, bounds=SECTOR_RANGE),
        "args": Arg(list, items=str),
    },
    "evict_key": {
        "name": _NAME,
        "mode": _WORD,
        "key_hex": Arg(str, secret=True),
        "data_unit_size": Arg(int, bounds=DATA_UNIT_SIZE_RANGE),
        "dun_bytes": Arg(int, required=False, bounds=DUN_BYTES_RANGE),
        "key_type": Arg(str, required=False, max_chars=16),
    },
    "discard": {
        "name": _NAME,
        "offset": Arg(int, bounds=BYTES_RANGE),
        "length": Arg(int, bounds=BYTES_RANGE),
    },
    "stats": {"name": _OPT_NAME},
    "hw_fault": {
        "name": _NAME,
        "fault": _WORD,
        "count": Arg(int, required=False, bounds=range(1, 2**31)),
        "probability": Arg(float, required=False),
        "seed": Arg(int, required=False, bounds=ID_RANGE),
        "ms": Arg(int, required=False, bounds=range(0, 2**31)),
    },
    "hw_status": {"name": _NAME},
    "hw_set": {
        "name": _NAME,
        "modes": Arg(list, required=False, items=str),
        "keyslots": Arg(int, required=False, bounds=range(0, 2**16)),
        "max_dun_bytes": Arg(int, required=False, bounds=range(0, 256)),
        "key_types": Arg(list, required=False, items=str),
        "drain": Arg(bool, required=False),
    },
    # hardware-wrapped keys: blobs and secrets travel in both directions (the socket is root's)
    "key_import": {
        "name": _NAME,
        "raw_key_hex": Arg(str, secret=True, max_chars=MAX_KEY_HEX_CHARS),
        "buffer_size": Arg(int, required=False, bounds=BYTES_RANGE),
    },
    "key_generate": {"name": _NAME, "buffer_size": Arg(int, required=False, bounds=BYTES_RANGE)},
    "key_prepare": {
        "name": _NAME,
        "lt_key_hex": Arg(str, secret=True, max_chars=MAX_KEY_HEX_CHARS),
        "buffer_size": Arg(int, required=False, bounds=BYTES_RANGE),
    },
    "key_derive_sw_secret": {
        "name": _NAME,
        "eph_key_hex": Arg(str, secret=True, max_chars=MAX_KEY_HEX_CHARS),
    },
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


class _Unparsable(ValueError):
    """A JSON literal the protocol refuses before converting it."""


def _parse_int(text: str) -> int:
    # int() of a long digit string costs quadratic time (and Python refuses 4300 digits and
    # more): no valid request needs more than a 64-bit value.
    if len(text) > _MAX_INT_DIGITS + text.startswith("-"):
        raise _Unparsable("integer literal too long")
    return int(text)


def _parse_constant(name: str) -> Any:
    raise _Unparsable(f"{name} is not JSON")


def _loads(line: bytes) -> Any:
    """The line's JSON value; ``EINVAL`` naming what is wrong, never echoing the line (it may
    hold a key)."""
    try:
        return json.loads(
            line.decode("utf-8"), parse_int=_parse_int, parse_constant=_parse_constant
        )
    except UnicodeDecodeError:
        detail = "not UTF-8"
    except json.JSONDecodeError as exc:
        detail = exc.msg
    except _Unparsable as exc:
        detail = str(exc)
    except RecursionError:
        detail = "nested too deeply"
    except ValueError:  # anything else the decoder refuses
        detail = "not valid JSON"
    raise RequestError(None, einval(f"malformed request: {detail}"))


def _request_id(obj: dict[str, Any]) -> int | str | None:
    """The id to echo in replies: absent or ``null``, a 64-bit integer or a short string."""
    rid = obj.get("id")
    if rid is None:
        return None
    if isinstance(rid, int) and not isinstance(rid, bool) and rid in ID_RANGE:
        return rid
    if isinstance(rid, str) and len(rid) <= MAX_ID_CHARS and _is_unicode(rid):
        return rid
    raise RequestError(
        None,
        einval(
            "malformed request: 'id' must be a 64-bit integer or a string of at most "
            f"{MAX_ID_CHARS} characters"
        ),
    )


def decode_request(line: bytes) -> Request:
    """Parse and validate one request line; ``RequestError`` carries the id to answer with."""
    obj = _loads(line)
    if not isinstance(obj, dict):
        raise RequestError(None, einval("malformed request: expected a JSON object"))
    rid = _request_id(obj)
    cmd = obj.get("cmd")
    if not isinstance(cmd, str):
        raise RequestError(rid, einval("malformed request: 'cmd' must be a string"))
    schema = COMMANDS.get(cmd)
    if schema is None:
        raise RequestError(rid, einval(f"unknown command {shown(cmd)}"))
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
    """``EINVAL`` naming the first argument that is unexpected, missing, or not as declared."""
    for key in args:
        if key not in schema:
            raise einval(f"{cmd}: unexpected argument {shown(key)}")
    for key, spec in schema.items():
        if key not in args or args[key] is None:
            if spec.required:
                raise einval(f"{cmd}: missing argument {key!r}")
            continue
        problem = _arg_problem(spec, args[key])
        if problem is not None:
            raise einval(f"{cmd}: argument {key!r} {problem}")


_TYPE_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    list: "a list",
}
_PLURAL_NAMES = {str: "strings", int: "integers", bool: "booleans"}


def _arg_problem(spec: Arg, value: Any) -> str | None:
    """What is wrong with ``value`` for ``spec``, or ``None``."""
    if not _has_type(value, spec.type):
        return f"has the wrong type: it must be {_TYPE_NAMES[spec.type]}"
    if spec.bounds is not None and value not in spec.bounds:
        return f"is out of range: it must be an integer from {spec.bounds.start} to {spec.bounds.stop - 1}"
    if isinstance(value, str):
        if spec.max_chars is not None and len(value) > spec.max_chars:
            return f"is longer than {spec.max_chars} characters"
        if not _is_unicode(value):
            return "is not valid Unicode (it holds a lone surrogate)"
    if isinstance(value, list) and spec.items is not None:
        if not all(_has_type(item, spec.items) for item in value):
            return f"has the wrong type: it must be a list of {_PLURAL_NAMES[spec.items]}"
        if not all(_is_unicode(item) for item in value if isinstance(item, str)):
            return "is not valid Unicode (it holds a lone surrogate)"
    return None


def _has_type(value: Any, expected: type) -> bool:
    # bool is an int in Python; JSON true must not pass as a sector number, nor 1 as a flag.
    if isinstance(value, bool):
        return expected is bool
    return isinstance(value, expected)


def _is_unicode(text: str) -> bool:
    """Whether ``text`` can be encoded: JSON's ``\\ud800`` escapes decode to lone surrogates,
    which no file name, log line or table parser downstream can take."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown(text: str, limit: int = 64) -> str:
    """``text`` quoted for an error or a log line: shortened, hex runs that may be keys hidden."""
    # Redact before cutting: a cut could leave a key's first digits too short to be recognised.
    safe = redact_key_hex(text)
    if len(safe) > limit:
        return repr(safe[:limit]) + f"... ({len(text)} characters)"
    return repr(safe)


def redacted_args(cmd: str, args: dict[str, Any]) -> dict[str, Any]:
    """The arguments as they may be logged: secrets replaced by a placeholder, long strings and
    lists shortened so that one request makes one log line of bounded length."""
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
            out[key] = _loggable(value)
        elif isinstance(value, list):  # message words: "key set <hex>" is dm-crypt's habit
            words = [_loggable(v) if isinstance(v, str) else v for v in value[:_LOGGED_WORDS]]
            out[key] = words + (["..."] if len(value) > _LOGGED_WORDS else [])
        else:
            out[key] = value
    return out


_LOGGED_CHARS = 256
_LOGGED_WORDS = 16


def _loggable(text: str) -> str:
    safe = redact_key_hex(text)  # before cutting, as in shown()
    return safe if len(safe) <= _LOGGED_CHARS else safe[:_LOGGED_CHARS] + "..."


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
