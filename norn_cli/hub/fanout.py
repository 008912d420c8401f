"""Fan-out: subscribers, their filters and bounded queues, and the writes.

Each subscriber is a `Sink` (its connection); big groups are written
straight to their sockets' file descriptors from several threads
(writer.py) when nothing is buffered in front of them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Protocol

from norn_cli.hub.brokers.base import Broker, Duplicate, Item, Unavailable
from norn_cli.core.events import Event, EventId, Filter, dumps
from norn_cli.core.wire import text_frame
from norn_cli.hub.writer import FanoutWriter

__all__ = ["Hub", "Member", "Sink"]

log = logging.getLogger("norn.hub")

SLOW_CODE = 1013
SLOW_REASON = "slow consumer"
HISTORY_CODE = 1011
HISTORY_REASON = "event history unavailable"


class Sink(Protocol):
    """What the hub needs of a subscriber's connection."""

    def write(self, data: bytes) -> None:
        """Hand bytes to the connection (never blocks)."""

    def drop(self, code: int, reason: str) -> None:
        """Close the connection with this WebSocket close code."""

    def direct_fd(self) -> int:
        """A non-blocking socket the hub may write to itself, bypassing `write`,
        because nothing is buffered in front of it; -1 when there is none."""


class Member:
    """One subscriber: its filter, its bounded backlog and its flow-control state.

    `backlog` holds frames its connection has not taken because the connection
    told us to pause (its socket stopped draining). More than `limit` events
    there and it is dropped with 1013.
    """

    __slots__ = (
        "sink", "flt", "group", "paused", "paused_at", "backlog", "backlog_n",
        "limit", "handoff", "closed",
    )  # fmt: skip

    def __init__(self, sink: Sink, flt: Filter, limit: int) -> None:
        self.sink = sink
        self.flt = flt
        self.group: _Group | None = None
        self.paused = False
        self.paused_at = 0.0
        self.backlog: list[bytes] = []
        self.backlog_n = 0
        self.limit = limit
        self.handoff: list[Event] | None = None
        self.closed = False


class _Group:
    """Subscribers with one filter: each event is matched once per group, and a
    burst is joined once and written once per member."""

    __slots__ = ("flt", "members", "batch", "key")

    def __init__(self, flt: Filter) -> None:
        self.flt = flt
        self.key = flt.key
        self.members: dict[Member, None] = {}
        self.batch: list[bytes] = []


