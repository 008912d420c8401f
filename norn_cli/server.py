"""The hub's network edge: routes, handshake checks, auth, limits, /healthz, /metrics, shutdown.

Each connection is an asyncio Protocol driving websockets' Sans-I/O
`ServerProtocol`: websockets parses the handshake and incoming frames, and
the hub's shared frame bytes are written straight to the transport.
"""

from __future__ import annotations

import asyncio
import email.utils
import gc
import hmac
import ipaddress
import logging
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl

from websockets.datastructures import Headers
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import OPEN, State
from websockets.server import ServerProtocol

try:  # the C speed-up websockets itself uses to unmask frames
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover
    from websockets.utils import apply_mask

from norn_cli import __version__
from norn_cli.broker import Broker, Item, MemoryBroker, Unavailable
from norn_cli.errors import ConfigError, EventError, OperationFailed
from norn_cli.events import Filter, dumps, loads, parse_id, validate_event
from norn_cli.hub import Hub, Member
from norn_cli.origin import origin_allowed
from norn_cli.wire import text_frame

__all__ = ["HubServer", "OpHandler", "is_loopback_host", "run_until_signalled", "settle_gc", "tls_context"]

log = logging.getLogger("norn.server")
_ws_log = logging.getLogger("norn.ws")  # websockets' own chatter, quiet unless debugging

OpHandler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
"""An extra `/api` op: takes the request, returns the reply's fields or raises
OperationFailed(message, code=...)."""

DEFAULT_MAX_SIZE = 64 * 1024
WRITE_HIGH_WATER = 64 * 1024
_PENDING_REQUESTS = 256  # pipelined /api requests held before we stop reading
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


def _response(status: int, reason: str, body: bytes, ctype: str) -> Response:
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Length", str(len(body))),
            ("Content-Type", ctype),
        ]
    )
    return Response(status, reason, headers, body)


def _error_reply(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "message": message}}


