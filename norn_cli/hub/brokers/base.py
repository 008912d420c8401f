"""The Broker interface every store of events implements, and the id clock they share."""

from __future__ import annotations

import abc
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from norn_cli.core.events import Event, EventId, Filter

__all__ = ["Broker", "Deliver", "IdClock", "Item", "Receiver", "Replay", "Unavailable"]

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
