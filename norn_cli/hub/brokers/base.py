"""The Broker interface every store of events implements, and the id clock they share."""

from __future__ import annotations

import abc
import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from norn_cli.core.events import Event, EventId, Filter

__all__ = [
    "DEDUPE_WINDOW",
    "Broker",
    "Deliver",
    "Duplicate",
    "IdClock",
    "Item",
    "KeyWindow",
    "Receiver",
    "Replay",
    "Unavailable",
]

DEDUPE_WINDOW = 600.0
"""Seconds a publish key is remembered (`--dedupe-window`)."""

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


@dataclass(frozen=True, slots=True)
class Duplicate:
    """In `publish_keyed`'s result: this item's key was already accepted; nothing was published.

    `id` is the id of the event first published with the key.
    """

    id: str


class KeyWindow:
    """Keys accepted within the last `window` seconds and their events' ids, in one process.

    Bounded twice: keys older than the window are forgotten, and beyond
    `limit` keys the oldest are forgotten early (so under a flood the window
    is shorter, never the memory larger).
    """

    __slots__ = ("_keys", "limit", "window")

    def __init__(self, window: float = DEDUPE_WINDOW, limit: int = 100_000) -> None:
        self.window = window
        self.limit = limit
        self._keys: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._keys)

    def get(self, key: str, now: float) -> str | None:
        """The id first published with `key`, if within the window."""
        hit = self._keys.get(key)
        if hit is None or hit[1] <= now:
            return None
        return hit[0]

    def discard(self, key: str) -> None:
        """Forget `key` (its event was not stored after all)."""
        self._keys.pop(key, None)

    def sort(self, keys: Sequence[str | None], now: float) -> tuple[list[Event | Duplicate | None], list[int]]:
        """A keyed batch against the window: (its results with the window's duplicates in place, the indexes to publish).

        A key repeated within the batch is published at its first place
        only; `settle` fills in the other places once that one has its event.
        """
        out: list[Event | Duplicate | None] = [None] * len(keys)
        fresh: list[int] = []
        taken: set[str] = set()
        for i, key in enumerate(keys):
            if key is None:
                fresh.append(i)
            elif (seen := self.get(key, now)) is not None:
                out[i] = Duplicate(seen)
            elif key not in taken:
                taken.add(key)
                fresh.append(i)
        return out, fresh

    @staticmethod
    def settle(out: list[Event | Duplicate | None], keys: Sequence[str | None]) -> list[Event | Duplicate]:
        """The results of a sorted batch whose fresh places are published: a repeated key is a duplicate of its first place."""
        firsts: dict[str, str] = {}
        done: list[Event | Duplicate] = []
        for r, key in zip(out, keys):
            if r is None:
                assert key is not None
                r = Duplicate(firsts[key])
            elif key is not None and isinstance(r, Event):
                firsts[key] = r.id
            done.append(r)
        return done

    def add(self, key: str, event_id: str, now: float) -> None:
        keys = self._keys
        keys[key] = (event_id, now + self.window)
        keys.move_to_end(key)
        while keys and (len(keys) > self.limit or next(iter(keys.values()))[1] <= now):
            keys.popitem(last=False)


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
    dedupe_window: float = DEDUPE_WINDOW
    """Seconds a publish key is remembered; set before `start`."""
    _key_window: KeyWindow | None = None
    _key_lock: asyncio.Lock | None = None
    sole_writer: bool = False
    """True when no other hub publishes into this broker's history (memory,
    SQLite): a pipeline run found unfinished there at startup was this hub's."""
    publish_waits: bool = False
    """True when a publish waits for something off the event loop (a commit,
    a round trip to Redis): requests a publisher streams are then worth
    gathering into one call."""

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

    async def publish_keyed(self, items: Sequence[Item], keys: Sequence[str | None]) -> list[Event | Duplicate]:
        """`publish`, except that an item whose key was accepted within `dedupe_window` is not published.

        `keys[i]` is item i's key or None. The result has one entry per item:
        its new Event, or `Duplicate(original id)`. A key repeated within
        `items` is published once, at its first place; the later places are
        duplicates of it. Checking the keys and appending the new events is
        one atomic step for every hub sharing the broker, and a key is only
        remembered together with its stored event.

        This default remembers keys in this process (`KeyWindow`), which is
        right for a broker only one hub writes to; a shared or durable broker
        overrides it to keep the keys where it keeps the events.
        """
        if self._key_window is None or self._key_lock is None:
            self._key_window, self._key_lock = KeyWindow(self.dedupe_window), asyncio.Lock()
        window = self._key_window
        async with self._key_lock:  # no other keyed publish between check and append
            out, fresh = window.sort(keys, time.monotonic())
            events = await self.publish([items[i] for i in fresh]) if fresh else []
            now = time.monotonic()
            for i, ev in zip(fresh, events):
                out[i] = ev
                key = keys[i]
                if key is not None:
                    window.add(key, ev.id, now)
        return window.settle(out, keys)

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
    above every id issued by a process that stopped before this one began;
    with `after` (a stored last id) it is also above that id, wherever the
    clock is. A sequence that would pass `max_seq` within one millisecond
    moves on to the next millisecond instead (for stores that pack an id
    into one integer).
    """

    __slots__ = ("_ms", "_seq", "floor", "max_seq")

    def __init__(self, after: EventId | None = None, *, max_seq: int = 1 << 62) -> None:
        self._ms = int(time.time() * 1000) + 1
        self._seq = -1
        if after is not None and after >= (self._ms, -1):
            self._ms, self._seq = after
        self.max_seq = max_seq
        self.floor: EventId = (self._ms, self._seq)  # below every id this clock issues

    def next(self) -> tuple[EventId, int]:
        now = int(time.time() * 1000)
        if now > self._ms:
            self._ms, self._seq = now, 0
        else:
            self._seq += 1
            if self._seq > self.max_seq:
                self._ms += 1
                self._seq = 0
        return (self._ms, self._seq), now
