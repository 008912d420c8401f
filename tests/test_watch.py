"""Following a run: which events belong to it, and how the view ends when the hub goes or the user leaves."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from typing import Any

import pytest
from conftest import TIMEOUT
from rich.console import Console
from test_run_state import T0, deployment, env

from norn_cli.core.errors import HubUnreachable
from norn_cli.render.pipeline_view import LinesView
from norn_cli.client.watch import Target, show_run

QUEUED = env("deploy.queued", deployment("queued", [{"name": "build", "status": "pending"}]))
RUNNING = env("deploy.step", {"step": "build", "status": "running", "runId": "r1"}, T0 + 1)


def lines_view() -> tuple[LinesView, io.StringIO, io.StringIO]:
    out, err = io.StringIO(), io.StringIO()
    return LinesView(Console(file=out, width=80), Console(file=err, width=80), clock=lambda: T0 + 2), out, err


def test_belongs() -> None:
    """A runner's run is matched by runId; someone else's by kind, from its queued event on."""
    mine = Target(app="web", kind="deploy", run_id="r1", queued_id="5-0")
    assert mine.belongs(RUNNING) and not mine.belongs({**RUNNING, "payload": {"step": "build", "runId": "r2"}})
    theirs = Target(app="web", kind="deploy", run_id=None, queued_id="5-0")
    step = {"type": "deploy.step", "appId": "web", "payload": {"step": "b", "status": "building"}}
    assert theirs.belongs({**step, "id": "5-1"}) and not theirs.belongs({**step, "id": "4-9"})
    assert not theirs.belongs({**step, "type": "forge.step", "id": "6-0"})
    assert theirs.ends({"type": "deploy.failed"}) and not theirs.ends({"type": "forge.failed"})
    assert (mine.reattach, theirs.reattach) == ("norn watch r1", "norn deploy web --attach")


async def test_hub_lost_mid_run() -> None:
    """When the hub is lost for good the view shows what it had and the error goes up (exit 3)."""

    async def events() -> AsyncIterator[dict[str, Any]]:
        yield QUEUED
        yield RUNNING
        raise HubUnreachable("hub lost")

    view, out, _ = lines_view()
    with pytest.raises(HubUnreachable):
        await show_run(events(), view, detach_hint="re-attach")
    assert out.getvalue().splitlines() == ["deploy web @ abc  run r1: build", "build: running"]
    assert not view.state.done


async def test_interrupt_says_how_to_reattach() -> None:
    """Cancelled (Ctrl-C) while following: the hint goes to stderr and the cancellation goes on."""
    applied = asyncio.Event()

    async def events() -> AsyncIterator[dict[str, Any]]:
        yield QUEUED
        applied.set()
        await asyncio.Event().wait()  # the run goes on; nothing more arrives
        yield RUNNING

    view, _, err = lines_view()
    task = asyncio.create_task(show_run(events(), view, detach_hint="Re-attach with: norn watch r1"))
    async with asyncio.timeout(TIMEOUT):
        await applied.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert err.getvalue() == "Re-attach with: norn watch r1\n"
