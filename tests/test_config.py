"""The TOML config and the built-in default: one data structure, errors with file:line: key path."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from fuseblk.config.config_file import BackendSpec, Config, build_devices, load_config, parse_config
from fuseblk.config.default_setup import default_config, default_state_dir
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
