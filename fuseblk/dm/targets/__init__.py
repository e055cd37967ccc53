"""Device-mapper targets: one module each, registered here by name (``struct target_type``).

The table and mapped-device code never name a target: they look it up with :func:`get_target`
and ask the class for its properties (``passes_crypto`` is ``DM_TARGET_PASSES_CRYPTO``).
"""

from __future__ import annotations

import importlib

from fuseblk.dm.targets.base import Target, TargetArgError, TargetEnv

__all__ = ["Target", "TargetArgError", "TargetEnv", "get_target", "register", "target_names"]

_REGISTRY: dict[str, type[Target]] = {}
_MODULES = (
    "linear",
    "striped",
    "zero",
    "error",
    "flakey",
    "delay",
    "crypt",
    "default_key",
    "raid1",
)
_loaded = False


def register(cls: type[Target]) -> type[Target]:
    """Class decorator: make a target available to tables under ``cls.name``."""
    _REGISTRY[cls.name] = cls
    return cls


def _load() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for mod in _MODULES:
            importlib.import_module(f"fuseblk.dm.targets.{mod}")


def get_target(name: str) -> type[Target] | None:
    _load()
    return _REGISTRY.get(name)


def target_names() -> list[str]:
    _load()
    return sorted(_REGISTRY)
