"""Global options (--url, --token, --token-file, --cafile, -v, --no-color) before or after the command, one definition."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result
from conftest import ThreadHub, run_norn

from norn_cli.cli.common import GlobalOption
from norn_cli.cli.main import norn


def invoke(*args: str, **env: str | None) -> Result:
    """Run `norn ARGS` in-process with a clean NORN_* environment (None unsets a variable)."""
    clean: dict[str, str | None] = {k: None for k in os.environ if k.startswith("NORN_")} | {"NO_COLOR": None}
    return CliRunner().invoke(norn, list(args), env={**clean, **env}, catch_exceptions=False)


@pytest.fixture
def token_hub() -> Iterator[ThreadHub]:
    """A hub that wants a bearer token on /api."""
    th = ThreadHub(history=100, token="s3cret").start()
    try:
        yield th
    finally:
        th.stop()


@pytest.mark.parametrize("where", ["before", "after"])
def test_url_before_or_after_the_command(thread_hub: ThreadHub, where: str) -> None:
    """`norn --url U emit ...` and `norn emit ... --url U` publish to the same hub."""
    args = ["emit", "a.b", "--app", "x"]
    args = ["--url", thread_hub.url, *args] if where == "before" else [*args, "--url", thread_hub.url]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == thread_hub.server.broker.last_id  # type: ignore[union-attr]


def test_after_the_command_wins(thread_hub: ThreadHub) -> None:
    """The value after the command wins over the one before it, which wins over NORN_URL."""
    dead = "ws://127.0.0.1:9"
    assert invoke("--url", dead, "emit", "a.b", "--app", "x", "--url", thread_hub.url).exit_code == 0
    assert invoke("--url", thread_hub.url, "emit", "a.b", "--app", "x", NORN_URL=dead).exit_code == 0
    assert invoke("emit", "a.b", "--app", "x", NORN_URL=thread_hub.url).exit_code == 0


def test_tail_url_after_and_verbose(thread_hub: ThreadHub) -> None:
    """`norn tail --url U -v` works (it used to say `No such option` and suggest --until)."""
    invoke("emit", "a.b", "--app", "x", "--url", thread_hub.url)
    result = invoke("tail", "--url", thread_hub.url, "-v", "--last", "1", "--count", "1")
    assert result.exit_code == 0, result.output
    assert f"norn: subscribed to {thread_hub.url}/ws?last=1\n" in result.stderr


def test_serve_takes_verbose_after_the_command() -> None:
    """`norn serve -v` parses (a bad port shows it got past -v to the next option)."""
    result = invoke("serve", "-v", "--port", "70000")
    assert result.exit_code == 2
    assert "Invalid value for '--port'" in result.stderr


def test_serve_token_keeps_its_meaning(tmp_path: Path) -> None:
    """serve's own --token (the token the hub requires) is the only --token of serve."""
    tokens = [p for p in norn.get_command(click.Context(norn), "serve").params if "--token" in getattr(p, "opts", [])]
    assert len(tokens) == 1 and not isinstance(tokens[0], GlobalOption)


@pytest.mark.parametrize("where", ["before", "after", "env"])
def test_token_file(token_hub: ThreadHub, tmp_path: Path, where: str) -> None:
    """--token-file (or NORN_TOKEN_FILE) reads the token, newline stripped."""
    path = tmp_path / "token"
    path.write_text("s3cret\n")
    path.chmod(0o600)
    args = ["emit", "a.b", "--app", "x", "--url", token_hub.url]
    env: dict[str, str | None] = {}
    if where == "before":
        args = ["--token-file", str(path), *args]
    elif where == "after":
        args = [*args, "--token-file", str(path)]
    else:
        env["NORN_TOKEN_FILE"] = str(path)
    result = invoke(*args, **env)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""


def test_token_file_readable_by_others_warns(token_hub: ThreadHub, tmp_path: Path) -> None:
    """A token file others can read still works, with a warning naming the fix."""
    path = tmp_path / "token"
    path.write_text("s3cret\n")
    path.chmod(0o644)
    result = invoke("emit", "a.b", "--app", "x", "--url", token_hub.url, "--token-file", str(path))
    assert result.exit_code == 0, result.output
    assert result.stderr == f"norn: warning: the token file {path} is readable by other users; chmod 600 {path}\n"


def test_token_and_token_file_together_is_a_usage_error(tmp_path: Path) -> None:
    """Both on the command line: exit 2; a flag beats the environment."""
    path = tmp_path / "token"
    path.write_text("s3cret\n")
    path.chmod(0o600)
    result = invoke("emit", "a.b", "--app", "x", "--token", "a", "--token-file", str(path))
    assert result.exit_code == 2
    assert "--token and --token-file (or NORN_TOKEN and NORN_TOKEN_FILE) are alternatives" in result.stderr


def test_missing_token_file_is_exit_2(tmp_path: Path) -> None:
    """A token file that is not there: one sentence, exit 2."""
    result = invoke("emit", "a.b", "--app", "x", "--token-file", str(tmp_path / "nope"))
    assert result.exit_code == 2
    assert result.stderr == f"norn: cannot read the token file {tmp_path / 'nope'}: No such file or directory\n"


@pytest.mark.parametrize("name", norn.list_commands(click.Context(norn)))
def test_every_command_lists_the_global_options(name: str) -> None:
    """Each command's --help has a section of global options, saying they go before or after it."""
    out = invoke(name, "--help").stdout
    assert "Global options (before or after the command: norn --url URL CMD or norn CMD --url URL):" in out
    assert re.search(r"^  -v, --verbose ", out, re.MULTILINE)
    assert re.search(r"^  --no-color ", out, re.MULTILINE)


def test_one_definition() -> None:
    """The group and each command share the same option objects' definitions (same flags, same help)."""
    group = {p.name: (tuple(p.opts), p.help) for p in norn.params if isinstance(p, GlobalOption)}
    assert set(group) == {"url", "token", "token_file", "cafile", "verbose", "no_color"}
    for cmd in (norn.get_command(click.Context(norn), n) for n in norn.list_commands(click.Context(norn))):
        for p in cmd.params:
            if isinstance(p, GlobalOption) and cmd.name != "bench":
                assert (tuple(p.opts), p.help) == group[p.name]


def test_real_process_with_options_after(thread_hub: ThreadHub) -> None:
    """In a real process too: `norn emit TYPE --app A --url U --no-color`."""
    done = run_norn("emit", "a.b", "--app", "x", "--url", thread_hub.url, "--no-color")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == thread_hub.server.broker.last_id  # type: ignore[union-attr]
