"""DESIGN.md's arrows, read from each module's imports: Click only in cli, rich only in renderers, nothing imports cli."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import ThreadHub, run_norn

PKG = Path(__file__).resolve().parent.parent / "norn_cli"
MODULES = sorted(p for p in PKG.rglob("*.py"))
# The hub's side: what `norn serve` loads. It never reaches into clients or renderers.
HUB_SIDE = {
    "hub.py", "broker.py", "redis_broker.py", "events.py", "server.py", "connection.py", "origin.py", "wire.py",
    "errors.py", "config.py", "pipeline.py", "health.py", "writer.py",
}  # fmt: skip
CLIENT_SIDE = {"norn_cli.client", "norn_cli.watch", "norn_cli.tailing", "norn_cli.emitting", "norn_cli.render"}


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
    if str(rel) in HUB_SIDE:
        assert not {"click", "rich"} & top(names)
        reached = {n for n in names if n in CLIENT_SIDE or n.startswith("norn_cli.render.")}
        assert not reached, f"{rel} imports {reached}"


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


def test_cli_top_level_imports_are_minimal() -> None:
    """cli.py, imported by every command, loads click and errors at the top, not asyncio or rich."""
    tree = ast.parse((PKG / "cli.py").read_text())
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    assert found <= {"__future__", "os", "sys", "collections.abc", "dataclasses", "typing", "click", "norn_cli", "norn_cli.errors"}


def test_emit_loads_nothing_it_does_not_use(thread_hub: ThreadHub) -> None:
    """`norn emit` imports no rich, no renderer, no tail or server code (-X importtime)."""
    done = run_norn("--url", thread_hub.url, "emit", "a.b", "--app", "x", PYTHONPROFILEIMPORTTIME="1")
    assert done.returncode == 0, done.stderr
    modules = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "norn_cli.emitting" in modules
    assert not {
        m for m in modules
        if m.split(".")[0] in ("rich", "pygments", "markdown_it")
        or m.startswith(("norn_cli.render", "norn_cli.tailing", "norn_cli.server", "norn_cli.hub"))
    }  # fmt: skip