class Hub:
    """Fans events from a broker out to subscribers.

    Every event reaches each matching member in order. A member whose
    connection stops draining is dropped with 1013; a hub that is merely busy
    makes publishers wait (`wait_for_room`) instead of dropping anyone.
    """

    def __init__(
        self,
        broker: Broker,
        *,
        queue_size: int = 64,
        stall_grace: float = 0.5,
        writer: FanoutWriter[Member] | None = None,
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be >= 1")
        self.broker = broker
        self.writer = writer if writer is not None and writer.enabled else None
        self.queue_size = queue_size
        self.stall_grace = stall_grace
        self._groups: dict[tuple[frozenset[str] | None, frozenset[str] | None], _Group] = {}
        self._any_app: list[_Group] = []
        self._by_app: dict[str, list[_Group]] = {}
        self._dirty: list[_Group] = []
        self._handoffs: list[Member] = []
        self._congested: dict[Member, None] = {}
        self._room: asyncio.Event | None = None
        self._flush_soon: asyncio.Handle | None = None
        self.members = 0
        self.published = 0
        self.delivered = 0
        self.dropped = 0

    async def start(self) -> None:
        await self.broker.start(self.deliver, self)

    # ------------------------------------------------------------ publishing

    async def publish(self, items: Sequence[Item]) -> list[Event]:
        """Order, retain and fan out one all-or-nothing batch of valid events.

        The frames are written by the next `flush`: the hub schedules one
        itself, and a publisher that wants its subscribers served before it
        answers (the /api connection) flushes at once.
        """
        return await self.broker.publish(items)

    async def publish_keyed(self, items: Sequence[Item], keys: Sequence[str | None]) -> list[Event | Duplicate]:
        """`publish` with idempotency keys: an item whose key the broker already has is a Duplicate."""
        return await self.broker.publish_keyed(items, keys)

    def deliver(self, events: Sequence[Event]) -> None:
        """Queue events for every matching member, in order (the broker calls this)."""
        self.published += len(events)
        dirty = self._dirty
        by_app = self._by_app
        for ev in events:
            frame = ev.frame
            etype = ev.type
            for groups in (self._any_app, by_app.get(ev.app, ())):
                for g in groups:
                    if g.flt.types is None or g.flt.match_type(etype):
                        if not g.batch:
                            dirty.append(g)
                        g.batch.append(frame)
            if self._handoffs:
                for m in self._handoffs:
                    if m.handoff is not None and m.flt.match(etype, ev.app):
                        m.handoff.append(ev)
        if dirty and self._flush_soon is None:
            try:
                self._flush_soon = asyncio.get_running_loop().call_soon(self._flush_scheduled)
            except RuntimeError:  # no loop (a synchronous test): the caller flushes
                pass

    def _flush_scheduled(self) -> None:
        self._flush_soon = None
        self.flush()

    def gap(self, since: str, oldest: str) -> None:
        """Send every live member a `hub.gap` frame, in order with its events: the
        broker lost events after `since` before this hub could deliver them."""
        frame = _gap_frame(since, oldest)
        for g in self._groups.values():
            if not g.batch:
                self._dirty.append(g)
            g.batch.append(frame)
        self.flush()

    def flush(self) -> None:
        """Write what `deliver` queued: one write per member per burst."""
        dirty = self._dirty
        if not dirty:
            return
        self._dirty = []
        writer = self.writer
        for g in dirty:
            batch = g.batch
            g.batch = []
            n = len(batch)
            chunk = batch[0] if n == 1 else b"".join(batch)
            members = g.members
            self.delivered += n * len(members)
            if writer is not None and len(members) >= writer.min_targets and not self._congested:
                self._write_parallel(writer, members, chunk)
                continue
            for m in list(members) if self._congested else members:
                if m.paused or m.backlog:
                    self._queue(m, chunk, n)
                else:
                    m.sink.write(chunk)

    def _write_parallel(self, writer: FanoutWriter[Member], members: dict[Member, None], chunk: bytes) -> None:
        """Write to a big group from several threads (writer.py). Nobody is
        congested, so nobody has a backlog; a socket that does not take the whole
        chunk gets the rest through its connection, in order."""
        targets = []
        for m in list(members):
            fd = m.sink.direct_fd()
            if fd < 0:
                m.sink.write(chunk)
            else:
                targets.append((m, fd))
        for m, sent in writer.write(targets, chunk):
            m.sink.write(chunk[sent:] if sent else chunk)

    def _queue(self, m: Member, chunk: bytes, n: int) -> None:
        m.backlog.append(chunk)
        m.backlog_n += n
        if m.backlog_n > m.limit:
            self.drop(m, SLOW_CODE, SLOW_REASON)

    # ------------------------------------------------------------ flow control

    def pause(self, m: Member, now: float) -> None:
        """The member's connection buffer is full: queue for it from now on."""
        if not m.paused and not m.closed:
            m.paused = True
            m.paused_at = now
            self._congested[m] = None

    def resume(self, m: Member) -> None:
        """The member's connection drained: hand it its backlog."""
        if not m.paused:
            return
        m.paused = False
        self._congested.pop(m, None)
        if m.backlog and not m.closed:
            chunk = b"".join(m.backlog)
            m.backlog.clear()
            m.backlog_n = 0
            m.sink.write(chunk)
        if not self._congested and self._room is not None:
            self._room.set()

    async def wait_for_room(self, now: float) -> None:
        """Hold a publisher while a member that is still draining has a backlog.

        Members paused for longer than `stall_grace` are treated as stalled and
        not waited for: their backlog overflows and they are dropped.
        """
        while self._congested:
            oldest = min(m.paused_at for m in self._congested)
            wait = oldest + self.stall_grace - now
            if wait <= 0:
                return
            if self._room is None or self._room.is_set():
                self._room = asyncio.Event()
            try:
                async with asyncio.timeout(wait):
                    await self._room.wait()
            except TimeoutError:
                return
            now = asyncio.get_running_loop().time()

    @property
    def congested(self) -> bool:
        return bool(self._congested)

    # ------------------------------------------------------------ membership

    def add(self, sink: Sink, flt: Filter) -> Member:
        """A new subscriber, not yet receiving: `join` it, or `catch_up` then join."""
        return Member(sink, flt, self.queue_size)

    async def catch_up(
        self, m: Member, *, since: EventId | None = None, last: int | None = None
    ) -> None:
        """Replay what the member asked for, then join it to the live stream.

        Events published while the replay is fetched are held and then sent
        if newer than the replay, so there is no gap and no duplicate.
        """
        m.handoff = []
        self._handoffs.append(m)
        try:
            replay = await self.broker.replay(since=since, last=last, flt=m.flt)
        except Unavailable as exc:
            # The member was promised a replay it cannot have: close it so
            # its client reconnects and asks again, rather than leave it mute.
            log.warning("cannot replay history for a subscriber: %s", exc)
            if not m.closed:
                self.leave(m)
                m.sink.drop(HISTORY_CODE, HISTORY_REASON)
            return
        finally:
            self._handoffs.remove(m)
        held, m.handoff = m.handoff, None
        if m.closed:
            return
        parts = []
        if replay.gap is not None:
            parts.append(_gap_frame(*replay.gap))
        mark = since or (0, -1)
        for ev in replay.events:
            parts.append(ev.frame)
            mark = ev.key
        for ev in held:
            if ev.key > mark:
                parts.append(ev.frame)
        self.flush()
        if parts:
            m.sink.write(b"".join(parts))
        self.join(m)

    def join(self, m: Member) -> None:
        """Start sending live events to the member."""
        # Flush first: a batch queued before this member joined is not its own.
        self.flush()
        key = m.flt.key
        g = self._groups.get(key)
        if g is None:
            g = self._groups[key] = _Group(m.flt)
            if m.flt.apps is None:
                self._any_app.append(g)
            else:
                for app in m.flt.apps:
                    self._by_app.setdefault(app, []).append(g)
        else:
            m.flt = g.flt  # share the group's match cache
        g.members[m] = None
        m.group = g
        self.members += 1

    def leave(self, m: Member) -> None:
        """Forget a member (its connection is gone); idempotent."""
        if m.closed:
            return
        m.closed = True
        m.backlog.clear()
        m.backlog_n = 0
        if self._congested.pop(m, None) is not None and not self._congested and self._room:
            self._room.set()
        g = m.group
        if g is None:
            return
        m.group = None
        del g.members[m]
        self.members -= 1
        if not g.members:
            del self._groups[g.key]
            if g.flt.apps is None:
                self._any_app.remove(g)
            else:
                for app in g.flt.apps:
                    lst = self._by_app[app]
                    lst.remove(g)
                    if not lst:
                        del self._by_app[app]
            if g.batch:
                self._dirty.remove(g)

    def drop(self, m: Member, code: int, reason: str) -> None:
        """Remove a member and ask its connection to close with `code`."""
        if m.closed:
            return
        self.leave(m)
        self.dropped += 1
        log.info("dropped a subscriber: %s", reason)
        m.sink.drop(code, reason)


def _gap_frame(since: str, oldest: str) -> bytes:
    """The `hub.gap` frame: events after `since` may be missing; `oldest` is the oldest kept."""
    return text_frame(dumps({"type": "hub.gap", "appId": "", "payload": {"since": since, "oldest": oldest}}))