class _Conn(asyncio.Protocol):
    """One TCP connection: the handshake, then a `/ws` subscriber or an `/api` peer."""

    __slots__ = (
        "srv", "transport", "proto", "kind", "member", "seen", "ping_due", "requests",
        "wake", "worker", "fragments", "paused_reading", "closing", "peer", "fast", "inbuf", "need",
    )  # fmt: skip

    def __init__(self, srv: HubServer) -> None:
        self.srv = srv
        self.transport: asyncio.Transport | None = None
        self.proto = ServerProtocol(max_size=srv.max_size, logger=_ws_log)
        self.kind = ""  # "", "ws" or "api"
        self.member: Member | None = None
        self.seen = True
        self.ping_due = False
        self.requests: deque[bytes | Exception] | None = None
        self.wake: asyncio.Future[None] | None = None
        self.worker: asyncio.Task[None] | None = None
        self.fragments: bytearray | None = None
        self.paused_reading = False
        self.closing = False
        self.peer = ""
        self.fast = False  # /api frames parsed by _fast_frames, not websockets
        self.inbuf: bytearray | None = None  # a partial frame held by _fast_frames
        self.need = 0  # bytes inbuf must hold before parsing it again

    # -------------------------------------------------------- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)  # type: ignore[attr-defined]
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.srv.conns.add(self)

    def data_received(self, data: bytes) -> None:
        self.seen = True
        if self.fast:
            data = self._fast_frames(data)
            if not data:
                return
        proto = self.proto
        proto.receive_data(data)
        for ev in proto.events_received():
            if isinstance(ev, Request):
                self._on_request(ev)
                # Take over /api frame parsing only when websockets has seen
                # nothing past the request, so it can resume at a frame edge.
                if self.kind == "api" and data.find(b"\r\n\r\n") == len(data) - 4:
                    self.fast = True
            elif isinstance(ev, Frame):
                self._on_frame(ev)
        self._pump()

    def eof_received(self) -> bool | None:
        self.proto.receive_eof()
        self._pump()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        srv = self.srv
        srv.conns.discard(self)
        if not srv.conns and srv.all_closed is not None:
            srv.all_closed.set()
        if self.member is not None:
            srv.hub.leave(self.member)
            log.info("subscriber %s disconnected", self.peer)
        if self.kind == "api":
            srv.api_conns -= 1
            log.debug("publisher %s disconnected", self.peer)
        if self.worker is not None:
            self.worker.cancel()
        if self.wake is not None and not self.wake.done():
            self.wake.cancel()

    def pause_writing(self) -> None:
        if self.member is not None:
            self.srv.hub.pause(self.member, self.srv.loop.time())

    def resume_writing(self) -> None:
        if self.member is not None:
            self.srv.hub.resume(self.member)

    # -------------------------------------------------------- sink for the hub

    def write(self, data: bytes) -> None:
        if not self.closing:
            assert self.transport is not None
            self.transport.write(data)

    def drop(self, code: int, reason: str) -> None:
        log.info("subscriber %s dropped: %s", self.peer, reason)
        self.member = None
        self.close(code, reason)

    # -------------------------------------------------------- plumbing

    def _pump(self) -> None:
        """Send what websockets wants sent; close the socket when it says so."""
        transport = self.transport
        if transport is None:
            return
        for chunk in self.proto.data_to_send():
            if chunk:
                transport.write(chunk)
            else:  # websockets' end-of-stream marker: the TCP side is done
                self.closing = True
                transport.close()
        if self.proto.state is State.CLOSED and not transport.is_closing():
            transport.close()

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake; abort if the peer does not finish it."""
        if self.closing or self.transport is None:
            return
        if self.proto.state is OPEN:
            self.proto.send_close(code, reason)
            self._pump()
            self.closing = True
            self.srv.loop.call_later(self.srv.close_timeout, self._abort)
        else:
            self.closing = True
            self.transport.close()

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()  # a no-op once the connection is gone

    # -------------------------------------------------------- handshake

    def _respond(self, response: Response) -> None:
        self.proto.send_response(response)

    def _reject(self, status: int, reason: str, message: str) -> None:
        body = (message + "\n").encode()
        self._respond(_response(status, reason, body, "text/plain; charset=utf-8"))

    def _on_request(self, req: Request) -> None:
        srv = self.srv
        path, _, query = req.path.partition("?")
        if path == "/healthz":
            status, body = srv.health()
            reason = "OK" if status == 200 else "Service Unavailable"
            self._respond(_response(status, reason, body, "application/json"))
            return
        if path == "/metrics":
            body = srv.metrics_text().encode()
            self._respond(_response(200, "OK", body, "text/plain; version=0.0.4; charset=utf-8"))
            return
        if path not in ("/ws", "/api"):
            self._reject(404, "Not Found", f"no such endpoint {path}; try /ws, /api, /healthz or /metrics")
            return
        headers = req.headers
        if "websocket" not in headers.get("Upgrade", "").lower():
            resp = _response(426, "Upgrade Required", f"{path} is a WebSocket endpoint; connect with a WebSocket client\n".encode(), "text/plain; charset=utf-8")
            resp.headers["Upgrade"] = "websocket"
            self._respond(resp)
            return
        origins = headers.get_all("Origin")
        origin = origins[0] if origins else None
        if len(origins) > 1 or not origin_allowed(origin, srv.allowed_origins):
            log.info("refused %s from %s: origin %r not allowed", path, self.peer, origin)
            self._reject(403, "Forbidden", f"origin {origin!r} is not allowed")
            return
        if path == "/api":
            refusal = srv.api_refusal(headers, self.peer_host())
            if refusal is not None:
                status, message = refusal
                log.info("refused /api from %s: %s", self.peer, message)
                self._reject(status, "Unauthorized" if status == 401 else "Forbidden", message)
                return
            self._accept(req)
            if self.proto.state is OPEN:
                self.kind = "api"
                srv.api_conns += 1
                self.requests = deque()
                self.worker = srv.spawn(self._serve_api())
                log.debug("publisher %s connected", self.peer)
            return
        try:
            flt, since, last = _parse_subscription(query)
        except ValueError as exc:
            self._reject(400, "Bad Request", str(exc))
            return
        response = self.proto.accept(req)
        if response.status_code == 101:
            # Where this subscription starts: a client that loses the
            # connection before its first event resumes after this id.
            response.headers["Norn-Last-Id"] = srv.broker.last_id or "0-0"
        self._respond(response)
        if self.proto.state is OPEN:
            self.kind = "ws"
            self._pump()  # the 101 goes out before any replayed event
            log.info("subscriber %s connected (%s)", self.peer, query or "all events")
            self.member = srv.hub.add(self, flt)
            if since is None and last is None:
                srv.hub.join(self.member)
            else:
                srv.spawn(srv.hub.catch_up(self.member, since=since, last=last))

    def peer_host(self) -> str:
        peer = self.transport.get_extra_info("peername") if self.transport else None
        return peer[0] if isinstance(peer, tuple) else ""

    def _accept(self, req: Request) -> None:
        self._respond(self.proto.accept(req))

    # -------------------------------------------------------- frames

    def _on_frame(self, frame: Frame) -> None:
        op = frame.opcode
        if op is Opcode.PONG:
            self.ping_due = False
            return
        if self.kind != "api" or op is Opcode.CLOSE:
            return  # /ws frames only keep the connection alive
        if op is Opcode.TEXT or op is Opcode.BINARY:
            if not frame.fin:
                self.fragments = bytearray(frame.data) if op is Opcode.TEXT else None
                if op is Opcode.BINARY:
                    self._enqueue(ValueError("requests are JSON text frames, not binary"))
                return
            if op is Opcode.BINARY:
                self._enqueue(ValueError("requests are JSON text frames, not binary"))
            else:
                self._enqueue(bytes(frame.data))
        elif op is Opcode.CONT and self.fragments is not None:
            self.fragments += frame.data
            if frame.fin:
                data, self.fragments = bytes(self.fragments), None
                self._enqueue(data)

    def _fast_frames(self, data: bytes) -> bytes:
        """Parse the common /api frames here (whole, masked text frames, pings and
        pongs), about four times cheaper than websockets' generic parser.

        Anything else (close, binary, fragments, oversize, protocol errors) and
        everything after it is returned for websockets to handle, from that
        frame's first byte on; websockets has seen nothing since the
        handshake, so it resumes at a frame boundary.
        """
        if self.inbuf is not None:
            # Append, and parse again only once the frame can be whole, so a
            # frame trickling in byte by byte costs linear time.
            self.inbuf += data
            if len(self.inbuf) < self.need:
                return b""
            data, self.inbuf = bytes(self.inbuf), None
        n = len(data)
        pos = 0
        max_size = self.srv.max_size
        while True:
            if pos == n:
                return b""
            if self.closing or self.proto.state is not OPEN:
                break
            if n - pos < 2:
                return self._hold(data, pos, 2)
            b0 = data[pos]
            b1 = data[pos + 1]
            length = b1 & 0x7F
            if not b1 & 0x80:
                break  # unmasked: websockets closes with 1002
            if b0 != 0x81 and not ((b0 == 0x89 or b0 == 0x8A) and length <= 125):
                break  # not a final text frame, ping or pong
            head = pos + (6 if length < 126 else 8 if length == 126 else 14)
            if n < head:
                return self._hold(data, pos, head - pos)
            if length == 126:
                length = int.from_bytes(data[pos + 2 : pos + 4], "big")
            elif length == 127:
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
            if length > max_size:
                break  # too big: websockets closes with 1009
            end = head + length
            if end > n:
                return self._hold(data, pos, end - pos)
            payload = apply_mask(data[head:end], data[head - 4 : head])
            pos = end
            if b0 == 0x81:
                self._enqueue(payload)
            elif b0 == 0x89:
                assert self.transport is not None
                self.transport.write(bytes((0x8A, length)) + payload)
            else:
                self.ping_due = False
        self.fast = False
        return data[pos:]

    def _hold(self, data: bytes, pos: int, need: int) -> bytes:
        """Keep a partial frame from `pos` until `need` bytes of it are here."""
        self.inbuf = bytearray(data[pos:])
        self.need = need
        return b""

    def _enqueue(self, item: bytes | Exception) -> None:
        assert self.requests is not None
        self.requests.append(item)
        if self.wake is not None and not self.wake.done():
            self.wake.set_result(None)
        if len(self.requests) >= _PENDING_REQUESTS and not self.paused_reading:
            self.paused_reading = True
            assert self.transport is not None
            self.transport.pause_reading()

    async def _serve_api(self) -> None:
        srv = self.srv
        hub = srv.hub
        requests = self.requests
        assert requests is not None and self.transport is not None
        loop = srv.loop
        while True:
            if not requests:
                self.wake = loop.create_future()
                await self.wake
                self.wake = None
            replies: list[bytes] = []
            while requests:
                if hub.congested:
                    # A subscriber is behind but may still be draining: deliver
                    # and ack what we have, then hold this publisher for it.
                    self._answer(replies)
                    replies = []
                    await hub.wait_for_room(loop.time())
                    if not requests:
                        break
                replies.extend(dumps(r) for r in await srv.handle_run(requests))
            self._answer(replies)
            if self.paused_reading:
                self.paused_reading = False
                self.transport.resume_reading()

    def _answer(self, replies: list[bytes]) -> None:
        """Send queued events to subscribers first, then the acks, in one write."""
        self.srv.hub.flush()
        if replies and self.proto.state is OPEN and not self.closing:
            # One transport write for the burst (a syscall per reply was a
            # quarter of the /api path's time). Server frames are unmasked,
            # so they are built like the hub's own; websockets' outgoing
            # buffer is always empty between callbacks.
            assert self.transport is not None
            self.transport.write(b"".join([text_frame(r) for r in replies]))


def _publish_plan(req: dict[str, Any]) -> tuple[list[Item], bool] | dict[str, Any]:
    """A publish request's validated events (and whether it was one `event`), or its error reply."""
    items: list[Item] = []
    if "event" in req:
        try:
            items.append(validate_event(req["event"]))
        except EventError as exc:
            return _error_reply("bad_request", exc.message)
        return items, True
    batch = req.get("events")
    if isinstance(batch, list) and batch:
        for i, obj in enumerate(batch):
            try:
                items.append(validate_event(obj))
            except EventError as exc:
                return _error_reply("bad_request", f"events[{i}]: {exc.message}; nothing was published")
        return items, False
    if "events" in req:
        return _error_reply("bad_request", "\"events\" must be a non-empty array of events")
    return _error_reply("bad_request", "publish needs \"event\" (one) or \"events\" (a batch)")


