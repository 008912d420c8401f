"""One hub connection: the handshake and its checks, then a `/ws` subscriber or an `/api` peer.

Each connection is an asyncio Protocol driving websockets' Sans-I/O
`ServerProtocol`: websockets parses the handshake and incoming frames, and
the hub's shared frame bytes are written straight to the transport.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
from collections import deque
from typing import TYPE_CHECKING, Any
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

from norn_cli.core.events import Filter, dumps, parse_id
from norn_cli.hub import ui
from norn_cli.hub.fanout import Member
from norn_cli.core.origin import origin_allowed
from norn_cli.core.wire import text_frame

if TYPE_CHECKING:
    from norn_cli.hub.server import HubServer

__all__ = ["Connection", "error_reply"]

log = logging.getLogger("norn.server")
_ws_log = logging.getLogger("norn.ws")  # websockets' own chatter, quiet unless debugging

WRITE_HIGH_WATER = 64 * 1024
_PENDING_REQUESTS = 256  # pipelined /api requests held before we stop reading


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


def error_reply(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "message": message}}


class Connection(asyncio.Protocol):
    """One TCP connection: the handshake, then a `/ws` subscriber or an `/api` peer."""

    __slots__ = (
        "srv", "transport", "proto", "kind", "member", "seen", "ping_due", "requests",
        "wake", "worker", "fragments", "paused_reading", "closing", "peer", "fast", "inbuf", "need",
        "fd", "held", "busy",
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
        self.fd = -1  # the socket, for the hub's direct writes (never under TLS)
        self.held: bytearray | None = None  # /api bytes for websockets, waiting behind requests
        self.busy = False  # the /api worker is answering a burst

    # -------------------------------------------------------- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)  # type: ignore[attr-defined]
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        sock = transport.get_extra_info("socket")
        if sock is not None and self.srv.ssl_context is None:
            self.fd = sock.fileno()
        self.srv.conns.add(self)

    def data_received(self, data: bytes) -> None:
        self.seen = True
        if self.fast:
            data = self._fast_frames(data)
            if not data:
                return
        if self.held is not None:
            self.held += data
            return
        if self.kind == "api" and (self.requests or self.busy):
            # A close frame after pipelined requests must not close the
            # connection before they are answered: websockets sees these
            # bytes once the worker has replied to everything before them.
            self.held = bytearray(data)
            if not self.paused_reading:
                self.paused_reading = True
                assert self.transport is not None
                self.transport.pause_reading()
            return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        """Hand bytes to websockets: the handshake, and frames the fast parser passed on."""
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
        self.fd = -1
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

    def direct_fd(self) -> int:
        t = self.transport
        if self.fd < 0 or self.closing or t is None or t.is_closing() or t.get_write_buffer_size():
            return -1
        return self.fd

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
        if srv.ui and (page := self._dashboard(req, path, query)) is not None:
            self._respond(page)
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
        hosts = headers.get_all("Host")  # same origin: a page this hub served, under its own name
        own = hosts[0] if len(hosts) == 1 else None
        if len(origins) > 1 or not origin_allowed(origin, srv.allowed_origins, host=own, tls=srv.ssl_context is not None):
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

    def _dashboard(self, req: Request, path: str, query: str) -> Response | None:
        """The dashboard's answer for `GET /` and `/ui/...`; None for other paths."""
        hosts, tags = req.headers.get_all("Host"), req.headers.get_all("If-None-Match")
        page = ui.respond(
            path, query, host=hosts[0] if len(hosts) == 1 else None, tls=self.srv.ssl_context is not None,
            if_none_match=", ".join(tags) if tags else None,
        )  # fmt: skip
        if page is None:
            return None
        headers = Headers([("Date", email.utils.formatdate(usegmt=True)), ("Connection", "close"), *page.headers])
        return Response(page.status, page.reason, headers, page.body)

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
            self.busy = True
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
            self.busy = False
            if self.held is not None:
                held, self.held = bytes(self.held), None
                self._feed(held)
                if requests:
                    continue
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
