"""The mount's configuration: backends and mapped devices, from TOML or the built-in default.

A config file and the built-in default (:mod:`fuseblk.config.default_setup`) produce the same
:class:`Config`, and :func:`build_devices` is the one code path that turns a Config into a live
DeviceManager: images created if missing, backends attached, devices created in dependency
order. Errors name the file, the line and the key (``config.toml:12: devices.secure.table:
line 1: ...``), because a config is edited by hand.

The format (see docs/config.md)::

    [options]
    fallback = "device"          # or "target": the default policy for devices
    fallback_slots = 100         # 1..65536
    fallback_enabled = true

    [backends.inline]
    image = "inline.img"         # relative to the config file
    profile = "ufs"              # name or file; with size: created if missing
    size = "1G"
    label = "fast"

    [backends.remote]
    image = "nbd://storage1/disk"  # any backend reference: attached as it is, never created

    [devices.secure]
    table = '''
    0 2097152 default-key aes-xts-plain64 <hex> 0 base 0 2 sector_size:4096 iv_large_sectors
    '''
    fallback = "target"
"""

from __future__ import annotations

import errno
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fuseblk.blkcrypto.fallback import DEFAULT_NUM_SLOTS, MAX_NUM_SLOTS
from fuseblk.dm.fallback_policy import FALLBACK_POLICIES
from fuseblk.errors import FuseblkError
from fuseblk.hw.factory import StorageRef
from fuseblk.hw.profiles import is_profile_path, load_profile
from fuseblk.inputfile import read_input_text
from fuseblk.sizes import parse_size

if TYPE_CHECKING:
    from fuseblk.dm.manager import DeviceManager

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class ConfigOptions:
    fallback: str = "device"
    fallback_slots: int = DEFAULT_NUM_SLOTS
    fallback_enabled: bool = True


@dataclass(frozen=True)
class BackendSpec:
    """An image to attach under ``name``; ``profile`` and ``size`` say how to create an image
    file if it is missing. ``image`` is a path, or a reference of another kind of storage
    (``nbd://...``) kept as written."""

    name: str
    image: Path | str
    profile: str | None = None
    size: int | None = None
    label: str = ""
    line: int = 0


@dataclass(frozen=True)
class DeviceSpec:
    """A mapped device; its table may hold key bytes, so it never appears in a repr."""

    name: str
    table: str = field(repr=False)
    fallback: str | None = None
    line: int = 0  # of the ``table`` key, for table errors


@dataclass(frozen=True)
class Config:
    options: ConfigOptions = ConfigOptions()
    backends: tuple[BackendSpec, ...] = ()
    devices: tuple[DeviceSpec, ...] = ()  # in dependency order: lower devices first
    source: str = "<config>"

    def with_overrides(
        self, *, fallback_slots: int | None = None, fallback_enabled: bool | None = None
    ) -> Config:
        """The command line's ``--fallback-slots``/``--no-fallback`` win over the file."""
        opts = self.options
        return Config(
            ConfigOptions(
                opts.fallback,
                opts.fallback_slots if fallback_slots is None else fallback_slots,
                opts.fallback_enabled if fallback_enabled is None else fallback_enabled,
            ),
            self.backends,
            self.devices,
            self.source,
        )


# -- reading ------------------------------------------------------------------------------------


def toml_key_path(*keys: str) -> str:
    """Keys as TOML writes them: ``backends.fast.size``, or ``devices."a b".table`` (quoted, so
    a key holding a newline or a dot cannot garble the one-line error)."""
    return ".".join(k if _BARE_KEY.fullmatch(k) else json.dumps(k) for k in keys)


def _located(source: str, line: int, keypath: str, err_no: int, message: str) -> FuseblkError:
    """An error as ``file:line: keypath: message``, the form every config error takes."""
    prefix = f"{source}:{line}" if line else source
    return FuseblkError(err_no, f"{prefix}: {keypath}: {message}")


