"""Idempotent publish on the memory broker: keys, duplicates, batch replies, the window's bounds."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from conftest import TIMEOUT
from norn_cli.core.errors import EventError
from norn_cli.core.events import event_key
from norn_cli.hub.brokers.base import Duplicate, KeyWindow
from norn_cli.hub.brokers.memory import MemoryBroker
from norn_cli.hub.server import HubServer


def ev(n: int, key: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "test.event", "appId": "a", "payload": {"n": n}}
    if key is not None:
        out["key"] = key
    return out


async def ask(api: ClientConnection, req: dict[str, Any]) -> dict[str, Any]:
    await api.send(json.dumps(req))
    reply: dict[str, Any] = json.loads(await api.recv())
    return reply


@pytest.mark.parametrize(
    ("key", "ok"),
    [("k", True), ("x" * 128, True), ("a b:1/é", True), ("", False), ("x" * 129, False), ("a\nb", False), (7, False)],
)
def test_a_key_is_1_to_128_printable_characters(key: Any, ok: bool) -> None:
    """Keys outside 1-128 printable characters are refused with one sentence."""
    if ok:
        assert event_key({"key": key}) == key
    else:
        with pytest.raises(EventError, match="'key' must be"):
            event_key({"key": key})


def test_key_window_forgets_after_the_window_and_beyond_its_limit() -> None:
    """The window is bounded by time and by count."""
    w = KeyWindow(window=10, limit=3)
    w.add("a", "1-0", now=0)
    assert w.get("a", now=9.9) == "1-0"
    assert w.get("a", now=10) is None
    for i, k in enumerate("bcde"):
        w.add(k, f"{i}-1", now=1)
    assert len(w) == 3 and w.get("b", now=2) is None and w.get("e", now=2) == "3-1"
    w.add("f", "9-9", now=20)  # everything older than the window goes
    assert len(w) == 1


async def test_broker_publish_keyed_repeats_within_a_batch_and_across_calls() -> None:
    """A key repeated in one batch is published once; a later call with it is a Duplicate of the same id."""
    broker = MemoryBroker(100)
    items = [("t.k", "a", {"n": i}) for i in range(4)]
    out = await broker.publish_keyed(items, ["x", None, "x", "y"])
    assert isinstance(out[0], Duplicate) is False and out[2] == Duplicate(out[0].id)
    assert broker.retained == 3
    again = await broker.publish_keyed(items[:1], ["y"])
    assert again == [Duplicate(out[3].id)]
    assert broker.retained == 3


async def test_duplicates_publish_nothing_and_reply_with_the_original_ids(hub: HubServer) -> None:
    """Single and batch replies mark duplicates; subscribers get each keyed event once, without its key."""
    async with asyncio.timeout(TIMEOUT):
        async with connect(f"{hub.url}/ws") as sub, connect(f"{hub.url}/api") as api:
            first = await ask(api, {"op": "publish", "event": ev(1, "k1")})
            assert first == {"ok": True, "id": first["id"]}
            again = await ask(api, {"op": "publish", "event": ev(99, "k1")})
            assert again == {"ok": True, "id": first["id"], "duplicate": True}
            batch = await ask(api, {"op": "publish", "events": [ev(2, "k2"), ev(3, "k1"), ev(4), ev(5, "k2")]})
            ids = batch["ids"]
            assert batch == {"ok": True, "ids": ids, "duplicates": [1, 3]}
            assert ids[1] == first["id"] and ids[3] == ids[0]
            plain = await ask(api, {"op": "publish", "events": [ev(6), ev(7)]})
            assert set(plain) == {"ok", "ids"}
            got = [json.loads(await sub.recv()) for _ in range(5)]
    assert [g["payload"]["n"] for g in got] == [1, 2, 4, 6, 7]
    assert all("key" not in g for g in got)
    assert hub.hub.published == 5


async def test_a_bad_key_refuses_the_whole_batch(hub: HubServer) -> None:
    """An oversized key is bad_request naming its index, and nothing is published."""
    async with asyncio.timeout(TIMEOUT), connect(f"{hub.url}/api") as api:
        reply = await ask(api, {"op": "publish", "events": [ev(1, "ok"), ev(2, "x" * 200)]})
    assert reply["error"]["code"] == "bad_request"
    assert reply["error"]["message"].startswith("events[1]: event 'key' must be 1 to 128")
    assert hub.hub.published == 0


async def test_pipelined_keyed_and_plain_publishes_fold_and_keep_their_replies(hub: HubServer) -> None:
    """Pipelined requests mixing keys and none are folded into one call and answered each in order."""
    reqs = [{"op": "publish", "event": ev(i, f"p{i % 3}" if i % 2 else None)} for i in range(10)]
    async with asyncio.timeout(TIMEOUT), connect(f"{hub.url}/api") as api:
        for r in reqs:
            await api.send(json.dumps(r))
        replies = [json.loads(await api.recv()) for _ in reqs]
    dup = [i for i, r in enumerate(replies) if r.get("duplicate")]
    assert dup == [7, 9]  # keys p1, p0, p2 first at 1, 3, 5; p1 again at 7, p0 again at 9
    assert replies[7]["id"] == replies[1]["id"] and replies[9]["id"] == replies[3]["id"]
    assert hub.hub.published == 8


async def test_the_dedupe_window_is_the_brokers_setting() -> None:
    """A broker's dedupe_window sizes its key window."""
    broker = MemoryBroker(10)
    broker.dedupe_window = 5
    await broker.publish_keyed([("t.k", "a", {})], ["k"])
    assert broker._key_window is not None and broker._key_window.window == 5
