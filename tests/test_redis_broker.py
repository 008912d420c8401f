"""RedisBroker against a real redis-server: several hubs, one order, resume, outages."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from conftest import TIMEOUT, norn_argv, norn_env, run_norn
from norn_cli.core.events import dumps, make_event, now_ts, parse_id
from norn_cli.hub.brokers.redis import RedisBroker, _event
from norn_cli.hub.server import HubServer

if shutil.which("redis-server") is None and os.environ.get("NORN_REQUIRE_REDIS") == "1":
    raise RuntimeError("NORN_REQUIRE_REDIS=1 but redis-server is not on PATH")
needs_redis = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not on PATH")
pytestmark = [pytest.mark.redis, needs_redis]

STREAM = "norn:test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisProcess:
    """A redis-server subprocess on a fixed port, which a test may kill and restart."""

    def __init__(self, port: int, workdir: Path, *, persist: bool = False) -> None:
        self.port = port
        self.workdir = workdir
        self.persist = persist
        self.proc: asyncio.subprocess.Process | None = None
        self.output: list[bytes] = []
        self._drain: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> RedisProcess:
        argv = [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--dir", str(self.workdir), "--appendonly", "yes" if self.persist else "no",
            "--appendfsync", "always",
        ]  # fmt: skip
        self.proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        assert self.proc.stdout is not None
        try:
            async with asyncio.timeout(TIMEOUT):
                # redis-server logs this line once it listens (after loading its data).
                while b"Ready to accept connections" not in (line := await self.proc.stdout.readline()):
                    if not line:
                        raise RuntimeError(f"redis-server exited: {b''.join(self.output).decode()}")
                    self.output.append(line)
        except BaseException:
            if self.proc.returncode is None:
                self.proc.kill()
            await self.proc.wait()
            raise
        self._drain = asyncio.get_running_loop().create_task(self._drain_output())
        await self.ping()
        return self

    async def _drain_output(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.output.append(line)

    async def ping(self) -> None:
        """Confirm it answers PING, with bounded attempts each under a timeout."""
        client = aioredis.Redis(host="127.0.0.1", port=self.port, retry=Retry(NoBackoff(), 0))
        try:
            for attempt in range(50):
                try:
                    async with asyncio.timeout(TIMEOUT / 10):
                        if await client.ping():
                            return
                except (RedisError, OSError, TimeoutError):
                    if attempt == 49:
                        raise
        finally:
            await client.aclose()

    async def stop(self, *, graceful: bool = False) -> None:
        """SIGKILL (an outage), or SIGTERM (Redis saves its append-only file first)."""
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
        async with asyncio.timeout(TIMEOUT):
            await self.proc.wait()
            if self._drain is not None:
                await self._drain


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisProcess]:
    """A throwaway redis-server without persistence on a free port."""
    proc = RedisProcess(free_port(), tmp_path)
    await proc.start()
    try:
        yield proc
    finally:
        await proc.stop()


async def start_hub(url: str, **kwargs: Any) -> HubServer:
    srv = HubServer(host="127.0.0.1", port=0, broker=RedisBroker(url, history=1000, stream=STREAM), **kwargs)
    await srv.start()
    return srv


async def ready(srv: HubServer) -> None:
    """Wait until the hub's broker reaches Redis (an event, not a poll)."""
    assert isinstance(srv.broker, RedisBroker)
    await srv.broker.wait_ready()


@pytest.fixture
async def hubs(redis_server: RedisProcess) -> AsyncIterator[tuple[HubServer, HubServer]]:
    """Two hubs on one Redis stream."""
    a = await start_hub(redis_server.url)
    b = await start_hub(redis_server.url)
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


def ev(n: int, app: str = "mail-agent", type: str = "test.event") -> dict[str, Any]:
    return {"type": type, "appId": app, "payload": {"n": n}}


async def request(api: ClientConnection, req: dict[str, Any]) -> dict[str, Any]:
    await api.send(json.dumps(req))
    reply: dict[str, Any] = json.loads(await api.recv())
    return reply


async def publish(api: ClientConnection, events: Sequence[dict[str, Any]]) -> list[str]:
    reply = await request(api, {"op": "publish", "events": list(events)})
    assert reply["ok"], reply
    ids: list[str] = reply["ids"]
    return ids


async def recv(ws: ClientConnection) -> dict[str, Any]:
    frame: dict[str, Any] = json.loads(await ws.recv())
    return frame