class _Locator:
    """Line numbers for keys: tomllib gives none, so find ``[a.b]`` headers and ``key =`` lines."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()

    def section(self, *path: str) -> int:
        wanted = ".".join(path)
        for no, line in enumerate(self.lines, start=1):
            match = re.match(r"\s*\[\s*([^\]]+?)\s*\]", line)
            if match and match.group(1).replace('"', "").replace(" ", "") == wanted:
                return no
        return 0

    def key(self, key: str, *section: str) -> int:
        start = self.section(*section) if section else 0
        for no in range(start + 1, len(self.lines) + 1):
            line = self.lines[no - 1]
            if no > start + 1 and re.match(r"\s*\[", line):
                break
            if re.match(rf"\s*\"?{re.escape(key)}\"?\s*=", line):
                return no
        return start


class _Reader:
    def __init__(self, text: str, source: str) -> None:
        self.source = source
        self.where = _Locator(text)

    def error(self, line: int, keypath: str, message: str) -> FuseblkError:
        return _located(self.source, line, keypath, errno.EINVAL, message)

    def table(self, data: Any, path: tuple[str, ...], known: set[str] | None) -> None:
        """``data`` must be a table whose keys are all ``known`` (any key when None)."""
        if not isinstance(data, dict):
            raise self.error(
                self.where.key(path[-1], *path[:-1]), toml_key_path(*path), "expected a table"
            )
        for key in data:
            if known is not None and key not in known:
                raise self.error(
                    self.where.key(key, *path),
                    toml_key_path(*path, key),
                    f"unknown key (known: {', '.join(sorted(known))})",
                )

    def value(
        self, data: dict[str, Any], path: tuple[str, ...], key: str, kind: type | tuple[type, ...]
    ) -> Any:
        value = data[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            names = (
                kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            )
            raise self.error(
                self.where.key(key, *path),
                toml_key_path(*path, key),
                f"expected {names}, got {value!r}",
            )
        return value

    def path(self, data: dict[str, Any], path: tuple[str, ...], key: str) -> Path:
        """A file name, ``~`` expanded; relative ones are made absolute by the caller."""
        text = self.value(data, path, key, str)
        problem = "contains a NUL character" if "\0" in text else ""
        try:
            expanded = Path(text).expanduser()
        except RuntimeError as exc:  # ~nosuchuser/...
            problem = str(exc)
        if problem:
            raise self.error(self.where.key(key, *path), toml_key_path(*path, key), problem)
        return expanded

    def policy(self, data: dict[str, Any], path: tuple[str, ...]) -> str | None:
        if "fallback" not in data:
            return None
        value = self.value(data, path, "fallback", str)
        if value not in FALLBACK_POLICIES:
            raise self.error(
                self.where.key("fallback", *path),
                toml_key_path(*path, "fallback"),
                f"expected one of {', '.join(FALLBACK_POLICIES)}, got {value!r}",
            )
        return str(value)


def load_config(path: str | Path) -> Config:
    path = Path(path)
    try:
        text = read_input_text(path)  # a FIFO or device is refused, not waited on
    except FuseblkError as err:
        raise FuseblkError(err.errno, f"cannot read config {err.message}") from None
    return parse_config(text, source=str(path), base_dir=path.resolve().parent)


def parse_config(text: str, source: str = "<config>", base_dir: Path | None = None) -> Config:
    """Validate a config's TOML; relative image and profile paths are relative to ``base_dir``."""
    try:
        data = tomllib.loads(text)
    except ValueError as exc:  # TOMLDecodeError, or an integer of more than 4300 digits
        raise FuseblkError(errno.EINVAL, f"{source}: {exc}") from None
    except RecursionError:
        raise FuseblkError(errno.EINVAL, f"{source}: arrays or tables nested too deeply") from None
    base = base_dir or Path.cwd()
    r = _Reader(text, source)
    r.table(data, (), {"options", "backends", "devices"})
    options = _options(r, data.get("options", {}))
    backends = _backends(r, data.get("backends", {}), base)
    devices = _devices(r, data.get("devices", {}), {b.name for b in backends})
    return Config(options, tuple(backends), tuple(devices), source)


def _options(r: _Reader, data: dict[str, Any]) -> ConfigOptions:
    path = ("options",)
    r.table(data, path, {"fallback", "fallback_slots", "fallback_enabled"})
    opts = ConfigOptions()
    slots = (
        r.value(data, path, "fallback_slots", int)
        if "fallback_slots" in data
        else opts.fallback_slots
    )
    if not 1 <= slots <= MAX_NUM_SLOTS:
        raise r.error(
            r.where.key("fallback_slots", *path),
            "options.fallback_slots",
            f"expected 1..{MAX_NUM_SLOTS}, got {slots}",
        )
    enabled = (
        r.value(data, path, "fallback_enabled", bool)
        if "fallback_enabled" in data
        else opts.fallback_enabled
    )
    return ConfigOptions(r.policy(data, path) or opts.fallback, slots, enabled)


def _backends(r: _Reader, data: dict[str, Any], base: Path) -> list[BackendSpec]:
    r.table(data, ("backends",), None)
    specs = []
    for name, entry in data.items():
        path = ("backends", name)
        r.table(entry, path, {"image", "profile", "size", "label"})
        line = r.where.section(*path)
        if "image" not in entry:
            raise r.error(line, toml_key_path(*path, "image"), "missing (the image file's path)")
        reference = r.value(entry, path, "image", str)
        image: Path | str = reference  # another storage's reference, kept as written
        if StorageRef.parse(reference).kind.local_path:
            image = base / r.path(entry, path, "image")
        profile = r.value(entry, path, "profile", str) if "profile" in entry else None
        if profile is not None and is_profile_path(profile):
            profile = str(base / r.path(entry, path, "profile"))
        size = None
        if "size" in entry:
            raw = r.value(entry, path, "size", (str, int))
            try:
                size = parse_size(str(raw))
            except FuseblkError as err:
                raise r.error(
                    r.where.key("size", *path), toml_key_path(*path, "size"), err.message
                ) from None
        label = r.value(entry, path, "label", str) if "label" in entry else ""
        specs.append(BackendSpec(name, image, profile, size, label, line))
    return specs


