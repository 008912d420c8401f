"""The client library against a real hub: reconnecting, giving up, clear errors."""

from __future__ import annotations

import asyncio

import pytest

from conftest import TIMEOUT
from helpers import event, publish, wait_members, ws
from norn_cli.hub.brokers.memory import MemoryBroker
from norn_cli.client.endpoint import Endpoint
from norn_cli.client.connect import ConnectionState, subscribe
from norn_cli.core.errors import HubUnreachable
from norn_cli.hub.server import HubServer


async def test_subscription_gives_up_when_the_hub_stays_away() -> None:
    """With give_up_after, a lost hub that does not come back ends the stream with HubUnreachable."""
    srv = HubServer(port=0)
    await srv.start()
    states: list[ConnectionState] = []
    stream = subscribe(Endpoint.parse(srv.url), on_state=states.append, give_up_after=0.3, backoff=(0.05, 0.1))
    async with ws(srv.port, "/api") as api:
        first = asyncio.ensure_future(stream.__anext__())
        await wait_members(srv, 1)
        await publish(api, event(n=1))
        assert (await asyncio.wait_for(first, TIMEOUT)).envelope["payload"] == {"n": 1}
    await srv.close()
    with pytest.raises(HubUnreachable) as info:
        async with asyncio.timeout(TIMEOUT):
            await stream.__anext__()
    assert info.value.message.endswith("gave up after 0.3s")
    hub = str(Endpoint.parse(srv.url))
    assert states[0] == ConnectionState("lost", hub, "it is shutting down")
    retries = states[1:]
    assert retries and [s.attempt for s in retries] == list(range(1, len(retries) + 1))
    assert {(s.kind, s.hub, s.reason) for s in retries} == {("retrying", hub, "connection refused")}
    assert all(0.025 <= s.delay <= 0.15 for s in retries)


async def test_subscription_resumes_on_a_restarted_hub_exactly_once() -> None:
    """A hub restarted on the same port with the same history (shared broker): the stream resumes after its last id."""
    broker = MemoryBroker(100)
    srv = HubServer(port=0, broker=broker)
    await srv.start()
    port = srv.port
    stream = subscribe(Endpoint.parse(srv.url), backoff=(0.05, 0.1))
    got = []
    async with ws(port, "/api") as api:
        nxt = asyncio.ensure_future(stream.__anext__())
        await wait_members(srv, 1)
        await publish(api, event(n=0))
        got.append(await asyncio.wait_for(nxt, TIMEOUT))
    await srv.close()
    await broker.publish([("backup.completed", "mail-agent", {"n": 1})])  # while nobody serves
    again = HubServer(port=port, broker=broker)
    await again.start()
    try:
        async with asyncio.timeout(TIMEOUT):
            got.append(await stream.__anext__())
            async with ws(port, "/api") as api:
                await publish(api, event(n=2))
            got.append(await stream.__anext__())
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
        await again.close()
    assert [g.envelope["payload"]["n"] for g in got] == [0, 1, 2]


@pytest.mark.parametrize(
    ("url", "ws_url", "api_url"),
    [
        ("localhost:8800", "ws://localhost:8800/ws", "ws://localhost:8800/api"),
        ("http://h:1/", "ws://h:1/ws", "ws://h:1/api"),
        ("https://h/norn/ws", "wss://h/norn/ws", "wss://h/norn/api"),
        ("wss://h:9/api", "wss://h:9/ws", "wss://h:9/api"),
    ],
)
def test_endpoint_forms(url: str, ws_url: str, api_url: str) -> None:
    """Any of ws(s)://, http(s)://, with or without a path, gives /ws and /api."""
    ep = Endpoint.parse(url)
    assert (ep.ws_url(), ep.api_url) == (ws_url, api_url)


async def test_subscription_tells_each_connection_change() -> None:
    """on_state hears lost, each failed attempt numbered from 1, then back on the next attempt, resuming after the last id."""
    broker = MemoryBroker(100)
    srv = HubServer(port=0, broker=broker)
    await srv.start()
    port = srv.port
    states: list[ConnectionState] = []
    retried = asyncio.Event()

    def on_state(state: ConnectionState) -> None:
        states.append(state)
        if state.attempt >= 2:
            retried.set()

    stream = subscribe(Endpoint.parse(srv.url), on_state=on_state, backoff=(0.05, 0.1))
    again: HubServer | None = None
    try:
        async with asyncio.timeout(TIMEOUT):
            async with ws(port, "/api") as api:
                nxt = asyncio.ensure_future(stream.__anext__())
                await wait_members(srv, 1)
                await publish(api, event(n=0))
                first = (await nxt).envelope["id"]
            await srv.close()
            nxt = asyncio.ensure_future(stream.__anext__())
            await retried.wait()
            again = HubServer(port=port, broker=broker)
            await again.start()
            async with ws(port, "/api") as api:
                await wait_members(again, 1)
                await publish(api, event(n=1))
            assert (await nxt).envelope["payload"] == {"n": 1}
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
        if again is not None:
            await again.close()
    hub = str(Endpoint.parse(srv.url))
    *retries, back = states[1:]
    assert states[0] == ConnectionState("lost", hub, "it is shutting down")
    assert [(s.kind, s.attempt, s.reason) for s in retries] == [("retrying", n, "connection refused") for n in range(1, len(retries) + 1)]
    assert back == ConnectionState("back", hub, attempt=len(retries) + 1, resume_after=first)