def _parse_subscription(query: str) -> tuple[Filter, Any, int | None]:
    apps: list[str] = []
    types: list[str] = []
    since = None
    last = None
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name == "app":
            apps.extend(v for v in value.split(",") if v)
        elif name == "type":
            types.extend(v for v in value.split(",") if v)
        elif name == "since":
            if value:
                since = parse_id(value)
        elif name == "last":
            try:
                last = int(value)
            except ValueError:
                raise ValueError(f"last must be a whole number, got {value!r}") from None
            if last < 0:
                raise ValueError(f"last must be zero or more, got {value!r}")
    return Filter(apps, types), since, last


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
    ) -> None:
        if not token and not is_loopback_host(host):
            raise ConfigError(
                f"refusing to serve /api on non-loopback address {host} without a token; "
                "set --token or NORN_TOKEN, or bind 127.0.0.1"
            )
        self.host = host
        self.port = port
        self.broker = broker if broker is not None else MemoryBroker(history)
        self.hub = Hub(self.broker, queue_size=queue_size, stall_grace=stall_grace)
        self.merge_events = max(1, min(MERGE_EVENTS, queue_size // 2))
        self.token = token or None
        self.allowed_origins = frozenset(allowed_origins)
        self.max_size = max_size
        self.ping_interval = ping_interval
        self.close_timeout = close_timeout
        self.ssl_context = ssl_context
        self.ops: dict[str, OpHandler] = dict(ops or {})
        self.on_shutdown: list[Callable[[], Awaitable[None]]] = []
        self.conns: set[_Conn] = set()
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
                lambda: _Conn(self), self.host, self.port, ssl=self.ssl_context,
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
        return {}, _error_reply("bad_request", refusal)

    async def _publish_held(self, held: list[tuple[int, list[Item], bool]], replies: list[dict[str, Any]]) -> None:
        """Order the held publishes in one broker call and fill in their replies."""
        if not held:
            return
        try:
            events = await self.hub.publish([item for _, items, _ in held for item in items])
        except Unavailable as exc:
            for index, _, _ in held:
                replies[index] = _error_reply("unavailable", str(exc))
        except Exception:
            log.exception("publish failed")
            for index, _, _ in held:
                replies[index] = _error_reply("internal", "the hub failed to publish; see its log")
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
                return _error_reply("not_found", f"unknown op {op!r} (known: {known})")
            self.count_op(op)
            reply = await handler(req)
            return {"ok": True, **reply}
        except OperationFailed as exc:
            return _error_reply(exc.code, exc.message)
        except Unavailable as exc:
            return _error_reply("unavailable", str(exc))
        except Exception:
            log.exception("op %s failed", op)
            return _error_reply("internal", f"the hub failed to handle {op!r}; see its log")

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
