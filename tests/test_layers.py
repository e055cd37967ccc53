"""The layer rule, checked from the imports: tools/check_layers.py on the package and on made-up ones."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_checker() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "check_layers", ROOT / "tools" / "check_layers.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


check_layers = _load_checker()


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "fuseblk"
    for rel, text in {"__init__.py": "", **files}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_fuseblk_imports_point_down_without_cycles() -> None:
    assert check_layers.check(ROOT / "fuseblk", verbose=False) == []


def test_import_from_a_higher_layer_is_reported(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "hw/__init__.py": "",
            "hw/engine.py": "from fuseblk.dm.manager import DeviceManager\n",
            "dm/__init__.py": "",
            "dm/manager.py": "DeviceManager = object\n",
        },
    )
    problems = check_layers.check(root, verbose=False)
    assert len(problems) == 1
    assert "fuseblk.hw.engine imports fuseblk.dm.manager" in problems[0]
    assert "hw must not import dm" in problems[0]


def test_core_module_importing_a_layer_is_reported(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {"bio.py": "from fuseblk.ciphers import get_cipher\n", "ciphers/__init__.py": ""},
    )
    assert any("core must not import ciphers" in p for p in check_layers.check(root, False))


def test_type_checking_import_upwards_is_allowed(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "device.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from fuseblk.blkcrypto.profile import CryptoProfile\n",
            "blkcrypto/__init__.py": "",
            "blkcrypto/profile.py": "CryptoProfile = object\n",
        },
    )
    assert check_layers.check(root, verbose=False) == []


@pytest.mark.parametrize("where", ["top", "function"])
def test_import_cycle_within_a_layer_is_reported(tmp_path: Path, where: str) -> None:
    body = "import fuseblk.dm.{other}\n"
    if where == "function":
        body = "def f():\n    import fuseblk.dm.{other}\n"
    root = _package(
        tmp_path,
        {
            "dm/__init__.py": "",
            "dm/table.py": body.format(other="mapped_device"),
            "dm/mapped_device.py": "from fuseblk.dm import table\n",
        },
    )
    problems = check_layers.check(root, verbose=False)
    assert problems == ["import cycle: fuseblk.dm.mapped_device <-> fuseblk.dm.table"]
