"""Errors that say how to fix: catalogue fields all at once with a command that works, typos, tokens, TLS and schemes."""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from conftest import ThreadHub
from test_serve_cli import _self_signed

from norn_cli.cli.main import norn
from norn_cli.hub.server import tls_context


def invoke(*args: str, **env: str | None) -> Result:
    clean: dict[str, str | None] = {k: None for k in os.environ if k.startswith("NORN_")} | {"NO_COLOR": None}
    return CliRunner().invoke(norn, list(args), env={**clean, **env}, catch_exceptions=False)


def test_every_missing_field_at_once_with_a_working_example(thread_hub: ThreadHub) -> None:
    """`emit deploy.completed --app A` names every missing field in one message; the example it prints works."""
    result = invoke("emit", "deploy.completed", "--app", "mail-agent", "--url", thread_hub.url)
    assert result.exit_code == 2
    assert result.stderr == (
        "norn: deploy.completed payload needs fields 'id', 'app', 'status', 'steps' and 'startedAt'; "
        "needs field 'ref' or 'commitSha' (a string)\n"
        "  for example: norn emit deploy.completed --app mail-agent -p id=d-1 -p app=mail-agent -p status=running "
        "-p 'steps=[]' -p startedAt=2025-01-01T12:00:00Z -p ref=main\n"
    )
    example = shlex.split(result.stderr.splitlines()[1].split("for example: ", 1)[1])
    assert example[:2] == ["norn", "emit"]
    again = invoke(*example[1:], "--url", thread_hub.url)
    assert again.exit_code == 0, again.output


def test_wrong_field_types_are_all_named_and_given_values_kept(thread_hub: ThreadHub) -> None:
    """Fields of the wrong JSON type are each named; the example keeps what was right."""
    result = invoke("emit", "deploy.step", "--app", "m", "-p", "step=1", "-p", "status=true", "-p", "note=hi", "--url", thread_hub.url)
    assert result.exit_code == 2
    assert result.stderr == (
        "norn: deploy.step payload field 'step' must be a string, got a number; field 'status' must be a string, got a boolean\n"
        "  for example: norn emit deploy.step --app m -p step=build -p status=running -p note=hi\n"
    )


def test_a_typo_of_a_catalogue_type_is_refused(thread_hub: ThreadHub) -> None:
    """deploy.complete (one letter short) is refused with "did you mean"; nothing reaches the hub."""
    result = invoke("emit", "deploy.complete", "--app", "m", "--url", thread_hub.url)
    assert result.exit_code == 2
    assert result.stderr == "norn: 'deploy.complete' is not a catalogue type: did you mean deploy.completed? (--force publishes deploy.complete as it is)\n"
    assert thread_hub.server.broker.last_id == ""  # type: ignore[union-attr]


@pytest.mark.parametrize("args", [["deploy.complete", "--force"], ["backup.completed"], ["deploy.rollout"]])
def test_force_or_own_types_publish(thread_hub: ThreadHub, args: list[str]) -> None:
    """--force publishes a near-miss; a type of another prefix, or far from any catalogue type, is the user's own."""
    result = invoke("emit", *args, "--app", "m", "--url", thread_hub.url)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == thread_hub.server.broker.last_id  # type: ignore[union-attr]


@pytest.fixture
def token_hub() -> Iterator[ThreadHub]:
    th = ThreadHub(history=100, token="s3cret").start()
    try:
        yield th
    finally:
        th.stop()


def test_missing_token_says_how_to_give_one(token_hub: ThreadHub) -> None:
    """No token: exit 4, naming --token and NORN_TOKEN."""
    result = invoke("emit", "a.b", "--app", "x", "--url", token_hub.url)
    assert result.exit_code == 4
    assert result.stderr == f"norn: the hub at {token_hub.url} needs a token: pass --token (or --token-file) or set NORN_TOKEN\n"


def test_wrong_token_is_refused_as_such(token_hub: ThreadHub) -> None:
    """A wrong token: exit 4, saying the hub refused this token."""
    result = invoke("emit", "a.b", "--app", "x", "--url", token_hub.url, "--token", "wrong")
    assert result.exit_code == 4
    assert result.stderr == f"norn: the hub at {token_hub.url} refused this token (HTTP 401); check --token / NORN_TOKEN\n"


@pytest.fixture
def tls_hub(tmp_path: Path) -> Iterator[tuple[ThreadHub, Path]]:
    certfile, keyfile = _self_signed(tmp_path)
    th = ThreadHub(history=100, ssl_context=tls_context(str(certfile), str(keyfile))).start()
    try:
        yield th, certfile
    finally:
        th.stop()


def test_self_signed_names_cafile(tls_hub: tuple[ThreadHub, Path]) -> None:
    """A certificate we cannot verify: exit 3, naming --cafile; with --cafile it works."""
    hub, certfile = tls_hub
    port = hub.server.port  # type: ignore[union-attr]
    url = f"wss://localhost:{port}"
    result = invoke("emit", "a.b", "--app", "x", "--url", url)
    assert result.exit_code == 3
    assert result.stderr.startswith(f"norn: cannot verify the TLS certificate of the hub at {url} (")
    assert result.stderr.endswith("); if a private CA signed it, pass --cafile CA.pem\n")
    assert invoke("emit", "a.b", "--app", "x", "--url", url, "--cafile", str(certfile)).exit_code == 0


def test_ws_to_a_tls_port_says_use_wss(tls_hub: tuple[ThreadHub, Path]) -> None:
    """ws:// (or http://) against a TLS hub: "this is a TLS port, use wss://"."""
    hub, _ = tls_hub
    url = f"ws://localhost:{hub.server.port}"  # type: ignore[union-attr]
    result = invoke("emit", "a.b", "--app", "x", "--url", url)
    assert result.exit_code == 3
    assert result.stderr == f"norn: cannot reach the hub at {url}: this is a TLS port, use wss://\n"


def test_wss_to_a_plain_port_says_use_ws(thread_hub: ThreadHub) -> None:
    """https:// against a plain hub: "this is not a TLS port, use ws://" (it was ConnectionResetError)."""
    url = thread_hub.url.replace("ws://", "wss://")
    result = invoke("emit", "a.b", "--app", "x", "--url", thread_hub.url.replace("ws://", "https://"))
    assert result.exit_code == 3
    assert result.stderr == f"norn: cannot reach the hub at {url}: this is not a TLS port, use ws://\n"
