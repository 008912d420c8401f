"""`norn emit`, `norn tail` and the global options through Click's CliRunner, against a hub in a thread."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from conftest import ThreadHub

from norn_cli import __version__
from norn_cli.cli.main import norn
from norn_cli.client.endpoint import Endpoint
from norn_cli.core.events import loads


def invoke(*args: str, input: str | bytes | None = None, **env: str | None) -> Result:
    """Run `norn ARGS` in-process with a clean NORN_* environment (None unsets a variable)."""
    clean = {"NORN_URL": None, "NORN_TOKEN": None, "NO_COLOR": None}
    runner = CliRunner()
    return runner.invoke(norn, list(args), input=input, env={**clean, **env}, catch_exceptions=False)


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.fixture
def token_hub() -> Iterator[ThreadHub]:
    """A hub that wants a bearer token on /api."""
    th = ThreadHub(history=100, token="s3cret").start()
    try:
        yield th
    finally:
        th.stop()


# ------------------------------------------------------------------ global options


def test_version() -> None:
    """--version prints the package version."""
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout == f"norn, version {__version__}\n"


def test_help_lists_exit_codes_and_commands_carry_examples() -> None:
    """The group lists the exit codes; emit and tail show an example."""
    assert "Exit codes:" in invoke("--help").stdout
    for command in ("emit", "tail"):
        out = invoke(command, "--help").stdout
        # Not merely "norn COMMAND" anywhere: the usage line always says that.
        assert re.search(rf"^  Examples:\n    norn {command} ", out, re.MULTILINE), out


@pytest.mark.parametrize(
    ("url", "base", "ws", "api"),
    [
        ("ws://hub:8800", "ws://hub:8800", "ws://hub:8800/ws", "ws://hub:8800/api"),
        ("http://hub:8800/", "ws://hub:8800", "ws://hub:8800/ws", "ws://hub:8800/api"),
        ("https://norn.example.com/norn/api", "wss://norn.example.com/norn", "wss://norn.example.com/norn/ws", "wss://norn.example.com/norn/api"),
        ("wss://h/x/ws", "wss://h/x", "wss://h/x/ws", "wss://h/x/api"),
        ("localhost:9", "ws://localhost:9", "ws://localhost:9/ws", "ws://localhost:9/api"),
    ],
)
def test_url_forms_derive_ws_and_api(url: str, base: str, ws: str, api: str) -> None:
    """Any of ws(s)://, http(s)://, with or without a path, names the same hub."""
    ep = Endpoint.parse(url)
    assert (ep.base, ep.ws_url(), ep.api_url) == (base, ws, api)


def test_bad_url_is_a_usage_error() -> None:
    """A URL that cannot name a hub is exit 2, naming --url."""
    result = invoke("--url", "ftp://hub", "emit", "a.b", "--app", "x")
    assert result.exit_code == 2
    assert "Invalid value for '--url': bad hub URL 'ftp://hub'" in result.stderr


@pytest.mark.parametrize("form", ["{url}", "{http}/", "{url}/api", "{http}/ws"])
def test_emit_reaches_the_hub_by_any_url_form(thread_hub: ThreadHub, form: str) -> None:
    """--url accepts the hub's address with http:// and with a path."""
    url = form.format(url=thread_hub.url, http=thread_hub.url.replace("ws://", "http://"))
    result = invoke("--url", url, "emit", "a.b", "--app", "x")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == thread_hub.server.broker.last_id  # type: ignore[union-attr]


def test_norn_url_from_the_environment(thread_hub: ThreadHub) -> None:
    """NORN_URL stands in for --url."""
    result = invoke("emit", "a.b", "--app", "x", NORN_URL=thread_hub.url)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == thread_hub.server.broker.last_id  # type: ignore[union-attr]


def test_cafile_must_exist() -> None:
    """--cafile names a readable file."""
    result = invoke("--cafile", "/nonexistent/ca.pem", "tail")
    assert result.exit_code == 2
    assert "'/nonexistent/ca.pem' does not exist" in result.stderr


