"""The hub on a socket: listening, auth policy, `/api` ops, /healthz, /metrics, keepalive, shutdown.

Each accepted connection is a `connection.Connection`; this module owns what
is shared between them.
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import ipaddress
import logging
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from websockets.datastructures import Headers
from websockets.protocol import OPEN

from norn_cli import __version__
from norn_cli.hub.brokers.base import Broker, Item, Unavailable
from norn_cli.hub.brokers.memory import MemoryBroker
from norn_cli.hub.connection import Connection, error_reply
from norn_cli.core.errors import ConfigError, EventError, OperationFailed
from norn_cli.core.events import dumps, loads, validate_event
from norn_cli.hub.fanout import Hub, Member
from norn_cli.hub.writer import FanoutWriter, default_threads

__all__ = ["HubServer", "OpHandler", "is_loopback_host", "run_until_signalled", "settle_gc", "tls_context"]

log = logging.getLogger("norn.server")

OpHandler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
"""An extra `/api` op: takes the request, returns the reply's fields or raises
OperationFailed(message, code=...)."""

DEFAULT_MAX_SIZE = 64 * 1024
MERGE_EVENTS = 32  # pipelined publishes folded into one broker call, in events (half the default queue)


def is_loopback_host(host: str) -> bool:
    """True for localhost and loopback addresses (IPv4, IPv6, IPv4-mapped)."""
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        ip = ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def tls_context(certfile: str, keyfile: str | None) -> ssl.SSLContext:
    """A server TLS context, or ConfigError saying which file is wrong."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the TLS certificate {certfile}: {exc}") from None
    return ctx


def _publish_plan(req: dict[str, Any]) -> tuple[list[Item], bool] | dict[str, Any]:
    """A publish request's validated events (and whether it was one `event`), or its error reply."""
    items: list[Item] = []
    if "event" in req:
        try:
            items.append(validate_event(req["event"]))
        except EventError as exc:
            return error_reply("bad_request", exc.message)
        return items, True
    batch = req.get("events")
    if isinstance(batch, list) and batch:
        for i, obj in enumerate(batch):
            try:
                items.append(validate_event(obj))
            except EventError as exc:
                return error_reply("bad_request", f"events[{i}]: {exc.message}; nothing was published")
        return items, False
    if "events" in req:
        return error_reply("bad_request", "\"events\" must be a non-empty array of events")
    return error_reply("bad_request", "publish needs \"event\" (one) or \"events\" (a batch)")


