"""DESIGN.md's arrows, read from each module's imports: Click only in cli, rich only in renderers, nothing imports cli."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "norn_cli"
MODULES = sorted(p for p in PKG.rglob("*.py"))
CORE = {"hub.py", "broker.py", "events.py", "server.py", "origin.py", "wire.py", "errors.py"}


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def top(names: set[str]) -> set[str]:
    return {n.split(".")[0] for n in names}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PKG)))
def test_module_respects_the_arrows(path: Path) -> None:
    """Each module imports only what its layer may."""
    rel = path.relative_to(PKG)
    names = imports_of(path)
    if rel.name not in ("cli.py", "__main__.py"):
        assert "click" not in top(names), f"{rel} imports click"
        assert "norn_cli.cli" not in names, f"{rel} imports cli"
    if rel.parts[0] != "render" and rel.name != "cli.py":
        assert "rich" not in top(names), f"{rel} imports rich"
    if rel.name in CORE:
        assert not {"click", "rich"} & top(names)
        assert "norn_cli.client" not in names, f"{rel} imports the client"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PKG)))
def test_module_has_a_docstring_and_future_annotations(path: Path) -> None:
    """Every module says what it owns in one line and uses postponed annotations."""
    tree = ast.parse(path.read_text())
    assert ast.get_docstring(tree), f"{path.name} has no docstring"
    if path.name not in ("__init__.py", "__main__.py"):
        assert any(
            isinstance(n, ast.ImportFrom) and n.module == "__future__" for n in tree.body
        ), f"{path.name} lacks `from __future__ import annotations`"


def test_no_print_outside_renderers_and_cli() -> None:
    """Library code never prints."""
    for path in MODULES:
        rel = path.relative_to(PKG)
        if rel.parts[0] == "render" or rel.name == "cli.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id != "print", f"{rel} calls print()"