# `norn tail` of one deploy.step in a colour terminal, the clock masked: the type blue, the status yellow.
COLOURED = (
    "\x1b[2mHH:MM:SS.mmm\x1b[0m \x1b[1mmail-agent    \x1b[0m \x1b[34mdeploy.step       \x1b[0m "
    "\x1b[1mbuild\x1b[0m \x1b[33mrunning\x1b[0m\n"
)
# ...and without colour: bold and dim are not colours, so they stay (no-color.org).
UNCOLOURED = "\x1b[2mHH:MM:SS.mmm\x1b[0m \x1b[1mmail-agent    \x1b[0m deploy.step        \x1b[1mbuild\x1b[0m running\n"


@pytest.fixture
def step_hub(thread_hub: ThreadHub) -> str:
    """The URL of a hub holding one deploy.step."""
    result = invoke("--url", thread_hub.url, "emit", "deploy.step", "--app", "mail-agent", "-p", "step=build", "-p", "status=running")
    assert result.exit_code == 0, result.output
    return thread_hub.url


def tail_in_a_terminal(url: str, *options: str, **env: str | None) -> str:
    """`norn [OPTIONS] tail --last 1` with stdout taken for a colour terminal (FORCE_COLOR, as rich reads it)."""
    terminal = {"FORCE_COLOR": "1", "TERM": "xterm", "COLORTERM": None, "TTY_COMPATIBLE": None}
    result = invoke("--url", url, *options, "tail", "--last", "1", "--count", "1", **terminal, **env)
    assert result.exit_code == 0, result.output
    return re.sub(r"^\x1b\[2m\d\d:\d\d:\d\d\.\d{3}", "\x1b[2mHH:MM:SS.mmm", result.stdout)


def test_tail_colours_a_terminal(step_hub: str) -> None:
    """In a terminal, tail colours the type and the status; an empty NO_COLOR is no request."""
    assert tail_in_a_terminal(step_hub) == COLOURED
    assert tail_in_a_terminal(step_hub, NO_COLOR="") == COLOURED


@pytest.mark.parametrize("value", ["1", "0", "false", "anything"])
def test_no_color_accepts_any_non_empty_value(step_hub: str, value: str) -> None:
    """NO_COLOR with any non-empty value, not only Click's true booleans, takes the colours out of tail's output."""
    assert tail_in_a_terminal(step_hub, NO_COLOR=value) == UNCOLOURED


def test_no_color_flag(step_hub: str) -> None:
    """--no-color takes the colours out of tail's output too."""
    assert tail_in_a_terminal(step_hub, "--no-color") == UNCOLOURED


def test_verbose_tells_what_it_did(thread_hub: ThreadHub) -> None:
    """-v adds notices on stderr, never on stdout."""
    result = invoke("-v", "--url", thread_hub.url, "emit", "--file", "-", input='{"type":"a.b","appId":"x"}\n')
    assert result.exit_code == 0
    # (the in-process hub's own -v logging shares stderr here; a real `norn` has only its own)
    assert f"norn: published 1 event to {thread_hub.url}" in result.stderr.splitlines()
    assert result.stdout.count("\n") == 1


# ------------------------------------------------------------------ tokens


def test_emit_without_token_is_unauthorised(token_hub: ThreadHub) -> None:
    """A hub that wants a token refuses us: exit 4, one sentence."""
    result = invoke("--url", token_hub.url, "emit", "a.b", "--app", "x")
    assert result.exit_code == 4
    assert result.stderr == f"norn: the hub at {token_hub.url} needs a token: pass --token (or --token-file) or set NORN_TOKEN\n"
    assert result.stdout == ""


