"""The house: folders follow the data flow, and no module imports from a folder above its own.

Every module of ``gateway/`` is parsed with ``ast``; every import counts, at module level or
inside a function (a lazy import is still a dependency), under ``TYPE_CHECKING`` too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "gateway"

#: A module may import its own folder and any folder of a lower rank; folders of one rank are
#: siblings that do not import each other. ``base`` is the root modules (errors, located);
#: ``wire`` shares its rank, so it imports neither base nor anything else of gateway.
RANK = {
    "base": 0,
    "wire": 0,
    "policy": 1,
    "ratelimit": 1,
    "auth": 2,
    "telemetry": 2,
    "config": 3,
    "approvals": 4,
    "inventory": 4,
    "upstream": 4,
    "pipeline": 5,
    "edge": 6,
    "server": 7,
    "cli": 8,
}
#: The embedded demo upstream stands alone: it imports nothing else of gateway, and nothing
#: of gateway imports it (it is started as ``python -m gateway.demo``).
ALONE = {"demo"}
ROOT_MODULES = {
    "__init__": "base",
    "children": "base",
    "errors": "base",
    "located": "base",
    "printable": "base",
    "turns": "base",
    "config": "config",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def folder(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "base"
    if parts[1] in ROOT_MODULES:
        return ROOT_MODULES[parts[1]]
    return parts[1]


def imported(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of gateway in one file, resolved to module names."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(TREES[path]):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            # ``from gateway.x import y`` may name a submodule y: judge the deeper name
            found += [(node.lineno, f"{name}.{alias.name}") for alias in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] == "gateway"]


MODULES = sorted(PACKAGE.rglob("*.py"))
# Parsed once, while tests are collected: CPython 3.11's parser can fail with "AST constructor
# recursion depth mismatch" when a finalizer of an object left by an earlier test runs inside it.
TREES = {path: ast.parse(path.read_text(encoding="utf-8")) for path in MODULES}


def test_every_folder_has_a_rank() -> None:
    folders = {folder(module_name(path)) for path in MODULES}
    assert folders <= set(RANK) | ALONE, folders - set(RANK) - ALONE


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path: Path) -> None:
    """A module imports its own folder or a folder of a lower rank, never one above or beside it."""
    own = folder(module_name(path))
    wrong = []
    for line, name in imported(path):
        other = folder(name)
        if other == own or (name == "gateway.__version__" and own != "wire"):
            continue
        if own in ALONE or other in ALONE or RANK[other] >= RANK[own]:
            wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {own} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_wire_imports_nothing_of_gateway() -> None:
    wire = [path for path in MODULES if folder(module_name(path)) == "wire"]
    assert len(wire) >= 5
    for path in wire:
        assert not [name for _, name in imported(path) if folder(name) != "wire"], path
