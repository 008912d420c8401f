"""Where events are ordered, numbered and retained: the Broker interface and the in-memory default."""

from __future__ import annotations

import abc
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from norn_cli.events import Event, EventId, Filter, format_id, make_event

__all__ = ["Broker", "Deliver", "MemoryBroker", "Receiver", "Replay", "Unavailable", "open_broker"]

Deliver = Callable[[Sequence[Event]], None]
"""Called by a broker with newly ordered events, in order, once each."""

Item = tuple[str, str, Mapping[str, Any]]
"""A validated event to publish: (type, appId, payload)."""


class Receiver(Protocol):
    """The rest of the hub, for a broker that delivers on its own (a reader task).

    Events a publisher handed over are written out by that publisher's
    `flush`; events a reader task receives need the reader to flush, and to
    wait while subscribers are congested instead of queueing without bound.
    """

    @property
    def congested(self) -> bool:
        """True while some subscriber's connection is not draining."""

    def flush(self) -> None:
        """Write what `deliver` queued."""

    async def wait_for_room(self, now: float) -> None:
        """Return once subscribers drain (or are found stalled)."""

    def gap(self, since: str, oldest: str) -> None:
        """Tell every live subscriber that events after `since` may be missing."""


class Unavailable(Exception):
    """The broker cannot order events right now (e.g. Redis is down)."""


@dataclass
class Replay:
    """What a subscriber asking for `since`/`last` is owed before going live.

    `gap` is `(since, oldest)` when events after `since` may be missing.
    """

    events: list[Event] = field(default_factory=list)
    gap: tuple[str, str] | None = None


class Broker(abc.ABC):
    """Orders, numbers and retains events; hands each to the hub once, in order.

    A broker may be shared by several hubs (Redis): then `deliver` also
    receives the events other hubs published.
    """

    name: str = "broker"

    @abc.abstractmethod
    async def start(self, deliver: Deliver, hub: Receiver | None = None) -> None:
        """Begin delivering events to `deliver`.

        A broker that receives events by itself (not from `publish`) also
        uses `hub` to flush them and to pace itself.
        """

    @abc.abstractmethod
    async def publish(self, items: Sequence[Item]) -> list[Event]:
        """Order and retain `items` as one all-or-nothing batch; return the events.

        Raises Unavailable when the events could not be ordered.
        """

    @abc.abstractmethod
    async def replay(self, *, since: EventId | None, last: int | None, flt: Filter) -> Replay:
        """Retained events matching `flt`: after `since`, or the last `last` of them."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop delivering and release resources."""

    @property
    def healthy(self) -> bool:
        """False while the broker cannot order events."""
        return self.problem is None

    @property
    def problem(self) -> str | None:
        """Why the broker is unhealthy, in one sentence; None when healthy."""
        return None

    @property
    @abc.abstractmethod
    def last_id(self) -> str:
        """The id of the newest event this broker knows of ("" when none)."""

    @property
    @abc.abstractmethod
    def retained(self) -> int:
        """How many events are retained for replay."""

    def metrics(self) -> dict[str, float]:
        """Extra gauges and counters for /metrics (name -> value)."""
        return {}


class IdClock:
    """Issues `<ms>-<seq>` ids, strictly increasing even if the clock steps back.

    The first id is in a millisecond after the clock's creation, so it is
    above every id issued by a process that stopped before this one began.
    """

    __slots__ = ("_ms", "_seq", "floor")

    def __init__(self) -> None:
        self._ms = int(time.time() * 1000) + 1
        self._seq = -1
        self.floor: EventId = (self._ms, -1)  # below every id this clock issues

    def next(self) -> tuple[EventId, int]:
        now = int(time.time() * 1000)
        if now > self._ms:
            self._ms, self._seq = now, 0
        else:
            self._seq += 1
        return (self._ms, self._seq), now


class MemoryBroker(Broker):
    """The embedded default: a bounded in-process history.

    Ids start from the wall clock, so they keep increasing across restarts;
    a client resuming from before this hub started is told of a possible gap.
    """

    name = "memory"

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


def open_broker(url: str | None, *, history: int, stream: str = "norn:events") -> Broker:
    """The broker for a `--broker` URL: memory when empty, Redis for redis(s)://."""
    if not url or url == "memory":
        return MemoryBroker(history)
    if url.startswith(("redis://", "rediss://", "unix://")):
        try:
            from norn_cli.redis_broker import RedisBroker  # imported only when used
        except ModuleNotFoundError as exc:
            if (exc.name or "").partition(".")[0] != "redis":
                raise
            raise ValueError("a redis:// broker needs the redis package (pip install 'norn-cli[redis]')") from None

        return RedisBroker(url, history=history, stream=stream)
    raise ValueError(f"unknown broker URL {url!r} (use memory or redis://HOST:PORT/DB)")