def test_emit_with_token_flag_or_env(token_hub: ThreadHub) -> None:
    """--token and NORN_TOKEN both carry the bearer token."""
    assert invoke("--url", token_hub.url, "--token", "s3cret", "emit", "a.b", "--app", "x").exit_code == 0
    assert invoke("--url", token_hub.url, "emit", "a.b", "--app", "x", NORN_TOKEN="s3cret").exit_code == 0
    assert invoke("--url", token_hub.url, "--token", "wrong", "emit", "a.b", "--app", "x").exit_code == 4


# ------------------------------------------------------------------ emit


def test_emit_prints_the_assigned_id(thread_hub: ThreadHub) -> None:
    """The id on stdout, nothing else; the hub has the event with the flags' payload."""
    result = invoke(
        "--url", thread_hub.url, "emit", "deploy.step", "--app", "mail-agent",
        "-p", "step=build", "-p", "status=building", "-p", "durationMs=1200", "-p", "meta.attempt=2",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    event_id = result.stdout.strip()
    assert result.stdout == event_id + "\n" and result.stderr == ""
    srv = thread_hub.server
    assert srv is not None
    assert srv.broker.last_id == event_id


def test_emit_json_prints_the_reply(thread_hub: ThreadHub) -> None:
    """--json prints the hub's reply as one JSON object."""
    result = invoke("--url", thread_hub.url, "emit", "backup.completed", "--app", "db", "--data", '{"sizeMb": 120}', "--json")
    assert result.exit_code == 0, result.output
    reply = loads(result.stdout)
    assert reply["ok"] is True and isinstance(reply["id"], str)


def test_emit_file_from_stdin_prints_ids_in_order(thread_hub: ThreadHub) -> None:
    """NDJSON on stdin: one id per event, in input order; --json: one reply per event."""
    lines = "".join(f'{{"type":"n.item","appId":"x","payload":{{"n":{i}}}}}\n' for i in range(5))
    result = invoke("--url", thread_hub.url, "emit", "--file", "-", input=lines)
    assert result.exit_code == 0, result.output
    ids = result.stdout.split()
    assert len(ids) == 5 and ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))
    result = invoke("--url", thread_hub.url, "emit", "--file", "-", "--json", input=lines)
    assert [loads(line)["ok"] for line in result.stdout.splitlines()] == [True] * 5


def test_emit_empty_input_publishes_nothing(thread_hub: ThreadHub) -> None:
    """No events in, nothing out, success."""
    result = invoke("--url", thread_hub.url, "emit", "--file", "-", input="\n\n")
    assert (result.exit_code, result.stdout) == (0, "")


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["emit", "a.b"], None, "Error: give TYPE and --app (or --file PATH, '-' for stdin)"),
        (["emit", "--app", "x"], None, "Error: give TYPE and --app"),
        (["emit", "--file", "-", "-p", "a=1"], "", "Error: --file takes whole events; use --data and -p with TYPE instead"),
        (["emit", "Not A Type", "--app", "x"], None, "norn: event type 'Not A Type' is not a dotted lower-case name like 'deploy.step'"),
        (["emit", "deploy.step", "--app", "x", "-p", "step=build"], None, "norn: deploy.step payload needs field 'status'"),
        (["emit", "a.b", "--app", "bad app"], None, "norn: event appId 'bad app' is not a short slug"),
        (["emit", "a.b", "--app", "x", "--data", "{"], None, "norn: --data is not valid JSON"),
        (["emit", "a.b", "--app", "x", "-p", "novalue"], None, "norn: -p 'novalue': expected KEY=VALUE"),
        (["emit", "--file", "-"], '{"type":"a.b","appId":"x"}\n{"type":"a.b","appId":"x","payload":[]}\n', "norn: stdin line 2: event 'payload' must be a JSON object, got an array; nothing was sent"),
        (["emit", "--file", "-"], '{"type":"a.b","appId":"x"}\n\xff\n', "norn: stdin line 2: not valid JSON"),
    ],
)
def test_emit_bad_input_is_exit_2_and_sends_nothing(thread_hub: ThreadHub, args: list[str], stdin: str | None, message: str) -> None:
    """Bad input: exit 2, one clear sentence on stderr, nothing published."""
    srv = thread_hub.server
    assert srv is not None
    before = srv.hub.published
    result = invoke("--url", thread_hub.url, *args, input=stdin)
    assert result.exit_code == 2
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert srv.hub.published == before


