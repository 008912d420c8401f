"""Shared event frames on every delivery path: live, filtered, replayed, and handed off without gap or duplicate."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from norn_cli.core.events import Filter, make_event
from norn_cli.hub.server import HubServer
from tests.conftest import TIMEOUT


async def publish(api: ClientConnection, events: list[dict[str, Any]]) -> list[str]:
    await api.send(json.dumps({"op": "publish", "events": events}))
    reply = json.loads(await api.recv())
    assert reply["ok"], reply
    ids: list[str] = reply["ids"]
    return ids


def ev(app: str, etype: str, k: int) -> dict[str, Any]:
    return {"type": etype, "appId": app, "payload": {"k": k}}


async def take(ws: ClientConnection, n: int) -> list[dict[str, Any]]:
    async with asyncio.timeout(TIMEOUT):
        return [json.loads(await ws.recv()) for _ in range(n)]


def test_event_frame_is_exact() -> None:
    """An event's frame is the text frame of exactly its envelope bytes."""
    e = make_event((1, 2), "a.b", "app", {"x": "y" * 300}, 1764250036123)
    assert e.frame[:2] == bytes((0x81, 126))
    assert e.frame[4:] == e.data
    assert json.loads(e.data)["id"] == "1-2"


async def test_filters_replay_and_handoff(hub: HubServer) -> None:
    """Filtered live delivery, then last=N and since=ID replays that continue live with nothing lost or repeated."""
    base = hub.url
    async with connect(base + "/api") as api, connect(base + "/ws?app=a&type=job.*") as only_a, connect(base + "/ws") as every:
        ids = await publish(api, [ev("a", "job.step", 0), ev("b", "job.step", 1), ev("a", "build.step", 2), ev("a", "job.done", 3)])
        got = await take(only_a, 2)
        assert [m["payload"]["k"] for m in got] == [0, 3]
        assert [m["id"] for m in got] == [ids[0], ids[3]]
        assert [m["payload"]["k"] for m in await take(every, 4)] == [0, 1, 2, 3]

        async with connect(base + "/ws?app=a&last=2") as last2, connect(base + f"/ws?since={ids[0]}") as since0:
            more = await publish(api, [ev("a", "x.y", 4)])
            assert [m["payload"]["k"] for m in await take(last2, 3)] == [2, 3, 4]
            got = await take(since0, 4)
            assert [m["id"] for m in got] == [*ids[1:], *more]
        assert [m["payload"]["k"] for m in await take(every, 1)] == [4]
    assert Filter(["a"], ["job.*"]).match("job.step", "a")
