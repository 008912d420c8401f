"""After a restart on SQLite: runs cut off by the restart end as failed, runs are found, app statuses are known."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from test_health import FakeApp, fake_app  # noqa: F401 - the fixture

from conftest import TIMEOUT
from helpers import publish, recv_json, recv_n, request, ws
from norn_cli.client.endpoint import Endpoint
from norn_cli.client.watch import watch
from norn_cli.core.config import parse_config
from norn_cli.core.events import parse_id
from norn_cli.hub.brokers.sqlite import SqliteBroker
from norn_cli.hub.pipeline.runner import RESTARTED, Runner, attach_runner
from norn_cli.hub.server import HubServer
from norn_cli.render.pipeline_view import LinesView

TOML = """
[apps.web]
[[apps.web.deploy]]
name = "build"
run = "true"
[[apps.web.deploy]]
name = "test"
run = "true"
"""
STEPS = [{"name": "build", "status": "pending"}, {"name": "test", "status": "pending"}]


def ev(etype: str, app: str, payload: dict[str, Any]) -> dict[str, Any]:
    return {"type": etype, "appId": app, "payload": payload}


def queued(run_id: str) -> dict[str, Any]:
    return ev("deploy.queued", "web", {"id": run_id, "runId": run_id, "app": "web", "ref": "abc", "status": "queued",
                                       "steps": STEPS, "startedAt": "2026-11-27T13:27:16.123Z"})  # fmt: skip


def step(run_id: str, name: str, status: str, **extra: Any) -> dict[str, Any]:
    return ev("deploy.step", "web", {"step": name, "status": status, "runId": run_id, **extra})


async def serve(path: Path, toml: str = TOML) -> tuple[HubServer, Runner]:
    """A hub on `path` with a runner attached before it starts, as `norn serve` does."""
    srv = HubServer(host="127.0.0.1", port=0, broker=SqliteBroker(path))
    runner = attach_runner(srv, parse_config(toml, path=path.parent / "norn.toml"))
    await srv.start()
    runner.start()
    return srv, runner


async def events_of(srv: HubServer) -> list[dict[str, Any]]:
    """Every retained event, replayed from disk."""
    async with ws(srv.port, f"/ws?last={srv.broker.retained}") as sub:
        return await recv_n(sub, srv.broker.retained)


@pytest.fixture
async def history(tmp_path: Path) -> AsyncIterator[Path]:
    """A database holding what a hub's runner had published when the hub died:
    run r1 cut off in its second step, run r2 (forge) finished, and a deploy of others (no runId)."""
    path = tmp_path / "events.db"
    srv = HubServer(host="127.0.0.1", port=0, broker=SqliteBroker(path))
    await srv.start()
    async with ws(srv.port, "/api") as api:
        await publish(
            api,
            ev("forge.queued", "web", {"app": "web", "runId": "r2", "steps": [{"name": "setup", "status": "pending"}]}),
            ev("forge.completed", "web", {"runId": "r2"}),
            queued("r1"),
            step("r1", "build", "running"),
            step("r1", "build", "completed", durationMs=1200),
            step("r1", "test", "running"),
            ev("deploy.queued", "api", {"id": "theirs", "app": "api", "ref": "x", "status": "queued", "steps": [],
                                        "startedAt": "t"}),  # fmt: skip
        )
    await srv.close()
    yield path


async def test_a_run_cut_off_by_a_restart_ends_failed(history: Path) -> None:
    """On startup, before serving, the run left unfinished gets deploy.failed `hub restarted`, naming the
    step it was in; finished runs and runs published by others are left alone, and a second restart adds nothing."""
    srv, runner = await serve(history)
    try:
        evs = await events_of(srv)
        assert [e["type"] for e in evs][-2:] == ["deploy.queued", "deploy.failed"]
        failed = evs[-1]["payload"]
        assert failed["runId"] == "r1" and failed["id"] == "r1" and failed["status"] == "failed"
        assert failed["error"] == RESTARTED and failed["step"] == "test"
        assert failed["steps"] == [{"name": "build", "status": "completed", "durationMs": 1200},
                                   {"name": "test", "status": "failed"}]  # fmt: skip
        assert failed["ref"] == "abc" and failed["startedAt"] == "2026-11-27T13:27:16.123Z"
        async with ws(srv.port, "/api") as api:
            info = await request(api, {"op": "runinfo", "runId": "r1"})
            assert info["ok"] and info["status"] == "failed" and info["kind"] == "deploy"
    finally:
        await srv.close()
    srv, runner = await serve(history)
    try:
        assert [e["type"] for e in await events_of(srv)].count("deploy.failed") == 1
    finally:
        await srv.close()


async def test_norn_watch_finds_a_run_from_before_the_restart(history: Path) -> None:
    """`norn watch r1` (the client's watch) replays the run from disk to its end, as failed."""
    srv, _ = await serve(history)
    try:
        out, err = io.StringIO(), io.StringIO()
        view = LinesView(Console(file=out, width=100), Console(file=err, width=100))
        async with asyncio.timeout(TIMEOUT):
            state = await watch(Endpoint.parse(srv.url), "r1", view)
        assert state.done and not state.ok and state.error == RESTARTED
        assert state.steps["build"].phase == "done" and state.steps["test"].phase == "failed"
        async with ws(srv.port, "/api") as api:
            info = await request(api, {"op": "runinfo", "app": "web", "kind": "forge"})
            assert info["runId"] == "r2" and parse_id(info["since"]) < parse_id(info["id"])
    finally:
        await srv.close()
    # Once more, in a hub that did not end the run itself: found in the history only.
    srv, _ = await serve(history)
    try:
        async with ws(srv.port, "/api") as api:
            info = await request(api, {"op": "runinfo", "runId": "r1"})
        assert info["status"] == "unknown" and parse_id(info["since"]) < parse_id(info["id"])
        view = LinesView(Console(file=io.StringIO(), width=100), Console(file=io.StringIO(), width=100))
        async with asyncio.timeout(TIMEOUT):
            state = await watch(Endpoint.parse(srv.url), "r1", view)
        assert state.done and state.error == RESTARTED and not state.gap
    finally:
        await srv.close()


async def test_health_status_is_known_across_a_restart(tmp_path: Path, fake_app: FakeApp) -> None:
    """The last app.status is on disk; the restarted checker compares with it, so an unchanged app is
    not announced again, and a change is."""
    path = tmp_path / "events.db"
    toml = f'[apps.web]\nhealth = "{fake_app.url}"\nhealth_interval = 0.05\n'
    srv, _ = await serve(path, toml)
    try:
        async with ws(srv.port, "/ws?type=app.status&last=1") as sub:
            first = await recv_json(sub)
        assert first["payload"]["healthy"] is True
    finally:
        await srv.close()
    fake_app.requests = 0
    srv, runner = await serve(path, toml)
    try:
        async with ws(srv.port, "/ws?type=app.status&last=1") as sub:
            assert await recv_json(sub) == first  # known at once, from disk
            async with asyncio.timeout(TIMEOUT):
                await fake_app.reached(3)  # two checks have been answered and judged
            assert srv.hub.published == 0  # the same health: nothing new to say
            fake_app.code = 503
            changed = await recv_json(sub)
        assert changed["payload"]["healthy"] is False and changed["payload"]["statusCode"] == 503
    finally:
        await srv.close()
