"""Talking to a hub: connecting with clear errors, request/reply on /api,
pipelined publishing, and a subscription that reconnects and resumes from the last id."""

from __future__ import annotations

import asyncio
import email.utils
import errno
import random
import ssl
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from norn_cli.core.errors import ConfigError, HubUnreachable, OperationFailed, Unauthorized
from norn_cli.client.endpoint import Endpoint
from norn_cli.core.events import dumps, loads

__all__ = ["ApiClient", "ConnectionState", "Frame", "open_connection", "publish_stream", "subscribe"]

Notice = Callable[[str], None]
MAX_EVENT_FRAME = 1 << 20
BATCH_BYTES = 60 * 1024  # the hub refuses frames over 64 KiB
BATCH_EVENTS = 1000


def _ssl_context(endpoint: Endpoint, cafile: str | None) -> ssl.SSLContext | None:
    if not endpoint.secure:
        return None
    try:
        return ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the CA file {cafile}: {exc}") from None


async def open_connection(
    url: str,
    endpoint: Endpoint,
    *,
    token: str | None = None,
    cafile: str | None = None,
    open_timeout: float = 10.0,
) -> ClientConnection:
    """Connect to a hub path, turning every failure into one clear NornError."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        return await connect(
            url, additional_headers=headers, ssl=_ssl_context(endpoint, cafile),
            open_timeout=open_timeout, max_size=MAX_EVENT_FRAME, compression=None,
            user_agent_header="norn",
        )  # fmt: skip
    except InvalidStatus as exc:
        status = exc.response.status_code
        body = bytes(exc.response.body or b"").decode(errors="replace").strip()
        detail = f": {body}" if body else ""
        if status == 401 and token is None:
            raise Unauthorized(f"the hub at {endpoint} needs a token: pass --token (or --token-file) or set NORN_TOKEN") from None
        if status == 401:
            raise Unauthorized(f"the hub at {endpoint} refused this token (HTTP 401); check --token / NORN_TOKEN") from None
        if status == 403:
            raise Unauthorized(f"the hub at {endpoint} refused us (HTTP {status}){detail}") from None
        raise HubUnreachable(f"the hub at {endpoint} answered HTTP {status}{detail}", reason=f"HTTP {status}{detail}") from None
    except InvalidURI as exc:
        raise ConfigError(f"bad hub URL {url!r}: {exc}") from None
    except ssl.SSLCertVerificationError as exc:
        raise HubUnreachable(
            f"cannot verify the TLS certificate of the hub at {endpoint} ({exc.verify_message or exc.reason}); "
            "if a private CA signed it, pass --cafile CA.pem"
        ) from None
    except ssl.SSLError as exc:
        if exc.reason in _NOT_TLS_REASONS:
            raise HubUnreachable(f"cannot reach the hub at {endpoint}: this is not a TLS port, use ws://") from None
        raise HubUnreachable(f"TLS with the hub at {endpoint} failed: {exc.reason or exc}") from None
    except (OSError, TimeoutError, InvalidHandshake, EOFError) as exc:
        if not isinstance(exc, TimeoutError) and not (isinstance(exc, OSError) and exc.errno == errno.ECONNREFUSED):
            await _raise_if_scheme_is_wrong(endpoint)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else (str(exc) or type(exc).__name__)
        if isinstance(exc, TimeoutError):
            reason = "timed out"
        elif isinstance(exc, OSError) and exc.errno == errno.ECONNREFUSED:
            reason = "connection refused"
        raise HubUnreachable(f"cannot reach the hub at {endpoint}: {reason}", reason=reason) from None


# What OpenSSL says when the other end does not speak TLS (an HTTP server answering a ClientHello).
_NOT_TLS_REASONS = frozenset({"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG", "HTTP_REQUEST", "UNEXPECTED_EOF_WHILE_READING"})


async def _speaks_tls(host: str, port: int) -> bool:
    """Whether host:port completes a TLS handshake (certificate not checked: this only tells the scheme)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        async with asyncio.timeout(2):
            _reader, writer = await asyncio.open_connection(host, port, ssl=ctx)
            writer.close()
            try:
                await writer.wait_closed()
            except (OSError, ssl.SSLError):
                pass
    except (OSError, TimeoutError, ssl.SSLError):
        return False
    return True


async def _raise_if_scheme_is_wrong(endpoint: Endpoint) -> None:
    """A handshake that broke off: a TLS port spoken to with ws:// (or a plain one with wss://) says so."""
    host, port = endpoint.host_port()
    tls = await _speaks_tls(host, port)
    if tls and not endpoint.secure:
        raise HubUnreachable(f"cannot reach the hub at {endpoint}: this is a TLS port, use wss://")
    if not tls and endpoint.secure:
        raise HubUnreachable(f"cannot reach the hub at {endpoint}: this is not a TLS port, use ws://")