def _devices(r: _Reader, data: dict[str, Any], backend_names: set[str]) -> list[DeviceSpec]:
    r.table(data, ("devices",), None)
    specs: dict[str, DeviceSpec] = {}
    for name, entry in data.items():
        path = ("devices", name)
        r.table(entry, path, {"table", "fallback"})
        if name in backend_names:
            raise r.error(
                r.where.section(*path), toml_key_path(*path), "a backend has the same name"
            )
        if "table" not in entry:
            raise r.error(
                r.where.section(*path), toml_key_path(*path, "table"), "missing (the dmsetup table)"
            )
        table = r.value(entry, path, "table", str)
        specs[name] = DeviceSpec(name, table, r.policy(entry, path), r.where.key("table", *path))
    return _dependency_order(r, specs)


def _references(table: str, names: set[str]) -> set[str]:
    """Mapped device names a table mentions (any argument that is one: names are unambiguous)."""
    found = set()
    for line in table.splitlines():
        for token in line.split("#", 1)[0].split():
            if token in names:
                found.add(token)
    return found


def _dependency_order(r: _Reader, specs: dict[str, DeviceSpec]) -> list[DeviceSpec]:
    """Lower devices first, otherwise file order; a cycle is an error naming it."""
    deps = {name: _references(spec.table, set(specs)) for name, spec in specs.items()}
    ordered: list[DeviceSpec] = []
    done: set[str] = set()
    visiting: list[str] = []

    def visit(name: str) -> None:
        if name in done:
            return
        if name in visiting:
            cycle = " -> ".join([*visiting[visiting.index(name) :], name])
            spec = specs[visiting[-1]]
            raise r.error(
                spec.line,
                toml_key_path("devices", spec.name, "table"),
                f"devices refer to each other in a cycle: {cycle}",
            )
        visiting.append(name)
        for dep in sorted(deps[name], key=list(specs).index):
            visit(dep)
        visiting.pop()
        done.add(name)
        ordered.append(specs[name])

    for name in specs:
        visit(name)
    return ordered


# -- building ------------------------------------------------------------------------------------


async def build_devices(
    config: Config, mountpoint: str | Path | None = None, *, take_over: bool = False
) -> DeviceManager:
    """A DeviceManager with every backend attached and every device created, or an error.

    ``mountpoint`` is where the devices are to be served: no image may lie inside it.
    ``take_over``: images attached take over a claim another host's daemon left (``fuseblk
    mount --force-attach``). On failure everything already attached is closed again, so images
    stay clean.
    """
    from fuseblk.dm.manager import DeviceManager
    from fuseblk.hw.factory import OwnMount, create_backend

    opts = config.options
    manager = DeviceManager(
        fallback_slots=opts.fallback_slots, fallback_enabled=opts.fallback_enabled
    )
    if mountpoint is not None:
        manager.own_mount = OwnMount(mountpoint)

    def error(line: int, keypath: str, err: FuseblkError) -> FuseblkError:
        return _located(config.source, line, keypath, err.errno, err.message)

    try:
        for spec in config.backends:
            try:
                if isinstance(spec.image, str) or spec.image.exists():
                    manager.add_backend(spec.name, spec.image, take_over=take_over)
                    continue
                if spec.size is None or spec.profile is None:
                    raise FuseblkError(
                        errno.ENOENT,
                        f"{spec.image} does not exist (give size and profile to create it)",
                    )
                hardware = load_profile(spec.profile)
                spec.image.parent.mkdir(parents=True, exist_ok=True)
                manager.add_device(
                    create_backend(
                        spec.image,
                        spec.size,
                        hardware,
                        label=spec.label,
                        name=spec.name,
                        own_mount=manager.own_mount,
                    )
                )
            except FuseblkError as err:
                raise error(spec.line, toml_key_path("backends", spec.name), err) from None
        for dev in config.devices:
            try:
                await manager.create(
                    dev.name, dev.table, fallback=dev.fallback or opts.fallback, take_over=take_over
                )
            except FuseblkError as err:
                raise error(dev.line, toml_key_path("devices", dev.name, "table"), err) from None
    except BaseException:
        await manager.close()
        raise
    return manager
