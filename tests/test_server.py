"""The hub over real sockets: routes, origins, auth, filters, replay, bad input, slow consumers, shutdown."""

from __future__ import annotations

import asyncio
import time
import json
import socket
from collections import deque
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from conftest import TIMEOUT
from norn_cli.core.events import parse_id
from helpers import event, http_get, publish, recv_json, recv_n, request, wait_members, ws
from norn_cli.hub.brokers.memory import MemoryBroker
from norn_cli.core.errors import ConfigError
from norn_cli.hub.api import MERGE_EVENTS
from norn_cli.hub.server import HubServer


async def test_bare_subscriber_gets_the_seed_envelope_plus_id_and_ts(hub: HubServer) -> None:
    """A bare /ws client receives type, appId, payload exactly as published, plus id and ts."""
    async with ws(hub.port) as sub, ws(hub.port, "/api") as api:
        [event_id] = await publish(api, event("deploy.step", step="build", status="building"))
        got = await recv_json(sub)
    assert {k: got[k] for k in ("type", "appId", "payload")} == {
        "type": "deploy.step", "appId": "mail-agent", "payload": {"step": "build", "status": "building"},
    }  # fmt: skip
    assert got["id"] == event_id
    assert sorted(got) == ["appId", "id", "payload", "ts", "type"]
    assert got["ts"].endswith("Z") and len(got["ts"]) == len("2026-11-27T13:27:16.123Z")


async def test_ids_strictly_increase(hub: HubServer) -> None:
    """Ids are <ms>-<seq> and strictly increasing in publish order."""
    async with ws(hub.port, "/api") as api:
        ids = await publish(api, *[event(n=i) for i in range(200)])
    keys = [tuple(int(p) for p in i.split("-")) for i in ids]
    assert keys == sorted(set(keys))


async def test_ids_increase_across_a_restart() -> None:
    """A restarted in-memory hub never issues an id lower than the previous run's."""
    async with HubServer(port=0) as first, ws(first.port, "/api") as api:
        [before] = await publish(api, event())
    async with HubServer(port=0) as second, ws(second.port, "/api") as api:
        [after] = await publish(api, event())
    assert tuple(map(int, after.split("-"))) > tuple(map(int, before.split("-")))


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("app=mail-agent", ["a1", "a2", "a3"]),
        ("app=blog", ["b1", "b2"]),
        ("app=blog&app=mail-agent", ["a1", "b1", "a2", "b2", "a3"]),
        ("type=deploy.*", ["a1", "b1", "a2"]),
        ("type=app.status&type=forge.step", ["b2", "a3"]),
        ("app=mail-agent&type=deploy.*", ["a1", "a2"]),
        ("type=*.step", ["a1", "b1", "a2", "b2"]),
        ("", ["a1", "b1", "a2", "b2", "a3"]),
    ],
)
async def test_filters_are_applied_by_the_hub(hub: HubServer, query: str, expected: list[str]) -> None:
    """app and type (with *) filters, repeatable and combined, deliver exactly the matching events."""
    stream = [
        event("deploy.step", "mail-agent", step="a1", status="running"),
        event("deploy.step", "blog", step="b1", status="running"),
        event("deploy.step", "mail-agent", step="a2", status="running"),
        event("forge.step", "blog", step="b2", status="running"),
        event("app.status", "mail-agent", step="a3"),
    ]
    async with ws(hub.port, f"/ws?{query}") as sub, ws(hub.port, "/api") as api:
        await publish(api, *stream)
        # Terminators: every filter above matches at least one of them.
        await publish(api, *[event(t, a, step="end", status="x") for t in ("deploy.step", "forge.step", "app.status") for a in ("mail-agent", "blog")])
        got = []
        while True:
            env = await recv_json(sub)
            if env["payload"]["step"] == "end":
                break
            got.append(env["payload"]["step"])
    assert got == expected


