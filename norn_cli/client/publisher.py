"""Publishing that survives a lost connection: keyed events, the unacknowledged ones re-sent in order.

Every event handed to `publish_resilient` carries a `key`. Events go out in
pipelined batches; the hub's replies come in order, so what is acknowledged
is always a prefix of what was sent. When the connection drops (a hub killed
behind a load balancer, say), the publisher reconnects with backoff and
sends every unacknowledged event again, in order, with its key: the hub
(any hub on the same broker) answers an event it already stored with the
original id and `duplicate`, so nothing is lost and nothing is doubled.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import AsyncIterable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from websockets.exceptions import ConnectionClosed

from norn_cli.client.connect import BATCH_BYTES, BATCH_EVENTS, ApiClient, ConnectionState, _closed_reason
from norn_cli.client.endpoint import Endpoint
from norn_cli.core.errors import EventError, HubUnreachable, NornError, OperationFailed, Unauthorized
from norn_cli.core.events import dumps, loads

__all__ = ["RETRY_FOR", "OnAck", "PublishStats", "publish_resilient"]

RETRY_FOR = 30.0
"""Seconds of failing to get a new acknowledgement after which a publisher gives up."""
BACKOFF = (0.1, 2.0)
BUFFER = 10_000  # events read ahead of their acknowledgement (input is read no further meanwhile)
# Close codes that re-sending the same frames cannot cure: protocol error, unsupported or
# bad data, policy, message too big, missing extension.
_FATAL_CLOSE = frozenset({1002, 1003, 1007, 1008, 1009, 1010})

OnAck = Callable[[str, bool], None]
"""Told each event's id, in input order, once; True when the hub had it already (a duplicate)."""


@dataclass
class PublishStats:
    """What a resilient publish did: events acknowledged, of them duplicates, and reconnections."""

    acked: int = 0
    duplicates: int = 0
    reconnects: int = 0


class _Retry(Exception):
    """The connection is lost or the hub cannot take events right now: reconnect and re-send."""

    def __init__(self, message: str, *, reason: str, fatal: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason  # the why alone, for a ConnectionState
        self.fatal = fatal


class _Publisher:
    """The queues of one resilient publish: read ahead, sent and not acknowledged, acknowledged."""

    def __init__(self, endpoint: Endpoint, on_ack: OnAck, *, window: int) -> None:
        self.endpoint = endpoint
        self.on_ack = on_ack
        self.window = window
        self.unsent: deque[dict[str, Any]] = deque()
        self.unacked: deque[dict[str, Any]] = deque()
        self.inflight: deque[int] = deque()  # events per unacknowledged request, in order
        self.source_done = False
        self.source_error: BaseException | None = None
        # One event per waiter, each cleared only by its waiter, so no wake-up is lost.
        self.wake_sender = asyncio.Event()  # new input, input ended, a reply freed the window
        self.wake_receiver = asyncio.Event()  # a request sent, input ended
        self.room = asyncio.Event()  # the read-ahead buffer has room
        self.stats = PublishStats()

    @property
    def finished(self) -> bool:
        return self.source_done and not self.unsent and not self.unacked

    async def pump(self, source: AsyncIterable[dict[str, Any]] | Iterable[dict[str, Any]]) -> None:
        """Move input events into `unsent`, at most BUFFER ahead of their acknowledgement."""
        try:
            if isinstance(source, AsyncIterable):
                async for ev in source:
                    await self._take(ev)
            else:
                for ev in source:
                    await self._take(ev)
        except (EventError, OSError) as exc:  # a bad line or an unreadable input: publish what came before
            self.source_error = exc
        finally:
            self.source_done = True
            self.wake_sender.set()
            self.wake_receiver.set()

    async def _take(self, ev: dict[str, Any]) -> None:
        while len(self.unsent) + len(self.unacked) >= BUFFER:
            self.room.clear()
            await self.room.wait()
        self.unsent.append(ev)
        self.wake_sender.set()

    async def session(self, api: ApiClient) -> None:
        """Send everything not acknowledged over this connection and collect the acks, until done or lost."""
        self.unsent.extendleft(reversed(self.unacked))
        self.unacked.clear()
        self.inflight.clear()
        sender = asyncio.create_task(self._send(api))
        try:
            while not self.finished:
                if not self.inflight:
                    self.wake_receiver.clear()
                    waiter = asyncio.ensure_future(self.wake_receiver.wait())
                    await asyncio.wait({waiter, sender}, return_when=asyncio.FIRST_COMPLETED)
                    waiter.cancel()
                    if sender.done():
                        sender.result()  # raises what stopped it
                    continue
                self._acked(loads(await api.ws.recv()))
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else None
            why = _closed_reason(exc)
            raise _Retry(f"lost the hub at {self.endpoint}: {why}", reason=why, fatal=code in _FATAL_CLOSE) from None
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)

    async def _send(self, api: ApiClient) -> None:
        ws = api.ws
        while True:
            if len(self.inflight) >= self.window or not self.unsent:
                if self.source_done and not self.unsent:
                    return
                self.wake_sender.clear()
                await self.wake_sender.wait()
                continue
            batch: list[dict[str, Any]] = []
            size = 0
            while self.unsent and len(batch) < BATCH_EVENTS:
                n = len(dumps(self.unsent[0])) + 1
                if batch and size + n > BATCH_BYTES:
                    break
                batch.append(self.unsent.popleft())
                size += n
            self.unacked.extend(batch)
            self.inflight.append(len(batch))
            self.wake_receiver.set()  # a reply is due from now on
            await ws.send(dumps({"op": "publish", "events": batch}).decode())

    def _acked(self, reply: Any) -> None:
        n = self.inflight.popleft()
        if not isinstance(reply, dict):
            raise OperationFailed("the hub sent a reply that is not a JSON object", code="internal")
        if not reply.get("ok"):
            err = reply.get("error") or {}
            code = str(err.get("code", "internal"))
            message = str(err.get("message", "the hub refused the request"))
            if code == "unavailable":
                raise _Retry(f"the hub at {self.endpoint} cannot take events now: {message}",
                             reason=f"it cannot take events now: {message}")  # fmt: skip
            if code == "unauthorized":
                raise Unauthorized(message)
            raise OperationFailed(message, code=code)
        ids = reply.get("ids")
        if not isinstance(ids, list) or len(ids) != n:
            raise OperationFailed(f"the hub answered a batch of {n} events with a reply that has no {n} ids", code="internal")
        dups = set(reply.get("duplicates") or ())
        for i, event_id in enumerate(ids):
            self.unacked.popleft()
            dup = i in dups
            self.stats.acked += 1
            self.stats.duplicates += dup
            self.on_ack(str(event_id), dup)
        self.room.set()
        self.wake_sender.set()


