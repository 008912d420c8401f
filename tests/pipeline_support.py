"""Helpers for the pipeline tests: a runner on a real hub, a subscriber that awaits events."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from conftest import ROOT, TIMEOUT, ThreadHub
from websockets.asyncio.client import ClientConnection, connect

from norn_cli.core.config import parse_config
from norn_cli.hub.pipeline.runner import Runner, attach_runner
from norn_cli.hub.server import HubServer

Envelope = dict[str, Any]


def runner_on(srv: HubServer, toml: str, workdir: Path, **options: Any) -> Runner:
    """A runner for the apps of `toml` (relative workdirs from `workdir`), attached and started."""
    runner = attach_runner(srv, parse_config(toml, path=workdir / "norn.toml"), **options)
    runner.start()
    return runner


async def api(srv: HubServer, request: dict[str, Any]) -> dict[str, Any]:
    """One /api request and its reply."""
    async with connect(srv.url + "/api") as ws:
        await ws.send(json.dumps(request))
        reply: dict[str, Any] = json.loads(await ws.recv())
        return reply


class Events:
    """A /ws subscriber whose frames the test awaits (never sleeps for)."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.seen: list[Envelope] = []

    async def until(self, done: Callable[[Envelope], bool]) -> list[Envelope]:
        """Frames up to and including the first one for which `done` is true."""
        out: list[Envelope] = []
        async with asyncio.timeout(TIMEOUT):
            while True:
                env = json.loads(await self.ws.recv())
                self.seen.append(env)
                out.append(env)
                if done(env):
                    return out

    async def run_end(self, kind: str = "deploy") -> list[Envelope]:
        return await self.until(lambda e: e["type"] in (f"{kind}.completed", f"{kind}.failed"))


@asynccontextmanager
async def subscribed(srv: HubServer, query: str = "") -> AsyncIterator[Events]:
    """Subscribed to /ws before the block starts (the hub joins us before the handshake ends)."""
    async with connect(f"{srv.url}/ws{query}") as ws:
        yield Events(ws)


def milestones(events: list[Envelope]) -> list[tuple[str, ...]]:
    """The events without output lines: (type,) or (type, step, status)."""
    out: list[tuple[str, ...]] = []
    for env in events:
        p = env["payload"]
        if env["type"].endswith(".step"):
            if "output" not in p:
                out.append((env["type"], p["step"], p["status"]))
        else:
            out.append((env["type"],))
    return out


def output_of(events: list[Envelope], step: str) -> list[str]:
    """All output lines one step published, in order."""
    lines: list[str] = []
    for env in events:
        p = env["payload"]
        if env["type"].endswith(".step") and p.get("step") == step and "output" in p:
            lines.extend(p["output"].split("\n"))
    return lines


async def wait_dead(pid: int) -> None:
    """Wait until process `pid` has ended (a pidfd turns readable), under the test timeout."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    ended = loop.create_future()
    loop.add_reader(fd, lambda: ended.done() or ended.set_result(None))
    try:
        async with asyncio.timeout(TIMEOUT):
            await ended
    finally:
        loop.remove_reader(fd)
        os.close(fd)


# ---------------------------------------------------------------- CLI side


@contextmanager
def runner_hub(toml: str, workdir: Path, **options: Any) -> Iterator[ThreadHub]:
    """A hub in a thread with a runner for `toml`'s apps; its loop is closed afterwards."""
    th = ThreadHub(history=1000).start()
    try:
        assert th.server is not None
        server = th.server

        async def attach() -> None:
            runner_on(server, toml, workdir, **options)

        th.call(attach())
        yield th
    finally:
        th.stop()


__all__ = [
    "ROOT", "TIMEOUT", "Events", "api", "milestones", "output_of", "runner_hub",
    "runner_on", "subscribed", "wait_dead",
]  # fmt: skip
