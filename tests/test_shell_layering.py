"""The shell commands' layering: emit and tail's library code knows no Click, rich stays in the renderer,
and `norn emit` loads nothing it does not use."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import ROOT, ThreadHub, run_norn

PACKAGE = ROOT / "norn_cli"


def imported(path: Path) -> set[str]:
    """Top-level package names a module imports, anywhere in it."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("module", ["emitting.py", "tailing.py", "render/plain.py", "render/lines.py", "completions.py"])
def test_library_modules_know_no_click_and_never_import_cli(module: str) -> None:
    """emit and tail's library code is usable without Click and never imports the CLI."""
    names = imported(PACKAGE / module)
    assert not {n for n in names if n == "click" or n.startswith("click.")}
    assert "norn_cli.cli" not in names


@pytest.mark.parametrize("module", ["emitting.py", "tailing.py", "render/plain.py", "client.py"])
def test_rich_only_in_the_line_renderer(module: str) -> None:
    """rich is imported by render/lines.py alone among these."""
    assert not {n for n in imported(PACKAGE / module) if n == "rich" or n.startswith("rich.")}


def test_cli_top_level_imports_are_minimal() -> None:
    """cli.py, imported by every command, loads click and errors at the top, not asyncio or rich."""
    tree = ast.parse((PACKAGE / "cli.py").read_text())
    top: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            top.add(node.module)
    assert top <= {"__future__", "os", "sys", "collections.abc", "dataclasses", "typing", "click", "norn_cli", "norn_cli.errors"}


def test_emit_does_not_import_rich(thread_hub: ThreadHub) -> None:
    """`python -X importtime -m norn_cli emit ...` shows no rich, no render, no tailing."""
    done = run_norn("--url", thread_hub.url, "emit", "a.b", "--app", "x", PYTHONPROFILEIMPORTTIME="1")
    assert done.returncode == 0, done.stderr
    modules = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "norn_cli.emitting" in modules
    assert not {m for m in modules if m.split(".")[0] in ("rich", "pygments", "markdown_it") or m.startswith(("norn_cli.render", "norn_cli.tailing", "norn_cli.server"))}