async def test_since_replays_then_goes_live_without_gap_or_duplicate(hub: HubServer) -> None:
    """since=ID replays everything after ID and hands over to live events under concurrent publishing."""
    async with ws(hub.port, "/api") as api:
        ids = await publish(api, *[event(n=i) for i in range(50)])
        publishing = asyncio.create_task(publish(api, *[event(n=i) for i in range(50, 400)]))
        async with ws(hub.port, f"/ws?since={ids[9]}") as sub:
            got = await recv_n(sub, 390)
        await publishing
    assert [e["payload"]["n"] for e in got] == list(range(10, 400))


async def test_last_replays_the_last_matching_events(hub: HubServer) -> None:
    """last=N replays the N newest matching events, then live ones."""
    async with ws(hub.port, "/api") as api:
        await publish(api, *[event(app="mail-agent" if i % 2 else "blog", n=i) for i in range(20)])
        async with ws(hub.port, "/ws?app=blog&last=3") as sub:
            replayed = await recv_n(sub, 3)
            await publish(api, event(app="mail-agent", n=98), event(app="blog", n=99))
            live = await recv_json(sub)
    assert [e["payload"]["n"] for e in replayed] == [14, 16, 18]
    assert live["payload"]["n"] == 99


async def test_gap_frame_when_since_is_older_than_history() -> None:
    """A since older than the retained history gets a hub.gap frame first, then what is kept."""
    async with HubServer(port=0, history=5) as srv, ws(srv.port, "/api") as api:
        ids = await publish(api, *[event(n=i) for i in range(12)])
        async with ws(srv.port, f"/ws?since={ids[2]}") as sub:
            frames = await recv_n(sub, 6)
    assert frames[0] == {"type": "hub.gap", "appId": "", "payload": {"since": ids[2], "oldest": ids[7]}}
    assert [f["payload"]["n"] for f in frames[1:]] == [7, 8, 9, 10, 11]


async def test_gap_frame_for_an_id_from_before_this_hub() -> None:
    """Resuming a fresh in-memory hub with an id from its previous run warns of a gap."""
    async with HubServer(port=0) as first, ws(first.port, "/api") as api:
        [old] = await publish(api, event())
    # The precondition: the second hub starts after that id's millisecond. A VM's wall clock can
    # step back by a millisecond; wait (bounded) until it has passed the id again.
    async with asyncio.timeout(TIMEOUT):
        while time.time() * 1000 <= parse_id(old)[0] + 1:
            await asyncio.sleep(0.001)
    async with HubServer(port=0) as second:
        async with ws(second.port, "/api") as api:
            [new] = await publish(api, event(n=1))
        async with ws(second.port, f"/ws?since={old}") as sub:
            gap, replayed = await recv_n(sub, 2)
    assert gap == {"type": "hub.gap", "appId": "", "payload": {"since": old, "oldest": new}}
    assert replayed["id"] == new


async def test_no_gap_frame_when_history_covers_since(hub: HubServer) -> None:
    """A since inside the retained history replays without any gap frame."""
    async with ws(hub.port, "/api") as api:
        ids = await publish(api, *[event(n=i) for i in range(3)])
        async with ws(hub.port, f"/ws?since={ids[0]}") as sub:
            frames = await recv_n(sub, 2)
    assert [f["type"] for f in frames] == ["backup.completed", "backup.completed"]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("since=yesterday", "'yesterday' is not an event id (expected <milliseconds>-<sequence>)"),
        ("last=ten", "last must be a whole number, got 'ten'"),
        ("last=-1", "last must be zero or more, got '-1'"),
    ],
)
async def test_bad_subscription_query_is_a_400(hub: HubServer, query: str, message: str) -> None:
    """A malformed since or last is refused before the upgrade, saying why."""
    status, _, body = await http_get(
        hub.port, f"/ws?{query}",
        {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13"},
    )  # fmt: skip
    assert (status, body.decode().strip()) == (400, message)


# ---------------------------------------------------------------- origins and auth


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        (None, True),
        ("https://norn.example.com", True),
        ("http://localhost:5173", True),
        ("http://127.0.0.1", True),
        ("http://[::1]:8080", True),
        ("https://evil.example.com", False),
        ("null", False),
        ("not a url", False),
    ],
)
async def test_origin_rules_on_ws(origin: str | None, allowed: bool) -> None:
    """/ws applies the seed's origin rules: refused origins get 403 before the upgrade."""
    async with HubServer(port=0, allowed_origins={"https://norn.example.com"}) as srv:
        if allowed:
            async with ws(srv.port, origin=origin) as sub:
                await sub.ping()
        else:
            with pytest.raises(InvalidStatus) as info:
                async with ws(srv.port, origin=origin):
                    pass
            assert info.value.response.status_code == 403


