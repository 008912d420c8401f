"""The /api handling without a socket: requests in, replies out, events fanned out by the hub itself."""

from __future__ import annotations

import asyncio
import json
from collections import deque

from norn_cli.core.events import Filter
from norn_cli.hub.api import Api
from norn_cli.hub.brokers.memory import MemoryBroker
from norn_cli.hub.fanout import Hub
from test_hub import Sink


def request(op: str, **fields: object) -> bytes:
    return json.dumps({"op": op, **fields}).encode()


async def test_replies_in_order_and_the_hub_flushes_its_own_writes() -> None:
    """A burst of requests gets one reply each, in order; subscribers get the events with no flush by the caller."""
    hub = Hub(MemoryBroker(100))
    await hub.start()
    sink = Sink()
    hub.join(hub.add(sink, Filter()))
    api = Api(hub, lambda: {"ok": True, "status": "here"}, ops={})
    ev = {"type": "backup.completed", "appId": "db", "payload": {"n": 1}}
    replies = await api.handle_run(deque([
        request("publish", event=ev), b"[]", request("status"), request("nope"),
        request("publish", events=[ev, {**ev, "payload": {"n": 2}}]), ValueError("requests are JSON text frames, not binary"),
    ]))  # fmt: skip
    assert [r["ok"] for r in replies] == [True, False, True, False, True, False]
    assert replies[1]["error"] == {"code": "bad_request", "message": 'request must be a JSON object like {"op": "publish", ...}'}
    assert replies[2] == {"ok": True, "status": "here"}
    assert replies[3]["error"] == {"code": "not_found", "message": "unknown op 'nope' (known: publish, status)"}
    assert replies[5]["error"] == {"code": "bad_request", "message": "requests are JSON text frames, not binary"}
    assert sink.chunks == []  # written by the hub's own flush, on the next loop turn
    await asyncio.sleep(0)
    assert [e["payload"]["n"] for e in sink.events()] == [1, 1, 2]
    assert [e["id"] for e in sink.events()] == [replies[0]["id"], *replies[4]["ids"]]
    assert api.op_counts == {"publish": 2, "invalid": 2, "status": 1, "unknown": 1}
