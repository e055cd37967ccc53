#!/usr/bin/env python3
"""Check that fuseblk's imports point down its layers, and that no modules import each other in a cycle.

The layers, top to bottom (docs/architecture.md draws them)::

    __main__ (``python -m fuseblk``)
    cli
    config   control   fuse        (one floor: they may import each other, never cli)
    dm
    hw
    blkcrypto
    ciphers
    core: the modules at the top of the package (bio, key, dun, errors, device, ...)

A module may import from its own floor or any floor below. An import made only under
``if TYPE_CHECKING:`` never runs, so it is allowed to point anywhere and is listed (with
``--verbose``) rather than refused. Imports inside functions are real imports and are checked like
the others. Exit status 1 and one line per violation when the rules are broken.

Usage: ``python tools/check_layers.py [--verbose] [PACKAGE_DIR]``
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator
from pathlib import Path

FLOORS: dict[str, int] = {
    "__main__": 7,
    "cli": 6,
    "config": 5,
    "control": 5,
    "fuse": 5,
    "dm": 4,
    "hw": 3,
    "blkcrypto": 2,
    "ciphers": 1,
}
CORE = 0
PACKAGE = "fuseblk"


def layer_of(module: str) -> str:
    """``fuseblk.dm.targets.linear`` -> ``dm``; a module at the top of the package is core."""
    parts = module.split(".")
    if len(parts) >= 2 and parts[1] in FLOORS:
        return parts[1]
    return "core"


def floor_of(module: str) -> int:
    return FLOORS.get(layer_of(module), CORE)


def module_name(root: Path, path: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(tree: ast.Module, module: str, is_package: bool) -> Iterator[tuple[str, int, bool]]:
    """(imported fuseblk module, line, only under TYPE_CHECKING) for every import in ``tree``."""

    def visit(node: ast.AST, typing_only: bool) -> Iterator[tuple[str, int, bool]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    yield from visit_stmt(stmt, True)
                for stmt in child.orelse:
                    yield from visit_stmt(stmt, typing_only)
            else:
                yield from visit_stmt(child, typing_only)

    def visit_stmt(node: ast.AST, typing_only: bool) -> Iterator[tuple[str, int, bool]]:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    yield alias.name, node.lineno, typing_only
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module.split(".") if is_package else module.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join([*pkg, base] if base else pkg)
            if base.split(".")[0] != PACKAGE:
                return
            for alias in node.names:
                # "from fuseblk.blkcrypto import submit" imports a module; "from fuseblk.bio
                # import Bio" a name of one: either way the edge goes to the deepest module.
                yield f"{base}.{alias.name}", node.lineno, typing_only
        else:
            yield from visit(node, typing_only)

    yield from visit(tree, False)


def resolve(target: str, modules: set[str]) -> str | None:
    """The module ``target`` names: itself, or its parent when it names a member."""
    while target:
        if target in modules:
            return target
        target = target.rpartition(".")[0]
    return None


def check(root: Path, verbose: bool) -> list[str]:
    files = {module_name(root, p): p for p in sorted(root.rglob("*.py"))}
    modules = set(files)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    problems: list[str] = []
    for mod, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        for target, line, typing_only in imports(tree, mod, path.name == "__init__.py"):
            dep = resolve(target, modules)
            if dep is None or dep == mod:
                continue
            where = f"{path}:{line}: {mod} imports {dep}"
            upward = floor_of(dep) > floor_of(mod)
            if typing_only:
                if upward and verbose:
                    print(f"allowed, TYPE_CHECKING only: {where}")
                continue
            # a package's __init__ importing its own modules is not an edge to check for cycles
            if not (dep.startswith(mod + ".") and path.name == "__init__.py"):
                graph[mod].add(dep)
            if upward:
                problems.append(
                    f"{where} ({layer_of(mod)} must not import {layer_of(dep)}, a higher layer)"
                )
    problems.extend(cycles(graph))
    return problems


def cycles(graph: dict[str, set[str]]) -> list[str]:
    """One line per import cycle found by a depth-first search (Tarjan's components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[str] = []
    counter = 0

    def strongconnect(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append("import cycle: " + " <-> ".join(sorted(component)))

    sys.setrecursionlimit(max(1000, 10 * len(graph)))
    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "package", nargs="?", default=Path(__file__).parents[1] / PACKAGE, type=Path
    )
    parser.add_argument("--verbose", action="store_true", help="list allowed TYPE_CHECKING imports")
    args = parser.parse_args()
    problems = check(args.package.resolve(), args.verbose)
    for line in problems:
        print(line)
    if problems:
        return 1
    print(f"layers: every import of {PACKAGE}/ points down, no cycles")
    return 0


if __name__ == "__main__":
    sys.exit(main())
