"""The TOML config and the built-in default: one data structure, errors with file:line: key path."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from fifo_helpers import returns_within
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuseblk.blkcrypto.fallback import MAX_NUM_SLOTS
from fuseblk.config.config_file import (
    BackendSpec,
    Config,
    build_devices,
    load_config,
    parse_config,
)
from fuseblk.config.default_setup import default_config, default_state_dir, state_warnings
from fuseblk.errors import FuseblkError

EXAMPLE = """\
[options]
fallback = "target"
fallback_slots = 8

[backends.fast]
image = "fast.img"
profile = "ufs"
size = "8M"
label = "fast disk"

[devices.top]
table = "0 16384 linear mid 0"

[devices.mid]
table = '''
0 16384 linear fast 0
'''
fallback = "device"
"""


def parse(text: str, tmp_path: Path) -> Config:
    return parse_config(text, source="config.toml", base_dir=tmp_path)


def error_of(text: str, tmp_path: Path) -> str:
    with pytest.raises(FuseblkError) as info:
        parse(text, tmp_path)
    assert info.value.errno == errno.EINVAL
    return info.value.message


def test_example_parses_with_paths_relative_to_the_file(tmp_path: Path) -> None:
    config = parse(EXAMPLE, tmp_path)
    assert config.options.fallback == "target"
    assert config.options.fallback_slots == 8
    assert config.backends == (
        BackendSpec("fast", tmp_path / "fast.img", "ufs", 8 << 20, "fast disk", 5),
    )


def test_a_backend_reference_of_another_storage_is_kept_as_written(tmp_path: Path) -> None:
    uri = "nbd+unix:///disk?socket=/run/nbd.sock"
    config = parse(f'[backends.remote]\nimage = "{uri}"\n', tmp_path)
    assert config.backends == (BackendSpec("remote", uri, None, None, "", 1),)


def test_devices_are_ordered_lower_first(tmp_path: Path) -> None:
    config = parse(EXAMPLE, tmp_path)
    assert [d.name for d in config.devices] == ["mid", "top"]
    assert [d.fallback for d in config.devices] == ["device", None]


def test_dependency_cycle_is_an_error_naming_the_cycle(tmp_path: Path) -> None:
    text = '[devices.a]\ntable = "0 8 linear b 0"\n[devices.b]\ntable = "0 8 linear a 0"\n'
    message = error_of(text, tmp_path)
    assert "cycle" in message and "a -> b -> a" in message
    assert message.startswith("config.toml:4: devices.b.table:")


def test_unknown_key_names_its_line_and_path(tmp_path: Path) -> None:
    text = '[backends.x]\nimage = "x.img"\ncolour = "red"\n'
    assert error_of(text, tmp_path).startswith("config.toml:3: backends.x.colour: unknown key")


def test_wrong_type_names_its_line_and_path(tmp_path: Path) -> None:
    text = '[options]\nfallback_slots = "many"\n'
    assert error_of(text, tmp_path).startswith(
        "config.toml:2: options.fallback_slots: expected int"
    )


def test_bad_fallback_policy_is_refused(tmp_path: Path) -> None:
    text = '[devices.d]\ntable = "0 8 zero"\nfallback = "sometimes"\n'
    assert error_of(text, tmp_path).startswith(
        "config.toml:3: devices.d.fallback: expected one of device, target"
    )


def test_bad_size_is_refused(tmp_path: Path) -> None:
    text = '[backends.x]\nimage = "x.img"\nsize = "lots"\n'
    assert error_of(text, tmp_path).startswith("config.toml:3: backends.x.size: invalid size")


def test_missing_table_is_refused(tmp_path: Path) -> None:
    assert error_of("[devices.d]\nfallback = 'device'\n", tmp_path).startswith(
        "config.toml:1: devices.d.table: missing"
    )


def test_toml_syntax_errors_carry_line_and_column(tmp_path: Path) -> None:
    message = error_of("[options\nfallback = 1\n", tmp_path)
    assert message.startswith("config.toml:") and "line 1" in message


def test_table_is_never_in_the_repr(tmp_path: Path) -> None:
    config = default_config(tmp_path)
    key_hex = (tmp_path / "secure.key").read_bytes().hex()
    assert key_hex not in repr(config)


def test_command_line_overrides_win(tmp_path: Path) -> None:
    config = parse(EXAMPLE, tmp_path).with_overrides(fallback_slots=3, fallback_enabled=False)
    assert (config.options.fallback_slots, config.options.fallback_enabled) == (3, False)


def test_default_state_dir_follows_xdg_data_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_state_dir() == tmp_path / "fuseblk"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert default_state_dir() == Path.home() / ".local" / "share" / "fuseblk"


def test_default_setup_makes_a_0600_key_once(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = default_config(state)
    key = (state / "secure.key").read_bytes()
    assert len(key) == 64
    assert stat.S_IMODE(os.stat(state / "secure.key").st_mode) == 0o600
    second = default_config(state)
    assert (state / "secure.key").read_bytes() == key
    assert first == second


def test_default_setup_is_the_documented_layout(tmp_path: Path) -> None:
    config = default_config(tmp_path)
    assert [(b.name, b.image.name, b.profile, b.size) for b in config.backends] == [
        ("inline", "inline.img", "ufs", 1 << 30),
        ("legacy", "legacy.img", "none", 1 << 30),
    ]
    tables = {d.name: d.table.split() for d in config.devices}
    assert [d.name for d in config.devices] == ["base", "secure", "plain"]
    assert tables["base"] == [
        "0",
        "1572864",
        "linear",
        "inline",
        "0",
        "1572864",
        "524288",
        "linear",
        "legacy",
        "0",
    ]
    assert tables["plain"] == ["0", "1572864", "linear", "legacy", "524288"]
    secure = tables["secure"]
    assert secure[:4] == ["0", "2097152", "default-key", "aes-xts-plain64"]
    assert secure[5:] == ["0", "base", "0", "2", "sector_size:4096", "iv_large_sectors"]
    assert {d.name: d.fallback for d in config.devices}["base"] == "target"


async def test_build_creates_missing_images_and_devices_in_order(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(EXAMPLE)
    manager = await build_devices(load_config(path))
    try:
        assert manager.names() == ["mid", "top"]
        assert manager.get("top").size == 8 << 20
    finally:
        await manager.close()
    assert (tmp_path / "fast.img").exists()


async def test_build_reports_table_errors_with_the_key_path(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(EXAMPLE.replace("linear fast 0", "linear fast zero"))
    with pytest.raises(FuseblkError) as info:
        await build_devices(load_config(path))
    assert info.value.message.startswith(f"{path}:15: devices.mid.table: line 1:")


async def test_build_refuses_a_missing_image_without_size(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[backends.x]\nimage = "x.img"\n')
    with pytest.raises(FuseblkError) as info:
        await build_devices(load_config(path))
    assert info.value.message.startswith(f"{path}:1: backends.x:")
    assert "does not exist" in info.value.message


async def test_the_example_in_docs_config_md_builds(tmp_path: Path) -> None:
    doc = (Path(__file__).parents[1] / "docs" / "config.md").read_text()
    example = doc.split("```toml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "fuseblk.toml"
    path.write_text(example)
    manager = await build_devices(load_config(path))
    try:
        assert manager.names() == ["disk", "secure"]
        assert manager.get("secure").size == 512 << 20
    finally:
        await manager.close()


# -- bad input: every mistake is one FuseblkError naming what is wrong --------------------------


def test_full_width_digits_are_not_a_size(tmp_path: Path) -> None:
    text = '[backends.x]\nimage = "x.img"\nprofile = "ufs"\nsize = "１６M"\n'
    assert error_of(text, tmp_path).startswith("config.toml:4: backends.x.size: invalid size")


def test_a_size_beyond_the_largest_file_offset_is_refused(tmp_path: Path) -> None:
    text = '[backends.x]\nimage = "x.img"\nprofile = "ufs"\nsize = "8388608T"\n'
    assert "larger than the largest file offset" in error_of(text, tmp_path)


@pytest.mark.parametrize("slots", [0, MAX_NUM_SLOTS + 1, 99999999999999])
def test_fallback_slots_outside_1_to_65536_are_refused(tmp_path: Path, slots: int) -> None:
    message = error_of(f"[options]\nfallback_slots = {slots}\n", tmp_path)
    assert message == f"config.toml:2: options.fallback_slots: expected 1..65536, got {slots}"


def test_65536_fallback_slots_are_accepted(tmp_path: Path) -> None:
    assert parse("[options]\nfallback_slots = 65536\n", tmp_path).options.fallback_slots == 65536


@pytest.mark.parametrize(
    "text",
    [
        "[[backends]]\nimage = 'x.img'\n",  # an array of tables where a table is expected
        "devices = 3\n",
        "backends = ['a', 'b']\n",
        "[backends.x]\nimage = '~nosuchuser-fuseblk/x.img'\n",
        '[backends.x]\nimage = "x\\u0000.img"\n',
        "[backends.x]\nimage = 'x.img'\nprofile = '~nosuchuser-fuseblk/p.toml'\n",
        "a = " + "1" * 5000 + "\n",  # more digits than int() converts
        "a = " + "[" * 5000 + "]" * 5000 + "\n",  # deeper than the parser recurses
    ],
)
def test_malformed_documents_are_a_fuseblk_error(tmp_path: Path, text: str) -> None:
    assert error_of(text, tmp_path).startswith("config.toml")


def test_a_config_that_is_not_utf8_names_the_byte(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(b'[options]\nfallback = "\xff"\n')
    with pytest.raises(FuseblkError) as info:
        load_config(path)
    assert info.value.errno == errno.EINVAL
    assert (
        info.value.message == f"cannot read config {path}: not UTF-8 text (byte 0xff at offset 22)"
    )


def test_a_fifo_as_config_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "config.fifo"
    os.mkfifo(fifo)
    with pytest.raises(FuseblkError) as info:
        returns_within(5, load_config, fifo, unblock=fifo)
    assert info.value.errno == errno.EINVAL
    assert info.value.message == f"cannot read config {fifo}: is a FIFO, not a regular file"


def test_a_directory_as_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FuseblkError) as info:
        load_config(tmp_path)
    assert info.value.errno == errno.EISDIR


# -- the default setup's state directory ----------------------------------------------------------


def test_a_state_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.write_text("not a directory")
    with pytest.raises(FuseblkError) as info:
        default_config(state)
    assert info.value.errno == errno.ENOTDIR
    assert info.value.message == f"state directory {state} is not a directory"


def test_a_state_dir_below_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(FuseblkError) as info:
        default_config(tmp_path / "file" / "state")
    assert info.value.errno == errno.ENOTDIR
    assert str(tmp_path / "file" / "state") in info.value.message


def test_an_unwritable_state_dir_names_the_key_it_cannot_create(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def refusing_open(path: Any, flags: int, *args: Any, **kw: Any) -> int:
        if flags & os.O_CREAT:  # what root is never refused: simulate a read-only directory
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
        return real_open(path, flags, *args, **kw)

    with monkeypatch.context() as patch:
        patch.setattr(os, "open", refusing_open)
        with pytest.raises(FuseblkError) as info:
            default_config(tmp_path)
    assert info.value.errno == errno.EACCES
    assert (
        info.value.message == f"cannot create the key {tmp_path / 'secure.key'}: Permission denied"
    )


@pytest.mark.parametrize("failing", ["write", "fsync"])
def test_a_full_disk_while_making_the_key_leaves_no_key_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    def no_space(*args: Any) -> Any:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as patch:
        patch.setattr(os, failing, no_space)
        with pytest.raises(FuseblkError) as info:
            default_config(tmp_path)
    assert info.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []  # neither secure.key nor a temporary file
    default_config(tmp_path)  # once there is space, the next mount makes a whole key
    assert len((tmp_path / "secure.key").read_bytes()) == 64


def test_an_empty_key_file_says_how_to_start_over(tmp_path: Path) -> None:
    (tmp_path / "secure.key").write_bytes(b"")
    with pytest.raises(FuseblkError) as info:
        default_config(tmp_path)
    assert "got 0 bytes" in info.value.message and "remove it" in info.value.message


def test_a_new_state_dir_is_0700_and_raises_no_warning(tmp_path: Path) -> None:
    state = tmp_path / "new" / "state"
    default_config(state)
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert state_warnings(state) == []


def test_an_existing_state_dir_or_key_open_to_others_is_warned_about(tmp_path: Path) -> None:
    default_config(tmp_path)
    tmp_path.chmod(0o755)
    (tmp_path / "secure.key").chmod(0o644)
    warnings = state_warnings(tmp_path)
    assert warnings == [
        f"state directory {tmp_path} holds the key but is open to others (mode 0755): "
        f"chmod 700 {tmp_path}",
        f"key file {tmp_path / 'secure.key'} is open to others (mode 0644): "
        f"chmod 600 {tmp_path / 'secure.key'}",
    ]
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o755  # warned about, never changed


# -- arbitrary documents --------------------------------------------------------------------------

_KEYS = st.sampled_from(
    ["options", "backends", "devices", "fallback", "fallback_slots", "fallback_enabled",
     "image", "profile", "size", "label", "table", "x", "base", ""]
)  # fmt: skip
_SCALARS = (
    st.integers()
    | st.integers(min_value=-(1 << 70), max_value=1 << 70)
    | st.floats()
    | st.booleans()
    | st.text(max_size=20)
    | st.sampled_from(
        ["ufs", "none", "8M", "１６M", "9E", "device", "target", "0 8 zero", "0 8 linear x 0",
         "~", "~nosuchuser/x", "a/b.toml", "\x00", "-1"]
    )
)  # fmt: skip
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS | st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)  # fmt: skip
_NAMES = st.sampled_from(["fast", "slow", "d", "e", "a b", "x/y", ""]) | st.text(max_size=6)
_FIELDS = {
    "fallback": st.sampled_from(["device", "target"]),
    "fallback_slots": st.integers(-2, 70000),
    "fallback_enabled": st.booleans(),
    "image": st.sampled_from(["x.img", "~/x.img", "../x.img", "/dev/null"]),
    "profile": st.sampled_from(["ufs", "none", "p.toml", "nosuch"]),
    "size": st.sampled_from(["8M", "１６M", "9E", "0", "1000"]) | st.integers(),
    "label": st.text(max_size=70),
    "table": st.sampled_from(
        ["0 8 zero", "0 8 linear fast 0", "0 8 linear d 0\n8 8 linear e 0", "0 8 linear e 0 # d"]
    ),
}


def _table_of(*keys: str) -> st.SearchStrategy[dict[str, Any]]:
    """Tables holding some of ``keys`` (mostly well-typed values) and now and then a stray key."""
    fields = {k: _FIELDS.get(k, _SCALARS) | _FIELDS.get(k, _SCALARS) | _SCALARS for k in keys}
    return st.fixed_dictionaries({}, optional=fields)


_OPTIONS = _table_of("fallback", "fallback_slots", "fallback_enabled")
_BACKEND = _table_of("image", "profile", "size", "label") | _table_of("image", "colour")
_DEVICE = _table_of("table", "fallback") | _table_of("table", "image")
_WELL_SHAPED = st.fixed_dictionaries(
    {},
    optional={
        "options": _OPTIONS,
        "backends": st.dictionaries(_NAMES, _BACKEND, max_size=3),
        "devices": st.dictionaries(_NAMES, _DEVICE, max_size=3),
    },
)
_ANY_SHAPE = st.dictionaries(
    st.sampled_from(["options", "backends", "devices"]) | st.text(max_size=8), _VALUES, max_size=3
)
_DOCUMENTS = st.one_of(_WELL_SHAPED, _WELL_SHAPED, _ANY_SHAPE)


def _toml(value: Any) -> str:
    """``value`` as a TOML inline value (tomllib reads TOML but cannot write it)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value).replace("nan", "nan").replace("inf", "inf")
    if isinstance(value, str):
        return '"' + "".join(_toml_char(c) for c in value) + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return "{" + ", ".join(f"{_toml(str(k))} = {_toml(v)}" for k, v in value.items()) + "}"


def _toml_char(c: str) -> str:
    if c in '"\\' or ord(c) < 0x20 or ord(c) == 0x7F or 0xD800 <= ord(c) < 0xE000:
        return f"\\u{ord(c):04x}" if not 0xD800 <= ord(c) < 0xE000 else "?"
    return c


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_DOCUMENTS)
def test_any_toml_document_parses_or_is_a_fuseblk_error(document: dict[str, Any]) -> None:
    text = "\n".join(f"{_toml(k)} = {_toml(v)}" for k, v in document.items())
    try:
        parse_config(text, source="fuzz.toml", base_dir=Path("/nonexistent"))
    except FuseblkError as err:
        assert err.message.startswith("fuzz.toml") and "\n" not in err.message


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_any_text_parses_or_is_a_fuseblk_error(text: str) -> None:
    try:
        parse_config(text, source="fuzz.toml", base_dir=Path("/nonexistent"))
    except FuseblkError as err:
        assert err.message.startswith("fuzz.toml")