def test_emit_file_that_cannot_be_read_is_exit_2(tmp_path: Path) -> None:
    """A missing --file is a usage error naming it."""
    result = invoke("--url", "ws://127.0.0.1:1", "emit", "--file", str(tmp_path / "nope.ndjson"))
    assert result.exit_code == 2
    assert f"Invalid value for '--file': cannot read {tmp_path / 'nope.ndjson'}: No such file or directory" in result.stderr


def test_emit_to_a_dead_hub_is_exit_3() -> None:
    """No hub: exit 3 and one sentence."""
    port = free_port()
    result = invoke("--url", f"ws://127.0.0.1:{port}", "emit", "a.b", "--app", "x")
    assert result.exit_code == 3
    assert result.stderr == f"norn: cannot reach the hub at ws://127.0.0.1:{port}: connection refused\n"


# ------------------------------------------------------------------ tail (parsing)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["tail", "--since", "yesterday"], "Invalid value for '--since': 'yesterday' is not an event id"),
        (["tail", "--last", "-1"], "Invalid value for '--last'"),
        (["tail", "--count", "0"], "Invalid value for '--count'"),
        (["tail", "--timeout", "0"], "Invalid value for '--timeout'"),
        (["tail", "--timeout", "10x"], "Invalid value for '--timeout': '10x' is not a duration: use seconds (30, 1.5) or units d, h, m, s, ms (10s, 2m, 1h30m, 250ms, 7d)"),
        (["tail", "--json", "--format", "{type}"], "--json and --format are alternatives"),
        (["tail", "--format", "{typo}"], "Invalid value for '--format': unknown field {typo}"),
    ],
)
def test_tail_usage_errors(args: list[str], message: str) -> None:
    """Bad tail flags are exit 2 before any connection."""
    result = invoke("--url", f"ws://127.0.0.1:{free_port()}", *args)
    assert result.exit_code == 2
    assert message in result.stderr


def test_tail_replays_with_last_and_count(thread_hub: ThreadHub) -> None:
    """--last N replays retained events; --count stops after N; lines are plain when captured."""
    for step in ("build", "test"):
        invoke("--url", thread_hub.url, "emit", "deploy.step", "--app", "mail-agent", "-p", f"step={step}", "-p", "status=running")
    result = invoke("--url", thread_hub.url, "tail", "--last", "2", "--count", "2")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split()[1:] for line in lines] == [
        ["mail-agent", "deploy.step", "build", "running"],
        ["mail-agent", "deploy.step", "test", "running"],
    ]
    assert "\x1b" not in result.stdout


def test_tail_format_and_filters(thread_hub: ThreadHub) -> None:
    """--app and --type are applied by the hub; --format renders a template, missing keys empty."""
    invoke("--url", thread_hub.url, "emit", "deploy.step", "--app", "a", "-p", "step=build", "-p", "status=running")
    invoke("--url", thread_hub.url, "emit", "forge.queued", "--app", "b", "-p", "app=b")
    invoke("--url", thread_hub.url, "emit", "deploy.step", "--app", "b", "-p", "step=ship", "-p", "status=running")
    result = invoke(
        "--url", thread_hub.url, "tail", "--last", "10", "--count", "1",
        "--app", "b", "--type", "deploy.*", "--format", "{appId}|{type}|{payload[step]}|{payload[nope]}|",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout == "b|deploy.step|ship||\n"


def test_tail_timeout_takes_a_duration(thread_hub: ThreadHub) -> None:
    """--timeout 250ms on a quiet hub gives up with exit 5, like --timeout 0.25."""
    result = invoke("--url", thread_hub.url, "tail", "--timeout", "250ms")
    assert result.exit_code == 5, result.output