async def publish_resilient(
    endpoint: Endpoint,
    events: AsyncIterable[dict[str, Any]] | Iterable[dict[str, Any]],
    *,
    on_ack: OnAck,
    retry: bool = True,
    total: int | None = None,
    token: str | None = None,
    cafile: str | None = None,
    window: int = 8,
    retry_for: float = RETRY_FOR,
    on_state: Callable[[ConnectionState], None] | None = None,
) -> PublishStats:
    """Publish keyed events in order, each acknowledged once, across lost connections.

    `on_ack` gets every event's id in input order. The first connection
    failing is HubUnreachable at once; a connection lost later is retried
    (unless `retry` is False) with capped, jittered backoff until `retry_for`
    seconds pass without a new acknowledgement. A refused batch is
    OperationFailed; an input error (EventError) is raised once everything
    before it is acknowledged. Every error says how many events got through.
    `on_state` hears each change of the connection, as a subscription's
    does: lost, each failed attempt to reconnect, back.
    """
    tell = on_state or (lambda _state: None)
    hub = str(endpoint)
    attempt = 0  # failed attempts to reconnect since the connection was lost
    pub = _Publisher(endpoint, on_ack, window=window)
    pump = asyncio.create_task(pub.pump(events))
    loop = asyncio.get_running_loop()
    of = f" of {total}" if total is not None else ""
    connected = False
    delay = BACKOFF[0]
    last_progress = loop.time()
    acked_before = 0
    try:
        while True:
            up = False  # this attempt connected
            try:
                try:
                    async with ApiClient(endpoint, token=token, cafile=cafile) as api:
                        up = True
                        if connected:
                            pub.stats.reconnects += 1
                            tell(ConnectionState("back", hub, attempt=attempt + 1))
                        connected = True
                        attempt = 0
                        await pub.session(api)
                    break
                except HubUnreachable as exc:
                    if not connected:
                        raise
                    raise _Retry(exc.message, reason=exc.reason) from None
            except _Retry as exc:
                if pub.stats.acked > acked_before:
                    acked_before, last_progress, delay = pub.stats.acked, loop.time(), BACKOFF[0]
                if exc.fatal or not retry:
                    raise HubUnreachable(f"{exc.message} ({pub.stats.acked}{of} events were published)") from None
                if loop.time() - last_progress > retry_for:
                    raise HubUnreachable(
                        f"{exc.message}; gave up after {retry_for:g}s without an acknowledgement "
                        f"({pub.stats.acked}{of} events were published)"
                    ) from None
                pause = delay * (0.5 + random.random())
                if up:
                    tell(ConnectionState("lost", hub, exc.reason))
                else:
                    attempt += 1
                    tell(ConnectionState("retrying", hub, exc.reason, attempt, pause))
                await asyncio.sleep(pause)
                delay = min(delay * 2, BACKOFF[1])
    except OperationFailed as exc:
        raise OperationFailed(
            f"the hub refused a batch starting at event {pub.stats.acked + 1}{of}: "
            f"{exc.message} (the {pub.stats.acked} before it were published)",
            code=exc.code,
        ) from None
    except HubUnreachable as exc:
        if not connected or exc.message.endswith("were published)"):
            raise  # never connected: nothing was attempted
        raise HubUnreachable(f"{exc.message} ({pub.stats.acked}{of} events were published)") from None
    finally:
        pump.cancel()
        await asyncio.gather(pump, return_exceptions=True)
    if pub.source_error is not None:
        err = pub.source_error
        if isinstance(err, NornError):
            err.message = f"{err.message}; the {pub.stats.acked} events before it were published"
            raise err
        raise err
    return pub.stats