class HubServer:
    """The hub on a socket: `async with HubServer(...) as srv:` serves until closed."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 8800,
        broker: Broker | None = None,
        token: str | None = None,
        allowed_origins: Iterable[str] = (),
        queue_size: int = 64,
        history: int = 10_000,
        max_size: int = DEFAULT_MAX_SIZE,
        ping_interval: float = 20.0,
        close_timeout: float = 5.0,
        stall_grace: float = 0.5,
        ssl_context: ssl.SSLContext | None = None,
        ops: dict[str, OpHandler] | None = None,
        fanout_threads: int | None = None,
        ui: bool = True,
    ) -> None:
        if not token and not is_loopback_host(host):
            raise ConfigError(
                f"refusing to serve /api on non-loopback address {host} without a token; "
                "set --token or NORN_TOKEN, or bind 127.0.0.1"
            )
        self.host = host
        self.port = port
        self.broker = broker if broker is not None else MemoryBroker(history)
        self.writer: FanoutWriter[Member] = FanoutWriter(
            default_threads() if fanout_threads is None else fanout_threads
        )
        self.hub = Hub(self.broker, queue_size=queue_size, stall_grace=stall_grace, writer=self.writer)
        self.merge_events = max(1, min(MERGE_EVENTS, queue_size // 2))
        self.token = token or None
        self.allowed_origins = frozenset(allowed_origins)
        self.max_size = max_size
        self.ping_interval = ping_interval
        self.close_timeout = close_timeout
        self.ssl_context = ssl_context
        self.ui = ui  # the dashboard at GET / (norn_cli.hub.ui); off: 404 as for any unknown path
        self.ops: dict[str, OpHandler] = dict(ops or {})
        self.on_shutdown: list[Callable[[], Awaitable[None]]] = []
        self.conns: set[Connection] = set()
        self.all_closed: asyncio.Event | None = None  # set when the last connection ends, during close()
        self.api_conns = 0
        self.op_counts: dict[str, int] = {}
        self.started = time.time()
        self._server: asyncio.Server | None = None
        self._keepalive: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        """A task the server keeps a reference to until it ends."""
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None
        return self._loop

    @property
    def url(self) -> str:
        scheme = "wss" if self.ssl_context else "ws"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    async def start(self) -> None:
        """Bind and begin serving; `port=0` picks a free port (read `.port`)."""
        self._loop = asyncio.get_running_loop()
        await self.hub.start()
        try:
            self._server = await self._loop.create_server(
                lambda: Connection(self), self.host, self.port, ssl=self.ssl_context,
                reuse_address=True, backlog=4096,
            )  # fmt: skip
        except OSError as exc:
            await self.broker.close()
            raise ConfigError(f"cannot listen on {self.host}:{self.port}: {exc.strerror or exc}") from None
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]
        self.started = time.time()
        if self.ping_interval > 0:
            self._keepalive = self._loop.create_task(self._ping_loop())

    async def close(self, code: int = 1001, reason: str = "hub shutting down") -> None:
        """Stop accepting, finish runs, close every client with `code`, then stop."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        for hook in self.on_shutdown:
            try:
                await hook()
            except Exception:
                log.exception("shutdown hook failed")
        self.hub.flush()
        if self._keepalive is not None:
            self._keepalive.cancel()
        conns = list(self.conns)
        for conn in conns:
            conn.close(code, reason)
        if self.conns:
            self.all_closed = asyncio.Event()
            try:
                async with asyncio.timeout(self.close_timeout):
                    await self.all_closed.wait()
            except TimeoutError:
                pass
        for conn in list(self.conns):
            conn._abort()
        await self.broker.close()
        self.writer.close()

    async def __aenter__(self) -> HubServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def serve_forever(self) -> None:
        assert self._server is not None
        await self._server.serve_forever()

    # -------------------------------------------------------- policies

    def api_refusal(self, headers: Headers, peer_host: str) -> tuple[int, str] | None:
        """Why `/api` is refused for this request (status, message), or None."""
        if self.token is not None:
            auth = headers.get("Authorization", "")
            scheme, _, given = auth.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.token.encode()):
                return 401, "this hub needs a bearer token for /api (Authorization: Bearer <token>)"
            return None
        if "Origin" in headers:
            return 403, "publishing from a web page needs a token; this hub has none"
        if not is_loopback_host(peer_host):
            return 403, "without a token, /api is only for clients on this machine"
        return None

    def count_op(self, op: str) -> None:
        self.op_counts[op] = self.op_counts.get(op, 0) + 1

    # -------------------------------------------------------- /api

    async def handle(self, raw: bytes) -> dict[str, Any]:
        """Answer one `/api` request; never raises."""
        return (await self.handle_run(deque([raw])))[0]

    async def handle_run(self, requests: deque[bytes | Exception]) -> list[dict[str, Any]]:
        """Answer requests from the front of `requests`, in order; never raises.

        Consecutive publishes are ordered by one broker call of at most about
        `merge_events` events (one round trip to Redis instead of one per
        request); each keeps its own reply, and a bad one is refused alone.
        The limit is half a subscriber's queue, so a subscriber that fell
        behind just before cannot overflow from one such call.
        """
        limit = self.merge_events
        replies: list[dict[str, Any]] = []
        held: list[tuple[int, list[Item], bool]] = []  # (reply index, events, one `event`?)
        count = 0
        while requests and count < limit:
            req, refusal = self._parse(requests.popleft())
            if refusal is not None:
                replies.append(refusal)
                continue
            if req["op"] != "publish":
                await self._publish_held(held, replies)
                replies.append(await self._run_op(req))
                continue
            self.count_op("publish")
            plan = _publish_plan(req)
            if isinstance(plan, dict):
                replies.append(plan)
                continue
            items, single = plan
            held.append((len(replies), items, single))
            replies.append({})
            count += len(items)
        await self._publish_held(held, replies)
        return replies

    def _parse(self, raw: bytes | Exception) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """(the request, None), or ({}, the reply refusing it)."""
        refusal = None
        if isinstance(raw, Exception):
            refusal = str(raw)
        else:
            try:
                req = loads(raw)
            except ValueError as exc:
                refusal = f"request is not valid JSON: {exc}"
            else:
                if not isinstance(req, dict):
                    refusal = 'request must be a JSON object like {"op": "publish", ...}'
                elif not isinstance(req.get("op"), str) or not req["op"]:
                    refusal = 'request needs an "op" (publish, status, ...)'
                else:
                    return req, None
        self.count_op("invalid")
        return {}, error_reply("bad_request", refusal)

    async def _publish_held(self, held: list[tuple[int, list[Item], bool]], replies: list[dict[str, Any]]) -> None:
        """Order the held publishes in one broker call and fill in their replies."""
        if not held:
            return
        try:
            events = await self.hub.publish([item for _, items, _ in held for item in items])
        except Unavailable as exc:
            for index, _, _ in held:
                replies[index] = error_reply("unavailable", str(exc))
        except Exception:
            log.exception("publish failed")
            for index, _, _ in held:
                replies[index] = error_reply("internal", "the hub failed to publish; see its log")
        else:
            pos = 0
            for index, items, single in held:
                ids = [ev.id for ev in events[pos : pos + len(items)]]
                pos += len(items)
                replies[index] = {"ok": True, "id": ids[0]} if single else {"ok": True, "ids": ids}
        held.clear()

    async def _run_op(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req["op"]
        try:
            if op == "status":
                self.count_op(op)
                return self.status()
            handler = self.ops.get(op)
            if handler is None:
                self.count_op("unknown")
                known = ", ".join(sorted({"publish", "status", *self.ops}))
                return error_reply("not_found", f"unknown op {op!r} (known: {known})")
            self.count_op(op)
            reply = await handler(req)
            return {"ok": True, **reply}
        except OperationFailed as exc:
            return error_reply(exc.code, exc.message)
        except Unavailable as exc:
            return error_reply("unavailable", str(exc))
        except Exception:
            log.exception("op %s failed", op)
            return error_reply("internal", f"the hub failed to handle {op!r}; see its log")

    def status(self) -> dict[str, Any]:
        hub = self.hub
        return {
            "ok": True,
            "clients": hub.members,
            "publishers": self.api_conns,
            "published": hub.published,
            "delivered": hub.delivered,
            "dropped": hub.dropped,
            "lastId": self.broker.last_id,
            "retained": self.broker.retained,
            "broker": self.broker.name,
            "brokerOk": self.broker.healthy,
            "uptime": round(time.time() - self.started, 3),
            "version": __version__,
        }

    # -------------------------------------------------------- plain HTTP

    def health(self) -> tuple[int, bytes]:
        problem = self.broker.problem
        body: dict[str, Any] = {"ok": problem is None, "clients": self.hub.members, "broker": self.broker.name}
        if problem is not None:
            body["error"] = problem
        return (200 if problem is None else 503), dumps(body) + b"\n"

    def metrics_text(self) -> str:
        hub = self.hub
        lines = [
            "# HELP norn_connections Subscribers connected to /ws.",
            "# TYPE norn_connections gauge",
            f"norn_connections {hub.members}",
            "# HELP norn_api_connections Connections to /api.",
            "# TYPE norn_api_connections gauge",
            f"norn_api_connections {self.api_conns}",
            "# HELP norn_events_in_total Events published.",
            "# TYPE norn_events_in_total counter",
            f"norn_events_in_total {hub.published}",
            "# HELP norn_events_out_total Event frames handed to subscribers.",
            "# TYPE norn_events_out_total counter",
            f"norn_events_out_total {hub.delivered}",
            "# HELP norn_dropped_clients_total Subscribers closed as slow consumers.",
            "# TYPE norn_dropped_clients_total counter",
            f"norn_dropped_clients_total {hub.dropped}",
            "# HELP norn_fanout_threads Threads besides the event loop writing to subscribers.",
            "# TYPE norn_fanout_threads gauge",
            f"norn_fanout_threads {self.writer.threads}",
            "# HELP norn_fanout_short_writes_total Direct writes a subscriber's socket took only part of (the rest was queued).",
            "# TYPE norn_fanout_short_writes_total counter",
            f"norn_fanout_short_writes_total {self.writer.short_writes}",
            "# HELP norn_retained_events Events retained for replay.",
            "# TYPE norn_retained_events gauge",
            f"norn_retained_events {self.broker.retained}",
            "# HELP norn_broker_up 1 while the broker can order events.",
            "# TYPE norn_broker_up gauge",
            f'norn_broker_up{{broker="{self.broker.name}"}} {int(self.broker.healthy)}',
            "# HELP norn_api_requests_total /api requests by op.",
            "# TYPE norn_api_requests_total counter",
        ]
        for op, n in sorted(self.op_counts.items()):
            lines.append(f'norn_api_requests_total{{op="{op}"}} {n}')
        for name, value in self.broker.metrics().items():
            lines.append(f"{name} {value}")
        return "\n".join(lines) + "\n"

    # -------------------------------------------------------- keepalive

    async def _ping_loop(self) -> None:
        """One timer for every connection: ping, and reap peers that stopped answering."""
        while True:
            await asyncio.sleep(self.ping_interval)
            for conn in list(self.conns):
                if conn.kind == "" or conn.closing or conn.proto.state is not OPEN:
                    continue
                if conn.ping_due and not conn.seen:
                    log.info("%s stopped answering pings; closing", conn.peer)
                    if conn.member is not None:
                        self.hub.leave(conn.member)
                        conn.member = None
                    conn.close(1011, "keepalive ping timeout")
                    continue
                conn.seen = False
                conn.ping_due = True
                conn.proto.send_ping(b"norn")
                conn._pump()


def settle_gc() -> None:
    """Tune the cyclic GC for a long-running hub process (once, after startup).

    Events and connections free themselves by reference counting; what the
    collector scans is mostly long-lived: the modules loaded at startup, the
    retained history and the connections. Full collections of all that took
    up to 25 ms with 1,000 subscribers, a stall for every subscriber. So the
    startup objects are frozen out of every later collection, and full
    collections come ten times less often (cyclic garbage of closed
    connections still goes, a little later).
    """
    gc.collect()
    gc.freeze()
    gen0, gen1, _ = gc.get_threshold()
    gc.set_threshold(gen0, gen1, 100)


async def run_until_signalled(srv: HubServer, ready: Callable[[HubServer], None]) -> None:
    """Serve until SIGINT or SIGTERM, then close every client with 1001."""
    import signal

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    await srv.start()
    settle_gc()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        ready(srv)
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await srv.close()
