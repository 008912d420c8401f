"""The hub on a socket: listening, the connections' shared state, keepalive and shutdown.

Each accepted connection is a `connection.Connection` that asks this server
(its `Host`) where a request goes (routing.py), what `/api` answers (api.py)
and what `/healthz` and `/metrics` say (metrics.py).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any

from norn_cli import __version__
from norn_cli.core.errors import ConfigError
from norn_cli.core.origin import is_loopback_host
from norn_cli.hub import metrics
from norn_cli.hub.api import MERGE_EVENTS, Api, OpHandler
from norn_cli.hub.brokers.base import Broker
from norn_cli.hub.brokers.memory import MemoryBroker
from norn_cli.hub.connection import Connection
from norn_cli.hub.fanout import Hub, Member
from norn_cli.hub.limits import Limits
from norn_cli.hub.routing import RequestHeaders, Route, route
from norn_cli.hub.writer import FanoutWriter, default_threads

__all__ = ["HubServer", "run_until_signalled", "settle_gc", "tls_context"]

log = logging.getLogger("norn.server")

DEFAULT_MAX_SIZE = 64 * 1024


def tls_context(certfile: str, keyfile: str | None) -> ssl.SSLContext:
    """A server TLS context, or ConfigError saying which file is wrong."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the TLS certificate {certfile}: {exc}") from None
    return ctx


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
        handshake_timeout: float = 10.0,
        max_connections: int | None = None,
        max_connections_per_ip: int = 0,
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
        self.api = Api(self.hub, self.status, ops=ops, merge_events=max(1, min(MERGE_EVENTS, queue_size // 2)))
        self.token = token or None
        self.allowed_origins = frozenset(allowed_origins)
        self.max_size = max_size
        self.ping_interval = ping_interval
        self.close_timeout = close_timeout
        self.ssl_context = ssl_context
        self.tls = ssl_context is not None
        self.limits = Limits(
            handshake_timeout=handshake_timeout, max_connections=max_connections, max_per_ip=max_connections_per_ip
        )
        self.ui = ui  # the dashboard at GET / (norn_cli.hub.ui); off: 404 as for any unknown path
        self.on_shutdown: list[Callable[[], Awaitable[None]]] = []
        self.on_start: list[Callable[[], Awaitable[None]]] = []  # after the broker starts, before listening
        self.conns: set[Connection] = set()
        self._all_closed: asyncio.Event | None = None  # set when the last connection ends, during close()
        self.started = time.time()
        self._server: asyncio.Server | None = None
        self._keepalive: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def ops(self) -> dict[str, OpHandler]:
        """The extra `/api` ops (the pipeline runner adds its own here)."""
        return self.api.ops

    @property
    def op_counts(self) -> dict[str, int]:
        return self.api.op_counts

    @property
    def api_conns(self) -> int:
        return sum(1 for c in self.conns if c.kind == "api")

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
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
        for hook in self.on_start:
            try:
                await hook()
            except Exception:
                log.exception("startup hook failed")
        try:
            self._server = await self._loop.create_server(
                lambda: Connection(self), self.host, self.port, ssl=self.ssl_context,
                reuse_address=True, backlog=self.limits.backlog,
                ssl_handshake_timeout=(self.limits.handshake_timeout or None) if self.ssl_context else None,
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
            self._all_closed = asyncio.Event()
            try:
                async with asyncio.timeout(self.close_timeout):
                    await self._all_closed.wait()
            except TimeoutError:
                pass
        for conn in list(self.conns):
            conn.abort()
        self.limits.flush_log()
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

    # -------------------------------------------------------- what connections ask (connection.Host)

    @property
    def last_id(self) -> str:
        return self.broker.last_id

    def route(self, target: str, headers: RequestHeaders, peer_host: str) -> Route:
        return route(
            target, headers, peer_host, token=self.token, allowed_origins=self.allowed_origins, tls=self.tls, ui=self.ui
        )

    def page(self, name: str) -> tuple[int, bytes, str]:
        if name == "healthz":
            status, body = metrics.health(self.hub, self.broker)
            return status, body, "application/json"
        return 200, self.metrics_text().encode(), "text/plain; version=0.0.4; charset=utf-8"

    def opened(self, conn: Connection) -> bool:
        """Track a new connection; False when it goes over the hard limit (the caller closes it)."""
        self.conns.add(conn)
        return not self.limits.overloaded(len(self.conns))

    def closed(self, conn: Connection) -> None:
        self.conns.discard(conn)
        if not self.conns and self._all_closed is not None:
            self._all_closed.set()

    # -------------------------------------------------------- status

    def status(self) -> dict[str, Any]:
        """The `status` op's reply."""
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

    def metrics_text(self) -> str:
        return metrics.metrics_text(
            self.hub, self.broker, self.writer, api_conns=self.api_conns, op_counts=self.api.op_counts
        ) + metrics.limits_text(self.limits, len(self.conns))

    async def _ping_loop(self) -> None:
        """One timer for every connection: ping, and reap peers that stopped answering."""
        while True:
            await asyncio.sleep(self.ping_interval)
            for conn in list(self.conns):
                conn.keepalive()


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