async def recv_n(ws: ClientConnection, n: int) -> list[dict[str, Any]]:
    return [await recv(ws) for _ in range(n)]


class Frames:
    """Reads a subscriber's frames as they come (so the hub never finds it slow)."""

    def __init__(self, ws: ClientConnection) -> None:
        self.items: list[dict[str, Any]] = []
        self._more = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._read(ws))

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for raw in ws:
                self.items.append(json.loads(raw))
                self._more.set()
        except ConnectionClosed:
            pass  # wait_for says how many frames came before
        finally:
            self._more.set()

    async def wait_for(self, count: int) -> list[dict[str, Any]]:
        """The first `count` frames, once they have arrived."""
        while len(self.items) < count:
            if self._task.done():
                raise AssertionError(f"the connection ended after {len(self.items)} of {count} frames")
            self._more.clear()
            await self._more.wait()
        return self.items[:count]


async def http_get(srv: HubServer, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection(srv.host, srv.port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: norn\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = data.decode().partition("\r\n\r\n")
    return int(head.split()[1]), body


async def wait_health(srv: HubServer, status: int) -> dict[str, Any]:
    """Ask /healthz until it answers `status` (each try is a real request)."""
    while True:
        code, body = await http_get(srv, "/healthz")
        if code == status:
            health: dict[str, Any] = json.loads(body)
            return health


def ns(frames: Sequence[dict[str, Any]]) -> list[int]:
    return [f["payload"]["n"] for f in frames]


# ------------------------------------------------------------------ no server needed


@pytest.mark.parametrize("payload", [{}, {"step": "build", "status": "building", "note": "é\n\"x\""}])
def test_envelope_is_byte_identical_to_make_event(payload: dict[str, Any]) -> None:
    """An event built from a stream entry has exactly the memory broker's bytes."""
    body = dumps({"type": "deploy.step", "appId": "mail-agent", "payload": payload})
    got = _event(b"1764250036123-7", "deploy.step", "mail-agent", body)
    want = make_event((1764250036123, 7), "deploy.step", "mail-agent", payload, 1764250036123)
    assert (got.key, got.id, got.type, got.app, got.data) == (want.key, want.id, want.type, want.app, want.data)


def test_a_reader_overrun_tells_live_subscribers() -> None:
    """When the stream was trimmed past where this hub had read, its subscribers get hub.gap."""

    class Gaps:
        congested = False
        seen: list[tuple[str, str]] = []

        def flush(self) -> None: ...

        async def wait_for_room(self, now: float) -> None: ...

        def gap(self, since: str, oldest: str) -> None:
            self.seen.append((since, oldest))

    broker = RedisBroker("redis://127.0.0.1:1/0", history=1000)
    receiver = Gaps()
    broker._hub = receiver
    broker._pos = b"5-0"
    broker._apply({"length": 1000, "last-generated-id": b"2000-0", "first-entry": [b"9-0", []]})
    assert receiver.seen == [("5-0", "9-0")]
    broker._pos = b"1999-0"  # caught up: the first entry is older than where it is
    broker._apply({"length": 1000, "last-generated-id": b"2000-0", "first-entry": [b"1000-0", []]})
    assert receiver.seen == [("5-0", "9-0")]


def test_bad_broker_url_is_one_sentence_and_exit_2() -> None:
    """A malformed Redis URL stops `norn serve` with a usage error, not a traceback."""
    result = run_norn("serve", "--port", "0", "--broker", "redis://127.0.0.1:notaport/0")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "bad Redis URL for 127.0.0.1:notaport: Port could not be cast to integer value as 'notaport'" in result.stderr


# ------------------------------------------------------------------ two hubs


async def test_publish_on_one_hub_reaches_both_hubs_once_in_order(hubs: tuple[HubServer, HubServer]) -> None:
    """Subscribers of the publishing hub and of another hub get each event once, in order."""
    a, b = hubs
    async with asyncio.timeout(TIMEOUT):
        async with connect(f"{a.url}/ws") as sub_a, connect(f"{b.url}/ws") as sub_b, \
                connect(f"{a.url}/api") as api_a, connect(f"{b.url}/api") as api_b:  # fmt: skip
            ids = await publish(api_a, [ev(n) for n in range(5)])
            reply = await request(api_a, {"op": "publish", "event": ev(5)})
            ids.append(reply["id"])
            assert [parse_id(i) for i in ids] == sorted(parse_id(i) for i in ids)
            for sub in (sub_a, sub_b):
                frames = await recv_n(sub, 6)
                assert ns(frames) == list(range(6))
                assert [f["id"] for f in frames] == ids
                for f in frames:
                    assert list(f) == ["type", "appId", "payload", "id", "ts"]
                    assert f["ts"] == now_ts(parse_id(f["id"])[0])
            # Published on B: the next frame everywhere, so nothing came twice.
            sentinel = await publish(api_b, [ev(99)])
            for sub in (sub_a, sub_b):
                assert await recv(sub) == {**ev(99), "id": sentinel[0], "ts": now_ts(parse_id(sentinel[0])[0])}
            status = await request(api_b, {"op": "status"})
            assert (status["broker"], status["brokerOk"], status["lastId"]) == ("redis", True, sentinel[0])
            assert status["published"] == 7  # B counts what it delivered, from every hub
    health = await wait_health(b, 200)
    assert (health["ok"], health["broker"]) == (True, "redis")


async def test_concurrent_batches_from_two_hubs_stay_whole_and_ordered(hubs: tuple[HubServer, HubServer]) -> None:
    """Batches published at once on two hubs arrive contiguous, in one order everywhere."""
    a, b = hubs
    async with asyncio.timeout(TIMEOUT):
        async with connect(f"{a.url}/ws") as sub_a, connect(f"{b.url}/ws") as sub_b, \
                connect(f"{a.url}/api") as api_a, connect(f"{b.url}/api") as api_b:  # fmt: skip

            async def batches(api: ClientConnection, base: int) -> list[list[str]]:
                return [await publish(api, [ev(base + 5 * i + j) for j in range(5)]) for i in range(20)]

            acked_a, acked_b = await asyncio.gather(batches(api_a, 0), batches(api_b, 1000))
            seen_a = await recv_n(sub_a, 200)
            seen_b = await recv_n(sub_b, 200)
    assert seen_a == seen_b
    order = [f["id"] for f in seen_a]
    assert [parse_id(i) for i in order] == sorted(parse_id(i) for i in order)
    for batch in acked_a + acked_b:
        start = order.index(batch[0])
        assert order[start : start + 5] == batch


async def test_resume_on_another_hub_while_publishing_has_no_gap_and_no_duplicate(
    hubs: tuple[HubServer, HubServer],
) -> None:
    """`since=` an id seen on hub A, given to hub B mid-stream, continues exactly after it."""
    a, b = hubs
    total = 600
    async with asyncio.timeout(TIMEOUT * 2):
        async with connect(f"{a.url}/ws") as sub_a, connect(f"{a.url}/api") as api_a, \
                connect(f"{a.url}/api") as api_a2:  # fmt: skip
            on_a = Frames(sub_a)

            async def publisher() -> None:
                for i in range(0, total, 3):
                    await publish(api_a, [ev(i), ev(i + 1), ev(i + 2)])

            task = asyncio.create_task(publisher())
            try:
                mark = (await on_a.wait_for(61))[60]["id"]
                async with connect(f"{b.url}/ws?since={mark}") as resumed_ws:
                    resumed = Frames(resumed_ws)
                    # The newest id A acked, which B's reader has likely not
                    # delivered yet: B replays nothing and misses nothing.
                    newest = (await publish(api_a2, [ev(total)]))[0]
                    async with connect(f"{b.url}/ws?since={newest}") as head_ws:
                        head = Frames(head_ws)
                        await publish(api_a2, [ev(total + 1)])
                        await task
                        end = (await publish(api_a2, [ev(total + 2)]))[0]
                        everything = await on_a.wait_for(total + 3)
                        assert everything[-1]["id"] == end
                        after_newest = everything[[f["id"] for f in everything].index(newest) + 1 :]
                        assert await head.wait_for(len(after_newest)) == after_newest
                        assert await resumed.wait_for(total + 3 - 61) == everything[61:]
            finally:
                task.cancel()
    assert sorted(ns(everything)) == list(range(total + 3))
    assert [n for n in ns(everything) if n < total] == list(range(total))
    # Nothing arrived twice or late: the end marker was each one's last frame.
    assert (len(on_a.items), len(resumed.items), len(head.items)) == (total + 3, total + 3 - 61, len(after_newest))


async def test_last_n_with_filters_scans_past_many_unmatched_events(hubs: tuple[HubServer, HubServer]) -> None:
    """`last=N` with app and type filters finds the newest matches behind 900 others."""
    a, b = hubs
    async with asyncio.timeout(TIMEOUT * 2):
        async with connect(f"{a.url}/api") as api_a, connect(f"{b.url}/ws") as sub_b:
            on_b = Frames(sub_b)
            wanted = await publish(api_a, [ev(1, "web", "ci.build"), ev(2, "web", "ci.test"), ev(3, "web", "ci.test"),
                                           ev(4, "web", "cd.deploy"), ev(5, "db", "ci.build")])  # fmt: skip
            for i in range(3):
                await publish(api_a, [ev(100 + i * 300 + j, "other") for j in range(300)])
            await on_b.wait_for(905)  # B's reader has delivered them all
            async with connect(f"{b.url}/ws?last=2&app=web&type=ci.*") as last2, \
                    connect(f"{b.url}/ws?last=10&app=web&type=ci.*") as last10, \
                    connect(f"{b.url}/ws?last=2&type=ci.build") as builds, \
                    connect(f"{b.url}/ws?since={wanted[0]}&last=1&app=web&type=ci.*") as since_last:  # fmt: skip
                live = await publish(api_a, [ev(6, "db", "ci.test"), ev(7, "web", "ci.build")])
                assert [(f["id"], f["payload"]["n"]) for f in await recv_n(last2, 3)] == [
                    (wanted[1], 2), (wanted[2], 3), (live[1], 7)
                ]
                assert ns(await recv_n(last10, 4)) == [1, 2, 3, 7]
                assert ns(await recv_n(builds, 3)) == [1, 5, 7]
                assert ns(await recv_n(since_last, 2)) == [3, 7]


async def test_empty_stream_and_bad_since(redis_server: RedisProcess) -> None:
    """An empty stream: since reports a gap, last replays nothing; a malformed since is a 400."""
    srv = await start_hub(redis_server.url)
    try:
        async with asyncio.timeout(TIMEOUT):
            with pytest.raises(InvalidStatus) as info:
                async with connect(f"{srv.url}/ws?since=yesterday"):
                    pass
            assert info.value.response.status_code == 400
            async with connect(f"{srv.url}/ws?since=1-0") as since, connect(f"{srv.url}/ws?last=5") as last, \
                    connect(f"{srv.url}/api") as api:  # fmt: skip
                assert await recv(since) == {"type": "hub.gap", "appId": "", "payload": {"since": "1-0", "oldest": ""}}
                ids = await publish(api, [ev(1)])
                assert (await recv(since))["id"] == ids[0]
                assert (await recv(last))["id"] == ids[0]
                async with connect(f"{srv.url}/ws?since={ids[0]}") as current:
                    more = await publish(api, [ev(2)])
                    assert await recv(current) == (await recv(last))
                    assert (await recv(since))["id"] == more[0]
    finally:
        await srv.close()


async def test_entries_not_written_by_a_hub_are_skipped(
    redis_server: RedisProcess, hubs: tuple[HubServer, HubServer]
) -> None:
    """Foreign entries in the stream never reach subscribers, live or replayed."""
    a, b = hubs
    client = aioredis.Redis(host="127.0.0.1", port=redis_server.port)
    try:
        async with asyncio.timeout(TIMEOUT):
            async with connect(f"{b.url}/ws") as sub, connect(f"{a.url}/api") as api:
                await client.xadd(STREAM, {"foo": "bar"})
                await client.xadd(STREAM, {"event": "not json"})
                await client.xadd(STREAM, {"event": '{"type":"x"}'})
                await client.xadd(STREAM, {"event": b'{"type":"\xff.x","appId":"a","payload":{}}'})
                ids = await publish(api, [ev(1)])
                assert (await recv(sub))["id"] == ids[0]
                async with connect(f"{b.url}/ws?last=10") as replayed:
                    assert (await recv(replayed))["id"] == ids[0]
    finally:
        await client.aclose()


async def test_a_key_that_is_not_a_stream_is_reported_until_fixed(redis_server: RedisProcess) -> None:
    """A stream name already used for another type: 503 saying so, refusals, recovery once freed."""
    client = aioredis.Redis(host="127.0.0.1", port=redis_server.port)
    await client.set("norn:taken", "a string")
    srv = HubServer(host="127.0.0.1", port=0, broker=RedisBroker(redis_server.url, history=10, stream="norn:taken"))
    await srv.start()
    try:
        async with asyncio.timeout(TIMEOUT):
            problem = f"the Redis key 'norn:taken' at 127.0.0.1:{redis_server.port} is not a stream"
            assert (await wait_health(srv, 503))["error"] == problem
            async with connect(f"{srv.url}/api") as api:
                reply = await request(api, {"op": "publish", "event": ev(1)})
                assert reply["error"] == {"code": "unavailable", "message": problem + (
                    "; nothing was published, try again when the hub is healthy")}
                await client.delete("norn:taken")
                await ready(srv)
                assert len(await publish(api, [ev(2), ev(3)])) == 2
    finally:
        await srv.close()
        await client.aclose()


# ------------------------------------------------------------------ outages


async def test_outage_refuses_publishes_keeps_clients_and_recovers(
    redis_server: RedisProcess, hubs: tuple[HubServer, HubServer]
) -> None:
    """Redis killed: 503 and `unavailable`, clients stay; Redis back empty: a hub.gap, then delivery resumes."""
    a, b = hubs
    async with asyncio.timeout(TIMEOUT * 2):
        async with connect(f"{a.url}/ws") as sub_a, connect(f"{b.url}/ws") as sub_b, \
                connect(f"{a.url}/api") as api_a:  # fmt: skip
            before = await publish(api_a, [ev(1), ev(2)])
            for sub in (sub_a, sub_b):
                assert [f["id"] for f in await recv_n(sub, 2)] == before

            await redis_server.stop()
            where = f"127.0.0.1:{redis_server.port}"
            for srv in (a, b):
                health = await wait_health(srv, 503)
                assert health["ok"] is False and health["error"].startswith(f"Redis at {where} is unreachable (")
            reply = await request(api_a, {"op": "publish", "event": ev(3)})
            assert reply["ok"] is False and reply["error"]["code"] == "unavailable"
            assert reply["error"]["message"].startswith(f"Redis at {where} is unreachable (")
            assert 'norn_broker_up{broker="redis"} 0' in (await http_get(a, "/metrics"))[1]
            for sub in (sub_a, sub_b):
                await (await sub.ping())  # still connected and answered

            await redis_server.start()  # same port, no persistence: an empty stream
            await ready(a)
            await ready(b)
            assert (await wait_health(a, 200))["ok"] is True
            after = await publish(api_a, [ev(4), ev(5)])
            assert parse_id(after[0]) > parse_id(before[-1])
            for sub in (sub_a, sub_b):
                gap, *frames = await recv_n(sub, 3)
                # Redis came back empty: whatever it held but this hub had not read is gone.
                assert gap == {"type": "hub.gap", "appId": "", "payload": {"since": before[-1], "oldest": ""}}
                assert [(f["id"], f["payload"]["n"]) for f in frames] == list(zip(after, [4, 5]))
            metrics = (await http_get(b, "/metrics"))[1]
            assert "norn_redis_reconnects_total 1\n" in metrics
            assert 'norn_broker_up{broker="redis"} 1' in metrics


async def test_restart_with_persistence_delivers_what_redis_kept_once(tmp_path: Path) -> None:
    """After a restart, a hub delivers the kept entries it had not read, and none twice."""
    server = await RedisProcess(free_port(), tmp_path, persist=True).start()
    a = await start_hub(server.url)
    b = await start_hub(server.url)
    try:
        async with asyncio.timeout(TIMEOUT * 2):
            async with connect(f"{b.url}/ws") as sub_b, connect(f"{a.url}/api") as api_a:
                await publish(api_a, [ev(0), ev(1), ev(2)])
                assert ns(await recv_n(sub_b, 3)) == [0, 1, 2]
                await server.stop(graceful=True)
                await wait_health(b, 503)

                # While the hubs cannot reach it, the same data gets two more
                # events from elsewhere (the same files, served on another port).
                elsewhere = RedisProcess(free_port(), tmp_path, persist=True)
                other = RedisBroker(elsewhere.url, history=1000, stream=STREAM)
                try:
                    await elsewhere.start()
                    await other.start(lambda events: None)
                    written = await other.publish(
                        [("test.event", "mail-agent", {"n": 3}), ("test.event", "mail-agent", {"n": 4})]
                    )
                finally:
                    await other.close()
                    await elsewhere.stop(graceful=True)

                await server.start()
                await ready(a)
                await ready(b)
                last = await publish(api_a, [ev(5)])
                frames = await recv_n(sub_b, 3)
                assert [(f["id"], f["payload"]["n"]) for f in frames] == [
                    (written[0].id, 3), (written[1].id, 4), (last[0], 5)
                ]
    finally:
        await a.close()
        await b.close()
        await server.stop()


async def test_hub_starts_without_redis_and_catches_up_when_it_arrives(tmp_path: Path) -> None:
    """Unreachable at start: 503 and refusals; a `since` subscriber waits, then gets its replay."""
    redis = RedisProcess(free_port(), tmp_path)
    srv = await start_hub(redis.url)
    try:
        async with asyncio.timeout(TIMEOUT):
            health = await wait_health(srv, 503)
            assert health["error"] == f"Redis at 127.0.0.1:{redis.port} is unreachable (connection refused)"
            async with connect(f"{srv.url}/api") as api, connect(f"{srv.url}/ws?since=1-0") as waiting:
                reply = await request(api, {"op": "publish", "event": ev(1)})
                assert reply["error"]["code"] == "unavailable"
                assert reply["error"]["message"] == (
                    f"Redis at 127.0.0.1:{redis.port} is unreachable (connection refused); "
                    "nothing was published, try again when the hub is healthy"
                )
                await redis.start()
                await ready(srv)
                ids = await publish(api, [ev(2)])
                assert (await recv(waiting))["type"] == "hub.gap"
                assert (await recv(waiting))["id"] == ids[0]
    finally:
        await srv.close()
        await redis.stop()


async def test_close_is_prompt_and_ends_waiting_replays(tmp_path: Path) -> None:
    """Closing a hub whose Redis is away ends the reader and closes waiting subscribers."""
    srv = await start_hub(f"redis://127.0.0.1:{free_port()}/0")
    async with asyncio.timeout(TIMEOUT):
        async with connect(f"{srv.url}/ws?last=3") as waiting:
            await srv.close()
            await waiting.wait_closed()
            assert waiting.close_code == 1001


async def test_serve_warns_and_keeps_serving_when_redis_is_unreachable() -> None:
    """`norn serve --broker` with Redis down says so on stderr and serves until stopped."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        *norn_argv("serve", "--port", "0", "--broker", f"redis://127.0.0.1:{port}/0", "--redis-stream", "x"),
        stderr=asyncio.subprocess.PIPE, env=norn_env(),
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        async with asyncio.timeout(TIMEOUT):
            listening = (await proc.stderr.readline()).decode()
            warning = (await proc.stderr.readline()).decode()
            assert listening.startswith("norn hub listening on ws://127.0.0.1:") and "broker: redis" in listening
            assert warning == (
                f"norn: warning: Redis at 127.0.0.1:{port} is unreachable (connection refused); "
                "serving anyway, /healthz answers 503 until it does\n"
            )
            proc.send_signal(signal.SIGTERM)
            assert await proc.wait() == 0
            assert b"Traceback" not in await proc.stderr.read()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_keys_are_shared_by_every_hub_and_expire_with_the_window(hubs: tuple[HubServer, HubServer]) -> None:
    """A key published on one hub is a duplicate on the other; Redis keeps it for the window only."""
    a, b = hubs
    await ready(a)
    await ready(b)
    async with asyncio.timeout(TIMEOUT):
        async with connect(f"{a.url}/ws") as sub, connect(f"{a.url}/api") as api_a, connect(f"{b.url}/api") as api_b:
            first = await request(api_a, {"op": "publish", "events": [{**ev(1), "key": "k1"}, {**ev(2), "key": "k1"}]})
            assert first == {"ok": True, "ids": [first["ids"][0]] * 2, "duplicates": [1]}
            again = await request(api_b, {"op": "publish", "event": {**ev(3), "key": "k1"}})
            assert again == {"ok": True, "id": first["ids"][0], "duplicate": True}
            other = await request(api_b, {"op": "publish", "events": [ev(4), {**ev(5), "key": "k2"}]})
            assert "duplicates" not in other
            frames = Frames(sub)
            got = await frames.wait_for(3)
    assert ns(got) == [1, 4, 5] and all("key" not in f for f in got)
    assert isinstance(a.broker, RedisBroker)
    client = aioredis.Redis.from_url(a.broker.where and f"redis://{a.broker.where}/0")
    try:
        ttl = await client.pttl(f"{STREAM}:key:k1")
        assert 0 < ttl <= 600_000
    finally:
        await client.aclose()
