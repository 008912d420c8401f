"""Shell completion: the committed scripts match Click's output, and `--app` completes from the hub."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from conftest import ROOT, ThreadHub, run_norn

from norn_cli.cli.completion import SHELLS, generate, main


@pytest.mark.parametrize("shell", SHELLS)
def test_committed_scripts_are_fresh(shell: str) -> None:
    """completions/norn.<shell> is exactly what `_NORN_COMPLETE=<shell>_source norn` prints now."""
    committed = ROOT / "completions" / f"norn.{shell}"
    assert committed.read_text() == generate(shell), (
        f"{committed} is stale: run `python -m norn_cli.cli.completion` from the repository root"
    )


def test_check_mode_reports_stale_scripts(tmp_path: Path) -> None:
    """`--check` fails on a directory without fresh scripts, and passes once they are written."""
    assert main(["--check", str(tmp_path)]) == 1
    assert main([str(tmp_path)]) == 0
    assert main(["--check", str(tmp_path)]) == 0


def _complete(url: str, words: str, cword: int) -> list[str]:
    done = run_norn(_NORN_COMPLETE="bash_complete", COMP_WORDS=f"norn --url {url} {words}", COMP_CWORD=str(cword + 2))
    assert done.returncode == 0 and done.stderr == ""
    return [line for line in done.stdout.splitlines() if line]


def test_app_completes_from_the_hubs_recent_events(thread_hub: ThreadHub) -> None:
    """`norn tail --app m<TAB>` offers the apps the hub has seen."""
    for app in ("mail-agent", "metrics", "db"):
        assert run_norn("--url", thread_hub.url, "emit", "a.b", "--app", app).returncode == 0
    assert _complete(thread_hub.url, "tail --app m", 3) == ["plain,mail-agent", "plain,metrics"]
    assert _complete(thread_hub.url, "emit x.y --app ", 4) == ["plain,db", "plain,mail-agent", "plain,metrics"]


def test_app_completion_is_empty_without_a_hub() -> None:
    """No hub: no suggestions, no noise."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert _complete(f"ws://127.0.0.1:{port}", "tail --app ", 3) == []
