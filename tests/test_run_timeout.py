"""Waiting for a run is bounded: `--timeout` exits 5 with the command to re-attach; a quiet view says what it waits for."""

from __future__ import annotations

import asyncio
import re
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import TIMEOUT, norn_argv, norn_env
from pipeline_support import runner_hub

from norn_cli.client.watch import show_run
from norn_cli.core.errors import TimedOut
from norn_cli.core.run_state import RunState

APPS = """
[apps.slow]
[[apps.slow.deploy]]
name = "wait"
run = "echo waiting; sleep 30"
"""


@pytest.fixture
def hub_url(tmp_path: Path) -> Iterator[str]:
    with runner_hub(APPS, tmp_path, kill_grace=1.0) as th:
        yield th.url


def test_deploy_timeout_exits_5_naming_norn_watch(hub_url: str) -> None:
    """`norn deploy --timeout 1s` on a run that goes on: exit 5, one line with `norn watch RUN_ID`; watch times out alike."""
    result = subprocess.run(
        norn_argv("--url", hub_url, "deploy", "slow", "--timeout", "1s"),
        capture_output=True, text=True, timeout=TIMEOUT * 3, env=norn_env(),
    )  # fmt: skip
    assert result.returncode == 5, result.stderr
    m = re.fullmatch(
        r"norn: no end of the deploy within 1 s; it goes on at the hub; re-attach with: norn watch ([0-9a-f]{12})\n",
        result.stderr,
    )
    assert m, result.stderr
    watched = subprocess.run(
        norn_argv("--url", hub_url, "watch", m.group(1), "--timeout", "250ms", "--json"),
        capture_output=True, text=True, timeout=TIMEOUT * 3, env=norn_env(),
    )  # fmt: skip
    assert watched.returncode == 5 and "re-attach with: norn watch " + m.group(1) in watched.stderr
    assert watched.stdout.splitlines()[0].startswith('{"type":"deploy.queued"')


class NoticeView:
    """A RunView that records notices and lets the test await the first one."""

    live = False

    def __init__(self) -> None:
        self.state = RunState(kind="deploy")
        self.notices: list[str] = []
        self.noticed = asyncio.Event()

    def start(self) -> None: ...
    def refresh(self) -> None: ...
    def stop(self) -> None: ...
    def detached(self, hint: str | None) -> None: ...

    def apply(self, env: dict[str, Any]) -> None:
        self.state.apply(env)

    def notice(self, text: str) -> None:
        self.notices.append(text)
        self.noticed.set()


async def test_a_quiet_run_says_what_it_is_waiting_for() -> None:
    """After `quiet_after` seconds without events the view gets a notice naming the running step."""
    view = NoticeView()

    async def events() -> AsyncIterator[dict[str, Any]]:
        yield {"type": "deploy.step", "appId": "a", "payload": {"step": "build", "status": "running"}, "id": "1-0"}
        await view.noticed.wait()
        yield {"type": "deploy.completed", "appId": "a", "payload": {"app": "a", "ref": "x", "status": "completed"}, "id": "2-0"}

    async with asyncio.timeout(TIMEOUT):
        state = await show_run(events(), view, detach_hint=None, quiet_after=0.2)
    assert state.outcome == "completed"
    assert len(view.notices) == 1
    assert re.fullmatch(r"nothing for [\d.]+ s; still waiting for step build of the deploy to finish \(no output from it lately\)", view.notices[0])


async def test_show_run_timeout_raises_timed_out() -> None:
    """A deadline that passes raises TimedOut (exit 5) with the re-attach command from the hint."""
    view = NoticeView()

    async def never() -> AsyncIterator[dict[str, Any]]:
        await asyncio.Event().wait()
        yield {}

    with pytest.raises(TimedOut, match=r"re-attach with: norn watch abc$"):
        await show_run(never(), view, detach_hint="detached; the deploy goes on at the hub. Re-attach with: norn watch abc", timeout=0.1)
