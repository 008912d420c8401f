"""Resilient publishing: a connection lost between storing and acking re-sends, and keys absorb the repeats."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import connect

from conftest import TIMEOUT
from norn_cli.client.connect import ConnectionState
from norn_cli.client.emit import emit_events, stream_ndjson
from norn_cli.client.endpoint import Endpoint
from norn_cli.core.errors import EventError, HubUnreachable
from norn_cli.hub.server import HubServer


class CuttingProxy:
    """A TCP proxy to a hub that drops its first connection, and the replies in flight, once `cut()` is true."""

    def __init__(self, port: int, cut: Any) -> None:
        self.port = port
        self.cut = cut
        self.cuts = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _serve(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        hr, hw = await asyncio.open_connection("127.0.0.1", self.port)
        first = self.cuts == 0

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter, from_hub: bool) -> None:
            while data := await r.read(65536):
                if from_hub and first and self.cuts == 0 and self.cut():
                    self.cuts += 1
                    break  # these replies are lost: their events are stored, never acknowledged
                w.write(data)
                await w.drain()

        tasks = [asyncio.ensure_future(pipe(cr, hw, False)), asyncio.ensure_future(pipe(hr, cw, True))]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in tasks:
            t.cancel()
        for w in (cw, hw):
            w.transport.abort()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


async def numbered(n: int) -> AsyncIterator[dict[str, Any]]:
    for i in range(n):
        yield {"type": "test.event", "appId": "a", "payload": {"n": i}, "key": f"run:{i}"}


async def test_a_connection_lost_before_its_acks_publishes_each_event_once() -> None:
    """The lost acks' events are re-sent with their keys: ids once each, in order; subscribers see each event once."""
    n = 6000
    states: list[ConnectionState] = []
    async with HubServer(host="127.0.0.1", port=0, history=2 * n) as srv:
        proxy = CuttingProxy(srv.port, lambda: srv.hub.published >= n // 2)
        port = await proxy.start()
        acks: list[tuple[str, bool]] = []
        async with asyncio.timeout(TIMEOUT), connect(f"{srv.url}/ws") as sub:
            stats = await emit_events(
                Endpoint.parse(f"ws://127.0.0.1:{port}"), numbered(n),
                on_ack=lambda i, d: acks.append((i, d)), on_state=states.append,
            )  # fmt: skip
            got = [json.loads(await sub.recv()) for _ in range(n)]
        await proxy.close()
        assert srv.hub.published == n
    ids = [i for i, _ in acks]
    assert proxy.cuts == 1 and stats.reconnects == 1
    assert stats.duplicates == sum(d for _, d in acks) > 0
    assert len(ids) == len(set(ids)) == n
    assert [g["id"] for g in got] == ids
    assert [g["payload"]["n"] for g in got] == list(range(n))
    hub = f"ws://127.0.0.1:{port}"
    assert states == [ConnectionState("lost", hub, "the connection dropped"), ConnectionState("back", hub, attempt=1)]


async def test_no_retry_fails_fast_with_a_count() -> None:
    """With retry off, the lost connection is HubUnreachable saying how many were published."""
    async with HubServer(host="127.0.0.1", port=0) as srv:
        proxy = CuttingProxy(srv.port, lambda: srv.hub.published >= 1000)
        port = await proxy.start()
        with pytest.raises(HubUnreachable, match=r"events were published\)$"):
            async with asyncio.timeout(TIMEOUT):
                await emit_events(Endpoint.parse(f"ws://127.0.0.1:{port}"), numbered(3000), on_ack=lambda i, d: None, retry=False)
        await proxy.close()


async def test_a_bad_streamed_line_stops_after_the_events_before_it(tmp_path: Any) -> None:
    """--stream validates line by line: the lines before a bad one are published, then the error names it."""
    path = tmp_path / "in.ndjson"
    path.write_bytes(b'{"type":"a.b","appId":"x"}\n\n{"type":"a.b","appId":"x","key":"mine"}\n{"type":"a.b"}\n{"type":"a.b","appId":"x"}\n')
    acks: list[str] = []
    async with HubServer(host="127.0.0.1", port=0) as srv:
        with path.open("rb") as f, pytest.raises(EventError) as err:
            async with asyncio.timeout(TIMEOUT):
                await emit_events(
                    Endpoint.parse(srv.url), stream_ndjson(f, key_prefix="p", source="in.ndjson"),
                    on_ack=lambda i, d: acks.append(i),
                )  # fmt: skip
        assert srv.hub.published == 2
    assert len(acks) == 2
    assert err.value.message == (
        "in.ndjson line 4: event needs field 'appId'; the 2 events before it were published"
    )
