"""The embedded default broker: a bounded in-process history, lost when the hub stops."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from norn_cli.core.events import Event, EventId, Filter, format_id, make_event
from norn_cli.hub.brokers.base import Broker, Deliver, IdClock, Item, Receiver, Replay

__all__ = ["MemoryBroker"]


class MemoryBroker(Broker):
    """The embedded default: a bounded in-process history.

    Ids start from the wall clock, so they keep increasing across restarts;
    a client resuming from before this hub started is told of a possible gap.
    """

    name = "memory"
    sole_writer = True

    def __init__(self, history: int = 10_000) -> None:
        if history < 0:
            raise ValueError("history must be >= 0")
        self._history: deque[Event] = deque()
        self._size = history
        self._clock = IdClock()
        # Every event after `_floor` is retained: it is the last evicted
        # event, or just below the first id this broker issues.
        self._floor: EventId = self._clock.floor
        self._deliver: Deliver | None = None
        self._last = ""

    async def start(self, deliver: Deliver, hub: Receiver | None = None) -> None:
        # Events are delivered inside `publish`; the publisher flushes them.
        self._deliver = deliver

    def publish_now(self, items: Sequence[Item]) -> list[Event]:
        """`publish` without the coroutine, for the hub's in-process hot path."""
        out = []
        clock = self._clock
        for etype, app, payload in items:
            key, ms = clock.next()
            out.append(make_event(key, etype, app, payload, ms))
        hist = self._history
        hist.extend(out)
        while len(hist) > self._size:
            self._floor = hist.popleft().key
        if out:
            self._last = out[-1].id
        if self._deliver is not None:
            self._deliver(out)
        return out

    async def publish(self, items: Sequence[Item]) -> list[Event]:
        return self.publish_now(items)

    def replay_now(self, *, since: EventId | None, last: int | None, flt: Filter) -> Replay:
        hist = self._history
        picked: list[Event] = []
        gap = None
        if since is not None:
            for ev in reversed(hist):
                if ev.key <= since:
                    break
                if flt.match(ev.type, ev.app):
                    picked.append(ev)
            picked.reverse()
            if since < self._floor:
                gap = (format_id(since), hist[0].id if hist else "")
        if last is not None:
            if since is None:
                for ev in reversed(hist):
                    if len(picked) >= last:
                        break
                    if flt.match(ev.type, ev.app):
                        picked.append(ev)
                picked.reverse()
            else:
                picked = picked[-last:] if last else []
        return Replay(picked, gap)

    async def replay(self, *, since: EventId | None, last: int | None, flt: Filter) -> Replay:
        return self.replay_now(since=since, last=last, flt=flt)

    async def close(self) -> None:
        self._deliver = None

    @property
    def last_id(self) -> str:
        return self._last

    @property
    def retained(self) -> int:
        return len(self._history)