def _raise_for_reply(reply: Any) -> dict[str, Any]:
    if not isinstance(reply, dict):
        raise OperationFailed("the hub sent a reply that is not a JSON object", code="internal")
    if reply.get("ok"):
        return reply
    err = reply.get("error") or {}
    code = str(err.get("code", "internal"))
    message = str(err.get("message", "the hub refused the request"))
    if code == "unauthorized":
        raise Unauthorized(message)
    raise OperationFailed(message, code=code)


class ApiClient:
    """A connection to `/api`: `async with ApiClient(ep) as api: await api.request({...})`."""

    def __init__(self, endpoint: Endpoint, *, token: str | None = None, cafile: str | None = None) -> None:
        self.endpoint = endpoint
        self.token = token
        self.cafile = cafile
        self._ws: ClientConnection | None = None

    async def __aenter__(self) -> ApiClient:
        self._ws = await open_connection(
            self.endpoint.api_url, self.endpoint, token=self.token, cafile=self.cafile
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._ws is not None:
            await self._ws.close()

    @property
    def ws(self) -> ClientConnection:
        assert self._ws is not None, "use `async with ApiClient(...)`"
        return self._ws

    async def request(self, req: dict[str, Any]) -> dict[str, Any]:
        """Send one request and return its reply; raise when the hub says no."""
        try:
            await self.ws.send(dumps(req).decode())
            raw = await self.ws.recv()
        except ConnectionClosed as exc:
            raise HubUnreachable(f"lost the hub at {self.endpoint}: {_closed_reason(exc)}") from None
        return _raise_for_reply(loads(raw))

    async def pipeline(
        self, requests: AsyncIterable[dict[str, Any]] | Iterable[dict[str, Any]], *, window: int = 16
    ) -> AsyncIterator[dict[str, Any]]:
        """Send requests without waiting for each reply (at most `window` in flight);
        yield the replies in order. Stops at the first refusal, raising it."""
        ws = self.ws
        slots = asyncio.Semaphore(window)
        sent = 0
        done_sending = asyncio.Event()

        async def sender() -> None:
            nonlocal sent
            it: Any = requests
            if isinstance(it, AsyncIterable):
                async for req in it:
                    await slots.acquire()
                    await ws.send(dumps(req).decode())
                    sent += 1
            else:
                for req in it:
                    await slots.acquire()
                    await ws.send(dumps(req).decode())
                    sent += 1
            done_sending.set()

        task = asyncio.create_task(sender())
        received = 0
        try:
            while True:
                if done_sending.is_set() and received >= sent:
                    break
                recv = asyncio.ensure_future(ws.recv())
                await asyncio.wait({recv, task}, return_when=asyncio.FIRST_COMPLETED)
                if not recv.done():
                    if task.done() and task.exception() is not None:
                        recv.cancel()
                        raise task.exception()  # type: ignore[misc]
                    if done_sending.is_set() and received >= sent:
                        recv.cancel()
                        break
                    raw = await recv
                else:
                    raw = recv.result()
                received += 1
                slots.release()
                yield _raise_for_reply(loads(raw))
            await task
        except ConnectionClosed as exc:
            raise HubUnreachable(f"lost the hub at {self.endpoint}: {_closed_reason(exc)}") from None
        finally:
            if not task.done():
                task.cancel()


def _batches(events: Iterable[dict[str, Any]]) -> Iterable[dict[str, Any]]:
    """Group events into publish requests that stay under the hub's frame limit."""
    batch: list[dict[str, Any]] = []
    size = 0
    for ev in events:
        n = len(dumps(ev)) + 1
        if batch and (size + n > BATCH_BYTES or len(batch) >= BATCH_EVENTS):
            yield {"op": "publish", "events": batch}
            batch, size = [], 0
        batch.append(ev)
        size += n
    if batch:
        yield {"op": "publish", "events": batch}


async def publish_stream(api: ApiClient, events: Iterable[dict[str, Any]], *, window: int = 8) -> AsyncIterator[str]:
    """Publish many events over one connection, batched and pipelined; yield their ids in order."""
    async for reply in api.pipeline(_batches(events), window=window):
        for event_id in reply.get("ids", ()):
            yield event_id


def _closed_reason(exc: ConnectionClosed) -> str:
    rcvd = exc.rcvd
    if rcvd is None:
        return "the connection dropped"
    if rcvd.code == 1013:
        return "it dropped us as a slow consumer"
    if rcvd.code == 1001:
        return "it is shutting down"
    return f"it closed the connection ({rcvd.code}{' ' + rcvd.reason if rcvd.reason else ''})"


def _query(apps: Sequence[str], types: Sequence[str], since: str | None, last: int | None) -> list[tuple[str, Any]]:
    q: list[tuple[str, Any]] = [("app", a) for a in apps] + [("type", t) for t in types]
    if since:
        q.append(("since", since))
    if last is not None:
        q.append(("last", last))
    return q


class Frame(NamedTuple):
    """One frame from `/ws`: the decoded envelope and the text exactly as received."""

    envelope: dict[str, Any]
    raw: str


def _resume_anchor(ws: ClientConnection) -> str | None:
    """The id this subscription started after, so that one which has seen no
    event yet resumes there and loses nothing published while it was away.

    norn's hub says it exactly (`Norn-Last-Id`). For other hubs it is taken
    from the `Date` header, with one-second resolution: at worst a few events
    published in the second before the subscription are replayed too.
    """
    response = ws.response
    exact = response.headers.get("Norn-Last-Id") if response is not None else None
    if exact:
        return exact
    date = response.headers.get("Date") if response is not None else None
    if not date:
        return None
    try:
        seconds = int(email.utils.parsedate_to_datetime(date).timestamp())
    except (TypeError, ValueError, OverflowError):
        return None
    return f"{seconds * 1000 - 1}-999999999999999"


@dataclass(frozen=True)
class ConnectionState:
    """A change in a subscription's connection, for the caller to show as it likes.

    `lost`: the connection dropped (`reason` says why). `retrying`: attempt
    number `attempt` since then failed (`reason`), the next comes in `delay`
    seconds. `back`: connected again on attempt `attempt`, resuming after
    `resume_after` (None: from where the subscription started).
    """

    kind: Literal["lost", "retrying", "back"]
    hub: str
    reason: str = ""
    attempt: int = 0
    delay: float = 0.0
    resume_after: str | None = None


async def subscribe(
    endpoint: Endpoint,
    *,
    apps: Sequence[str] = (),
    types: Sequence[str] = (),
    since: str | None = None,
    last: int | None = None,
    reconnect: bool = True,
    cafile: str | None = None,
    on_state: Callable[[ConnectionState], None] | None = None,
    give_up_after: float | None = None,
    backoff: tuple[float, float] = (0.2, 5.0),
    on_connect: Notice | None = None,
) -> AsyncGenerator[Frame, None]:
    """Stream frames from `/ws`, filtered by the hub: each envelope beside its text as received.

    After a lost connection (restart, network, a slow-consumer drop) it
    reconnects with exponential backoff and jitter and resumes from the last
    id it yielded, so nothing still retained is lost or repeated. The first
    connection failing, `reconnect=False`, or `give_up_after` seconds without
    a connection raise HubUnreachable. `on_state` hears each change of the
    connection (lost, each failed attempt, back); `on_connect` is told the
    URL each time a connection is established.
    """
    tell = on_state or (lambda _state: None)
    hub = str(endpoint)
    attempt = 0
    last_id = since
    anchor: str | None = None
    connected_once = False
    delay = backoff[0]
    lost_at: float | None = None
    loop = asyncio.get_running_loop()
    while True:
        resume = last_id or anchor
        url = endpoint.ws_url(_query(apps, types, resume, last if resume is None else None))
        try:
            ws = await open_connection(url, endpoint, cafile=cafile)
        except HubUnreachable as exc:
            if not connected_once or not reconnect:
                raise
            attempt += 1
            if give_up_after is not None and lost_at is not None and loop.time() - lost_at > give_up_after:
                raise HubUnreachable(f"{exc.message}; gave up after {give_up_after:g}s") from None
            pause = delay * (0.5 + random.random())
            tell(ConnectionState("retrying", hub, exc.reason, attempt, pause))
            await asyncio.sleep(pause)
            delay = min(delay * 2, backoff[1])
            continue
        if connected_once:
            tell(ConnectionState("back", hub, attempt=attempt + 1, resume_after=last_id))
        elif last_id is None and last is None:
            anchor = _resume_anchor(ws)
        if on_connect is not None:
            on_connect(url)
        connected_once = True
        delay = backoff[0]
        lost_at = None
        attempt = 0
        try:
            async for raw in ws:
                text = raw if isinstance(raw, str) else raw.decode()
                env = loads(text)
                if isinstance(env, dict):
                    event_id = env.get("id")
                    if isinstance(event_id, str) and event_id:
                        last_id = event_id
                    yield Frame(env, text)
            proto = ws.protocol  # ended cleanly (1000/1001): the iterator swallowed the exception
            reason = _closed_reason(ConnectionClosed(proto.close_rcvd, proto.close_sent, proto.close_rcvd_then_sent))
        except ConnectionClosed as exc:
            reason = _closed_reason(exc)
        except ValueError:
            reason = "it sent a frame that is not JSON"
        finally:
            await ws.close()
        if not reconnect:
            raise HubUnreachable(f"lost the hub at {endpoint}: {reason}")
        lost_at = loop.time()
        tell(ConnectionState("lost", hub, reason))

