"""The pipeline modules keep DESIGN.md's arrows: rich only in render/, Click only in cli, no one imports cli."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "norn_cli"
MODULES = ["config.py", "pipeline.py", "health.py", "watch.py", "demo.py", "render/run_state.py", "render/pipeline_view.py"]
HUB_SIDE = {"config.py", "pipeline.py", "health.py", "render/run_state.py"}  # the hub may import these


def imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("name", MODULES)
def test_imports_follow_the_arrows(name: str) -> None:
    """No Click anywhere here, rich only in the view, and nothing reaches back into the CLI."""
    found = imports(PACKAGE / name)
    tops = {n.split(".")[0] for n in found}
    assert "click" not in tops
    assert "norn_cli.cli" not in found
    if name != "render/pipeline_view.py":
        assert "rich" not in tops
    if name in HUB_SIDE:
        assert not {"norn_cli.client", "norn_cli.watch", "norn_cli.render.pipeline_view"} & found