async def handshake_status(port: int, path: str, headers: dict[str, str]) -> int:
    """The status of a WebSocket handshake sent with exactly these Host/Origin headers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [f"GET {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items()), "Upgrade: websocket",
             "Connection: Upgrade", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13"]  # fmt: skip
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    async with asyncio.timeout(TIMEOUT):
        status_line = await reader.readline()
    writer.close()
    return int(status_line.split()[1])


async def test_same_origin_and_empty_origin_on_ws(hub: HubServer) -> None:
    """A page from this hub under any name (Origin equal to Host) may subscribe; an empty Origin counts as absent."""
    port = hub.port
    name = f"norn.example.com:{port}"
    assert await handshake_status(port, "/ws", {"Host": name, "Origin": f"http://{name}"}) == 101
    assert await handshake_status(port, "/ws", {"Host": name, "Origin": f"http://NORN.example.com:{port}"}) == 101
    assert await handshake_status(port, "/ws", {"Host": name, "Origin": f"https://{name}"}) == 403  # not a TLS hub
    assert await handshake_status(port, "/ws", {"Host": name, "Origin": f"http://other.example.com:{port}"}) == 403
    assert await handshake_status(port, "/ws", {"Host": name, "Origin": "http://norn.example.com"}) == 403  # port 80
    assert await handshake_status(port, "/ws", {"Host": name, "Origin": ""}) == 101
    # /api keeps its rule: without a token, any Origin header, even same-origin or empty, is refused.
    assert await handshake_status(port, "/api", {"Host": name, "Origin": f"http://{name}"}) == 403
    assert await handshake_status(port, "/api", {"Host": name, "Origin": ""}) == 403
    assert await handshake_status(port, "/api", {"Host": name}) == 101


async def test_api_without_token_refuses_browser_origins(hub: HubServer) -> None:
    """With no token, /api serves only clients that send no Origin, even a localhost one."""
    with pytest.raises(InvalidStatus) as info:
        async with ws(hub.port, "/api", origin="http://localhost:3000"):
            pass
    assert info.value.response.status_code == 403
    assert info.value.response.body.decode().strip() == "publishing from a web page needs a token; this hub has none"
    async with ws(hub.port, "/api") as api:
        assert (await request(api, {"op": "status"}))["ok"] is True


async def test_api_token_is_required_when_configured() -> None:
    """With a token, /api needs `Authorization: Bearer <token>`: 401 otherwise; /ws stays open."""
    async with HubServer(port=0, token="s3cret") as srv:
        for headers in (None, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
            with pytest.raises(InvalidStatus) as info:
                async with ws(srv.port, "/api", additional_headers=headers):
                    pass
            assert info.value.response.status_code == 401
        async with ws(srv.port, "/api", additional_headers={"Authorization": "Bearer s3cret"}) as api, ws(srv.port) as sub:
            await publish(api, event())
            assert (await recv_json(sub))["type"] == "backup.completed"
        # A web page may publish when it carries the token and an allowed origin.
        async with ws(srv.port, "/api", origin="http://localhost:3000", additional_headers={"Authorization": "Bearer s3cret"}) as api:
            assert (await request(api, {"op": "status"}))["ok"] is True


def test_non_loopback_bind_without_token_is_refused() -> None:
    """The hub refuses to serve /api on a public address without a token, saying why."""
    with pytest.raises(ConfigError) as info:
        HubServer(host="0.0.0.0", port=0)
    assert info.value.message == (
        "refusing to serve /api on non-loopback address 0.0.0.0 without a token; "
        "set --token or NORN_TOKEN, or bind 127.0.0.1"
    )
    HubServer(host="0.0.0.0", port=0, token="t")  # fine with a token


# ---------------------------------------------------------------- plain HTTP


async def test_healthz_metrics_404_426(hub: HubServer) -> None:
    """/healthz and /metrics answer plain GETs; unknown paths 404; /ws and /api without upgrade 426."""
    status, headers, body = await http_get(hub.port, "/healthz")
    assert (status, headers["content-type"], json.loads(body)) == (
        200, "application/json", {"ok": True, "clients": 0, "broker": "memory"},
    )  # fmt: skip
    async with ws(hub.port) as _sub, ws(hub.port, "/api") as api:
        await publish(api, event(), event())
        status, headers, body = await http_get(hub.port, "/metrics")
    text = body.decode()
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    for line in [
        "norn_connections 1",
        "norn_api_connections 1",
        "norn_events_in_total 2",
        "norn_events_out_total 2",
        "norn_dropped_clients_total 0",
        f"norn_fanout_threads {hub.writer.threads}",
        "norn_fanout_short_writes_total 0",
        'norn_api_requests_total{op="publish"} 2',
        'norn_broker_up{broker="memory"} 1',
    ]:
        assert line in text.splitlines(), line
    assert (await http_get(hub.port, "/nope"))[0] == 404
    assert (await http_get(hub.port, "/"))[0] == 200  # the dashboard: tests/test_dashboard_http.py
    assert (await http_get(hub.port, "/ws"))[0] == 426
    assert (await http_get(hub.port, "/api"))[0] == 426


# ---------------------------------------------------------------- /api


async def test_status_reports_counters(hub: HubServer) -> None:
    """status answers clients, published, dropped and lastId."""
    async with ws(hub.port) as _sub, ws(hub.port, "/api") as api:
        ids = await publish(api, event(), event())
        reply = await request(api, {"op": "status"})
    assert {k: reply[k] for k in ("ok", "clients", "published", "dropped", "lastId", "broker")} == {
        "ok": True, "clients": 1, "published": 2, "dropped": 0, "lastId": ids[1], "broker": "memory",
    }  # fmt: skip


async def test_batch_publish_is_all_or_nothing(hub: HubServer) -> None:
    """A batch is acked with every id in order, or refused whole naming the bad index."""
    async with ws(hub.port) as sub, ws(hub.port, "/api") as api:
        bad = await request(api, {"op": "publish", "events": [event(n=0), event("deploy.step", n=1), event(n=2)]})
        good = await request(api, {"op": "publish", "events": [event(n=3), event(n=4)]})
        frames = await recv_n(sub, 2)
    assert bad == {"ok": False, "error": {"code": "bad_request", "message": "events[1]: deploy.step payload needs fields 'step' and 'status'; nothing was published"}}
    assert good["ok"] is True and len(good["ids"]) == 2
    assert [f["id"] for f in frames] == good["ids"]
    assert [f["payload"]["n"] for f in frames] == [3, 4]


async def test_pipelined_requests_are_answered_in_order(hub: HubServer) -> None:
    """Requests sent without waiting get their replies in order."""
    async with ws(hub.port, "/api") as api:
        for i in range(100):
            await api.send(json.dumps({"op": "publish", "event": event(n=i)}) if i % 10 else "{bad json")
        replies = [await recv_json(api) for _ in range(100)]
    assert [r["ok"] for r in replies] == [i % 10 != 0 for i in range(100)]
    ids = [r["id"] for r in replies if r["ok"]]
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))


BAD_INPUTS = [
    ("{not json", "bad_request", "request is not valid JSON"),
    ("[1, 2]", "bad_request", 'request must be a JSON object like {"op": "publish", ...}'),
    ('"publish"', "bad_request", 'request must be a JSON object like {"op": "publish", ...}'),
    ("{}", "bad_request", 'request needs an "op" (publish, status, ...)'),
    ('{"op": "explode"}', "not_found", "unknown op 'explode' (known: publish, status)"),
    ('{"op": "publish"}', "bad_request", 'publish needs "event" (one) or "events" (a batch)'),
    ('{"op": "publish", "events": []}', "bad_request", '"events" must be a non-empty array of events'),
    ('{"op": "publish", "event": {"appId": "a"}}', "bad_request", "event needs field 'type'"),
    ('{"op": "publish", "event": {"type": "x.y"}}', "bad_request", "event needs field 'appId'"),
    ('{"op": "publish", "event": {"type": "x.y", "appId": "a", "payload": 5}}', "bad_request", "event 'payload' must be a JSON object, got a number"),
    ('{"op": "publish", "event": {"type": "deploy.step", "appId": "a", "payload": {"step": "b"}}}', "bad_request", "deploy.step payload needs field 'status'"),
    (b'{"op": "status"}', "bad_request", "requests are JSON text frames, not binary"),
]


async def test_bad_input_is_answered_and_harmless(hub: HubServer) -> None:
    """Every bad request gets an error reply, nothing reaches subscribers, and the connection keeps working."""
    async with ws(hub.port) as sub, ws(hub.port, "/api") as api:
        for raw, code, message in BAD_INPUTS:
            reply = await request(api, raw)
            assert reply["ok"] is False, raw
            assert reply["error"]["code"] == code, raw
            assert reply["error"]["message"].startswith(message), (raw, reply)
        [good] = await publish(api, event(n=1))
        first = await recv_json(sub)
    assert first["id"] == good  # nothing bad went out before it
    assert hub.hub.published == 1


async def test_oversize_frame_closes_with_1009_and_the_hub_lives_on(hub: HubServer) -> None:
    """A frame over 64 KiB closes that connection with 1009; others keep working."""
    async with ws(hub.port) as sub, ws(hub.port, "/api", max_size=None) as big:
        await big.send(json.dumps({"op": "publish", "event": event(blob="x" * 70_000)}))
        with pytest.raises(ConnectionClosed) as info:
            async with asyncio.timeout(TIMEOUT):
                await big.recv()
        assert info.value.rcvd is not None and info.value.rcvd.code == 1009
        async with ws(hub.port, "/api") as api:
            [good] = await publish(api, event())
        assert (await recv_json(sub))["id"] == good


async def test_frames_on_ws_are_ignored(hub: HubServer) -> None:
    """Frames a subscriber sends are ignored and do not disturb its stream."""
    async with ws(hub.port) as sub, ws(hub.port, "/api") as api:
        await sub.send('{"op":"publish","event":{"type":"x.y","appId":"a"}}')
        await sub.send(b"\x00\x01")
        [good] = await publish(api, event())
        assert (await recv_json(sub))["id"] == good
    assert hub.hub.published == 1


# ---------------------------------------------------------------- slow consumers


async def test_slow_consumer_dropped_with_1013_while_healthy_gets_everything() -> None:
    """A subscriber that stops reading is closed with 1013 `slow consumer`; a healthy one misses nothing."""
    async with HubServer(port=0, stall_grace=0.05) as srv:
        stalled_sock = socket.socket()
        stalled_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled_sock.connect(("127.0.0.1", srv.port))
        stalled_sock.setblocking(False)
        # max_queue=1: the client library stops reading its socket once one frame waits.
        async with ws(srv.port, sock=stalled_sock, max_queue=1) as stalled, ws(srv.port, max_size=None) as healthy:
            total = 3000
            blob = "x" * 2000
            async with ws(srv.port, "/api") as api:
                reader = asyncio.create_task(recv_n(healthy, total))
                for start in range(0, total, 20):
                    reply = await request(api, {"op": "publish", "events": [event(n=i, blob=blob) for i in range(start, start + 20)]})
                    assert reply["ok"] is True
                got = await reader
            assert [e["payload"]["n"] for e in got] == list(range(total))
            with pytest.raises(ConnectionClosed) as info:
                async with asyncio.timeout(TIMEOUT):
                    while True:
                        await stalled.recv()
            assert info.value.rcvd is not None
            assert (info.value.rcvd.code, info.value.rcvd.reason) == (1013, "slow consumer")
        assert srv.hub.dropped == 1


def _loop_factories() -> list[Any]:
    factories: list[Any] = [pytest.param(asyncio.new_event_loop, id="asyncio")]
    try:
        import uvloop
    except ImportError:
        return factories
    return [*factories, pytest.param(uvloop.new_event_loop, id="uvloop")]


@pytest.mark.parametrize("loop_factory", _loop_factories())
@pytest.mark.parametrize("threads", [0, 1])
def test_a_socket_that_fills_mid_fanout_still_gets_every_byte_in_order(threads: int, loop_factory: Any) -> None:
    """With parallel fan-out on, a subscriber whose socket takes only part of a write
    gets the rest through its connection, before anything later, like everyone else,
    on both event loops `norn serve` runs on."""
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_fill_mid_fanout(threads))


async def _fill_mid_fanout(threads: int) -> None:
    async with HubServer(port=0, fanout_threads=threads, stall_grace=30) as srv:
        slow_sock = socket.socket()
        slow_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow_sock.connect(("127.0.0.1", srv.port))
        slow_sock.setblocking(False)
        # max_queue=1: the client library stops reading its socket once one frame waits.
        async with ws(srv.port, sock=slow_sock, max_queue=1) as slow:
            healthy = [await ws(srv.port, max_size=None).__aenter__() for _ in range(20)]
            try:
                await wait_members(srv, 21)
                slow_port = slow_sock.getsockname()[1]
                (conn,) = [c for c in srv.conns if c.member is not None and c.peer.endswith(f":{slow_port}")]
                conn.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
                total, blob = 3, "x" * 20_000  # more than the socket holds, under 64 KiB: never paused
                readers = [asyncio.create_task(recv_n(h, total)) for h in healthy]
                async with ws(srv.port, "/api") as api:
                    for n in range(total):
                        assert (await request(api, {"op": "publish", "event": event(n=n, blob=blob)}))["ok"]
                for got in await asyncio.gather(*readers):
                    assert [e["payload"]["n"] for e in got] == list(range(total))
                got = await recv_n(slow, total)
                assert [e["payload"]["n"] for e in got] == list(range(total))
                assert all(e["payload"]["blob"] == blob for e in got)
            finally:
                await asyncio.gather(*[h.close() for h in healthy])
        assert srv.hub.dropped == 0
        short = srv.writer.short_writes
        assert short >= 1 if threads else short == 0  # with threads, the partial-write path ran
        assert f"norn_fanout_short_writes_total {short}" in srv.metrics_text().splitlines()


# ---------------------------------------------------------------- keepalive and shutdown


async def test_dead_peer_is_reaped_by_keepalive() -> None:
    """A client that completes the handshake and then never answers pings is closed."""
    async with HubServer(port=0, ping_interval=0.1, close_timeout=0.2) as srv:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        async with asyncio.timeout(TIMEOUT):
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101")
            await wait_members(srv, 1)
            rest = await reader.read()  # returns at EOF: the hub gave up on us
        writer.close()
        assert srv.hub.members == 0
        assert b"keepalive ping timeout" in rest


async def test_shutdown_closes_every_client_with_1001() -> None:
    """Closing the hub sends 1001 to subscribers and publishers alike."""
    srv = HubServer(port=0)
    await srv.start()
    async with ws(srv.port) as sub, ws(srv.port, "/api") as api:
        closing = asyncio.create_task(srv.close())
        for conn in (sub, api):
            with pytest.raises(ConnectionClosed) as info:
                async with asyncio.timeout(TIMEOUT):
                    await conn.recv()
            assert info.value.rcvd is not None and info.value.rcvd.code == 1001
        await closing


@pytest.mark.slow
async def test_a_thousand_subscribers_each_get_a_thousand_events() -> None:
    """1,000 concurrent subscribers each receive every one of 1,000 events, in order."""
    async with HubServer(port=0) as srv:
        subs = []
        for _ in range(10):
            subs += await asyncio.gather(*[ws(srv.port).__aenter__() for _ in range(100)])
        counts = [0] * len(subs)
        orders_ok = [True] * len(subs)

        async def drain(i: int) -> None:
            for expect in range(1000):
                env = json.loads(await subs[i].recv())
                counts[i] += 1
                if env["payload"]["n"] != expect:
                    orders_ok[i] = False

        try:
            async with asyncio.timeout(TIMEOUT * 12):
                readers = [asyncio.create_task(drain(i)) for i in range(len(subs))]
                async with ws(srv.port, "/api") as api:
                    for start in range(0, 1000, 50):
                        reply = await request(api, {"op": "publish", "events": [event(n=i) for i in range(start, start + 50)]})
                        assert reply["ok"]
                await asyncio.gather(*readers)
        finally:
            await asyncio.gather(*[s.close() for s in subs])
        assert counts == [1000] * 1000
        assert all(orders_ok)
        assert srv.hub.dropped == 0


async def test_handshake_says_where_the_subscription_starts(hub: HubServer) -> None:
    """The 101 carries Norn-Last-Id: the newest id at subscription ("0-0" before any event)."""
    async with ws(hub.port) as first:
        assert first.response is not None
        assert first.response.headers["Norn-Last-Id"] == "0-0"
        async with ws(hub.port, "/api") as api:
            newest = (await publish(api, event(), event()))[-1]
        async with ws(hub.port) as second:
            assert second.response is not None
            assert second.response.headers["Norn-Last-Id"] == newest


class CountingBroker(MemoryBroker):
    """A memory broker that counts how many calls ordered events."""

    def __init__(self) -> None:
        super().__init__(100)
        self.calls: list[int] = []

    async def publish(self, items):  # type: ignore[no-untyped-def]
        self.calls.append(len(items))
        return await super().publish(items)


async def test_pipelined_publishes_are_ordered_in_one_broker_call() -> None:
    """Consecutive publishes share one broker call; other ops and bad requests keep their place and their own reply."""
    broker = CountingBroker()
    async with HubServer(port=0, broker=broker) as srv:
        one = json.dumps({"op": "publish", "event": event(n=1)}).encode()
        two = json.dumps({"op": "publish", "events": [event(n=2), event(n=3)]}).encode()
        bad = json.dumps({"op": "publish", "event": event("deploy.step")}).encode()
        status = b'{"op": "status"}'
        replies = await srv.api.handle_run(deque([one, two, bad, one, status, one, b"{nope"]))
    assert broker.calls == [4, 1]
    assert [sorted(r) for r in replies] == [["id", "ok"], ["ids", "ok"], ["error", "ok"], ["id", "ok"], sorted(srv.status()), ["id", "ok"], ["error", "ok"]]
    ids = [replies[0]["id"], *replies[1]["ids"], replies[3]["id"], replies[5]["id"]]
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-")))) and len(set(ids)) == 5
    assert replies[2]["error"]["message"] == "deploy.step payload needs fields 'step' and 'status'"
    assert replies[4]["published"] == 4  # status saw the publishes before it, not the one after


async def test_a_run_of_publishes_stops_at_the_merge_limit() -> None:
    """At most about MERGE_EVENTS events are folded into one call; the rest wait in the queue."""
    broker = CountingBroker()
    async with HubServer(port=0, broker=broker) as srv:
        reqs = deque(json.dumps({"op": "publish", "event": event(n=i)}).encode() for i in range(MERGE_EVENTS + 5))
        first = await srv.api.handle_run(reqs)
        rest = await srv.api.handle_run(reqs)
    assert (len(first), len(rest), broker.calls) == (MERGE_EVENTS, 5, [MERGE_EVENTS, 5])
