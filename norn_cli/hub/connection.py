"""One hub connection, a byte pump: the handshake, then a `/ws` subscriber or an `/api` peer.

Each connection is an asyncio Protocol driving websockets' Sans-I/O
`ServerProtocol`: websockets parses the handshake and the frames the fast
parser (frames.py) leaves to it; where a request goes is routing.py's
decision, what it answers is api.py's; the hub's shared frame bytes are
written straight to the transport.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
from collections import deque
from collections.abc import Coroutine
from typing import Any, Protocol

from websockets.datastructures import Headers
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import OPEN, State
from websockets.server import ServerProtocol

from norn_cli.core.events import dumps
from norn_cli.core.wire import text_frame
from norn_cli.hub import ui
from norn_cli.hub.api import Api
from norn_cli.hub.fanout import Hub, Member
from norn_cli.hub.frames import PING, TEXT, parse_frames
from norn_cli.hub.limits import RETRY_AFTER, Limits
from norn_cli.hub.routing import Refuse, Route, Subscribe, RequestHeaders

__all__ = ["Connection", "Host"]

log = logging.getLogger("norn.server")
_ws_log = logging.getLogger("norn.ws")  # websockets' own chatter, quiet unless debugging

WRITE_HIGH_WATER = 64 * 1024
_PENDING_REQUESTS = 256  # pipelined /api requests held before we stop reading
_STREAMING = 0.001  # seconds: a publisher sending again this soon after an answer is streaming
_REASONS = {
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 426: "Upgrade Required",
    503: "Service Unavailable",
}  # fmt: skip


class Host(Protocol):
    """What a connection needs of the server that accepted it (the server implements this)."""

    hub: Hub
    api: Api
    max_size: int
    close_timeout: float
    tls: bool
    limits: Limits

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def last_id(self) -> str: ...

    def route(self, target: str, headers: RequestHeaders, peer_host: str) -> Route: ...

    def page(self, name: str) -> tuple[int, bytes, str]:
        """A plain HTTP page ("healthz", "metrics"): status, body, content type."""

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]: ...

    def opened(self, conn: Connection) -> bool:
        """Track a new connection; False when it must be closed at once (over the hard limit)."""

    def closed(self, conn: Connection) -> None: ...


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


class Connection(asyncio.Protocol):
    """One TCP connection: the handshake, then a `/ws` subscriber or an `/api` peer."""

    __slots__ = (
        "srv", "transport", "proto", "kind", "member", "seen", "ping_due", "requests",
        "wake", "worker", "fragments", "paused_reading", "closing", "peer", "fast", "inbuf", "need",
        "fd", "held", "busy", "timer", "counted",
    )  # fmt: skip

    def __init__(self, srv: Host) -> None:
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
        self.timer: asyncio.TimerHandle | None = None  # the handshake deadline
        self.counted: str | None = None  # the peer host, once counted against the connection caps

    # -------------------------------------------------------- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)  # type: ignore[attr-defined]
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        sock = transport.get_extra_info("socket")
        if sock is not None and not self.srv.tls:
            self.fd = sock.fileno()
        if not self.srv.opened(self):
            self.abort()  # over the hard limit: keep descriptors for the hub and its clients
            return
        timeout = self.srv.limits.handshake_timeout
        if timeout > 0:
            self.timer = self.srv.loop.call_later(timeout, self._handshake_expired)

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
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.counted is not None:
            self.srv.limits.release(self.counted)
            self.counted = None
        if self.member is not None:
            self.srv.hub.leave(self.member)
            log.info("subscriber %s disconnected", self.peer)
        if self.kind == "api":
            log.debug("publisher %s disconnected", self.peer)
        self.srv.closed(self)
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
            self.srv.loop.call_later(self.srv.close_timeout, self.abort)
        else:
            self.closing = True
            self.transport.close()

    def abort(self) -> None:
        """Drop the TCP connection without a closing handshake."""
        if self.transport is not None:
            self.transport.abort()  # a no-op once the connection is gone

    def _handshake_expired(self) -> None:
        """No upgrade in time (a slow or idle client, or one not reading its answer): drop it."""
        self.timer = None
        if self.kind or self.transport is None:
            return
        self.srv.limits.timed_out(self.srv.loop)
        self.abort()

    def _upgraded(self) -> None:
        """The handshake is complete: stop its deadline, count the connection against the caps."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.counted = self.peer_host()
        self.srv.limits.admit(self.counted)

    def keepalive(self) -> None:
        """Called every ping interval: close a WebSocket peer that did not answer
        the last ping (1011), else ping it."""
        if self.kind == "" or self.closing or self.proto.state is not OPEN:
            return
        if self.ping_due and not self.seen:
            log.info("%s stopped answering pings; closing", self.peer)
            if self.member is not None:
                self.srv.hub.leave(self.member)
                self.member = None
            self.close(1011, "keepalive ping timeout")
            return
        self.seen = False
        self.ping_due = True
        self.proto.send_ping(b"norn")
        self._pump()

    # -------------------------------------------------------- handshake

    def _respond(self, response: Response) -> None:
        self.proto.send_response(response)

    def _on_request(self, req: Request) -> None:
        srv = self.srv
        decision = srv.route(req.path, req.headers, self.peer_host())
        if isinstance(decision, Subscribe) or decision == "api":
            full = srv.limits.refusal(self.peer_host())
            if full is not None:
                decision = Refuse(503, full)
        if isinstance(decision, Refuse):
            if decision.status in (401, 403):
                log.info("refused %s from %s: %s", req.path.partition("?")[0], self.peer, decision.message)
            body = (decision.message + "\n").encode()
            resp = _response(decision.status, _REASONS[decision.status], body, "text/plain; charset=utf-8")
            if decision.upgrade:
                resp.headers["Upgrade"] = "websocket"
            if decision.status == 503:
                resp.headers["Retry-After"] = str(RETRY_AFTER)
            self._respond(resp)
        elif isinstance(decision, Subscribe):
            self._subscribe(req, decision)
        elif decision == "api":
            self._respond(self.proto.accept(req))
            if self.proto.state is OPEN:
                self._upgraded()
                self.kind = "api"
                self.requests = deque()
                self.worker = srv.spawn(self._serve_api())
                log.debug("publisher %s connected", self.peer)
        elif decision == "ui":
            self._respond(self._dashboard(req))
        else:
            status, body, ctype = srv.page(decision)
            self._respond(_response(status, "OK" if status == 200 else "Service Unavailable", body, ctype))

    def _subscribe(self, req: Request, sub: Subscribe) -> None:
        srv = self.srv
        response = self.proto.accept(req)
        if response.status_code == 101:
            # Where this subscription starts: a client that loses the
            # connection before its first event resumes after this id.
            response.headers["Norn-Last-Id"] = srv.last_id or "0-0"
        self._respond(response)
        if self.proto.state is OPEN:
            self._upgraded()
            self.kind = "ws"
            self._pump()  # the 101 goes out before any replayed event
            log.info("subscriber %s connected (%s)", self.peer, sub.query or "all events")
            self.member = srv.hub.add(self, sub.flt)
            if sub.since is None and sub.last is None:
                srv.hub.join(self.member)
            else:
                srv.spawn(srv.hub.catch_up(self.member, since=sub.since, last=sub.last))

    def _dashboard(self, req: Request) -> Response:
        """The dashboard's answer for `GET /` and `/ui/...` (routing sent it here)."""
        path, _, query = req.path.partition("?")
        hosts, tags = req.headers.get_all("Host"), req.headers.get_all("If-None-Match")
        page = ui.respond(
            path, query, host=hosts[0] if len(hosts) == 1 else None, tls=self.srv.tls,
            if_none_match=", ".join(tags) if tags else None,
        )  # fmt: skip
        assert page is not None  # routing.route only says "ui" for the dashboard's paths
        headers = Headers([("Date", email.utils.formatdate(usegmt=True)), ("Connection", "close"), *page.headers])
        return Response(page.status, page.reason, headers, page.body)

    def peer_host(self) -> str:
        peer = self.transport.get_extra_info("peername") if self.transport else None
        return peer[0] if isinstance(peer, tuple) else ""

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
        """Take the common /api frames (frames.py); return the bytes from the
        first frame it leaves to websockets on, which then handles the rest."""
        if self.inbuf is not None:
            # Append, and parse again only once the frame can be whole, so a
            # frame trickling in byte by byte costs linear time.
            self.inbuf += data
            if len(self.inbuf) < self.need:
                return b""
            data, self.inbuf = bytes(self.inbuf), None
        if self.closing or self.proto.state is not OPEN:
            self.fast = False
            return data
        frames: list[tuple[int, bytes]] = []
        pos, need = parse_frames(data, self.srv.max_size, frames)
        for first, payload in frames:
            if first == TEXT:
                self._enqueue(payload)
            elif first == PING:
                assert self.transport is not None
                self.transport.write(bytes((0x8A, len(payload))) + payload)
            else:
                self.ping_due = False
        if pos == len(data):
            return b""
        if need:
            return self._hold(data, pos, need)
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
        gather = hub.broker.publish_waits
        answered = -1.0  # when the last run was answered (loop time)
        while True:
            if not requests:
                self.wake = loop.create_future()
                await self.wake
                self.wake = None
            self.busy = True
            while requests:
                if gather and loop.time() - answered < _STREAMING:
                    # A streaming publisher sends its next requests a few
                    # microseconds apart: let the loop read the rest first, so
                    # they are stored and written to each subscriber together
                    # (benchmarks/README.md, "Runs of a streaming publisher").
                    await asyncio.sleep(0)
                if hub.congested:
                    # A subscriber is behind but may still be draining: deliver
                    # what we have, then hold this publisher for it.
                    hub.flush()
                    await hub.wait_for_room(loop.time())
                    if not requests:
                        break
                # Each run's acks as soon as it is done: the next run may wait
                # for a commit (SQLite), and a publisher whose acks were held
                # that long would stop at its window of unacknowledged requests.
                self._answer([dumps(r) for r in await srv.api.handle_run(requests)])
                answered = loop.time()
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

