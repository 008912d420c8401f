"""DESIGN.md's arrows, derived from the folders: cli -> client, hub, render -> core; Click and rich only at the edges; no cycles."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import ThreadHub, run_norn

PKG = Path(__file__).resolve().parent.parent / "norn_cli"
MODULES = sorted(p for p in PKG.rglob("*.py"))
LAYERS = ("core", "hub", "client", "render", "cli")
# What each layer may import of the package, besides itself. A layer is a folder.
MAY_IMPORT = {
    "core": set(),
    "hub": {"core"},
    "client": {"core"},
    "render": {"core"},
    "cli": {"core", "hub", "client", "render"},
    "": {"cli"},  # norn_cli/__init__.py (nothing) and __main__.py (the entry point)
}
# Third-party packages only some layers may know.
EDGE_PACKAGES = {"click": {"cli"}, "rich": {"cli", "render"}}


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else ""


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, absolute, including `from norn_cli.x import name` as norn_cli.x.name when that is a module."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{path.name}: relative import"
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in ALL)
    return names


ALL = {module_name(p) for p in MODULES}


def test_every_module_is_in_a_layer() -> None:
    """The tree says where each module runs: nothing but the entry points sits outside the five folders."""
    loose = {m for m in ALL if layer_of(m) == "" and m not in ("norn_cli", "norn_cli.__main__")}
    assert loose == set()
    assert {layer_of(m) for m in ALL} == {"", *LAYERS}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PKG)))
def test_module_respects_the_arrows(path: Path) -> None:
    """Each module imports only its own layer and the layers its folder may use."""
    me = module_name(path)
    mine = layer_of(me)
    names = imports_of(path)
    for name in names:
        top = name.split(".")[0]
        if top in EDGE_PACKAGES:
            assert mine in EDGE_PACKAGES[top], f"{me} imports {top}"
        if top == "norn_cli" and name in ALL and name != "norn_cli":
            theirs = layer_of(name)
            assert theirs == mine or theirs in MAY_IMPORT[mine], f"{me} ({mine or 'root'}) imports {name} ({theirs})"
    if me == "norn_cli":
        assert not {n for n in names if n.startswith("norn_cli.")}, "the package root imports nothing of its own"


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle in an import graph (module -> modules it imports), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n) :] + [n]
            if n not in state and (found := visit(n)) is not None:
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)) is not None:
            return found
    return None


def test_no_import_cycles() -> None:
    """No two modules reach each other through imports, not even type-only ones."""
    graph = {module_name(p): {n for n in imports_of(p) if n in ALL and n != module_name(p)} for p in MODULES}
    assert find_cycle(graph) is None


def test_the_cycle_check_finds_cycles() -> None:
    """The checker sees a cycle through three modules, and none in a diamond."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"d"}, "c": {"d"}, "d": set()}) is None


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
        if rel.parts[0] in ("render", "cli"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id != "print", f"{rel} calls print()"


def _cli_closure(root: str) -> tuple[set[str], set[str]]:
    """The cli modules `root` loads at its top level (itself included), and everything else they import there."""
    seen: set[str] = set()
    found: set[str] = set()
    todo = [root]
    while todo:
        mod = todo.pop()
        seen.add(mod)
        tree = ast.parse((PKG.parent / Path(*mod.split("."))).with_suffix(".py").read_text())
        for node in tree.body:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            for name in names:
                if name.startswith("norn_cli.cli."):
                    if name not in seen:
                        todo.append(name)
                else:
                    found.add(name)
    return seen, found


def test_cli_top_level_imports_are_minimal() -> None:
    """Every command starts with click and a few small core modules, not asyncio, rich, the client or the hub;
    the group loads no command's module but the one that runs."""
    from norn_cli.cli.main import COMMANDS

    seen, found = _cli_closure("norn_cli.cli.main")
    assert seen == {"norn_cli.cli.main", "norn_cli.cli.common", "norn_cli.cli.streams"}
    for spec in set(COMMANDS.values()):
        _, more = _cli_closure(spec.partition(":")[0])
        found |= more
    assert found <= {
        "__future__", "os", "sys", "errno", "collections.abc", "dataclasses", "typing", "click",
        "norn_cli", "norn_cli.core.errors", "norn_cli.core.kinds",
    }  # fmt: skip


def test_emit_loads_nothing_it_does_not_use(thread_hub: ThreadHub) -> None:
    """`norn emit` imports no rich, no renderer, no tail or server code (-X importtime)."""
    done = run_norn("--url", thread_hub.url, "emit", "a.b", "--app", "x", PYTHONPROFILEIMPORTTIME="1")
    assert done.returncode == 0, done.stderr
    modules = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "norn_cli.client.emit" in modules
    assert not {
        m for m in modules
        if m.split(".")[0] in ("rich", "pygments", "markdown_it")
        or m.startswith(("norn_cli.render", "norn_cli.client.tail", "norn_cli.hub.server", "norn_cli.hub.fanout"))
    }  # fmt: skip
