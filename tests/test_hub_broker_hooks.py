"""The hub's side of brokers that deliver by themselves: the Receiver hook and failed replays."""

from __future__ import annotations

from norn_cli.hub.brokers.base import Deliver, Receiver, Replay, Unavailable
from norn_cli.hub.brokers.memory import MemoryBroker
from norn_cli.core.events import EventId, Filter
from norn_cli.hub.fanout import Hub


class RecordingSink:
    def __init__(self) -> None:
        self.data = b""
        self.dropped: tuple[int, str] | None = None

    def write(self, data: bytes) -> None:
        self.data += data

    def direct_fd(self) -> int:
        return -1  # no socket: the hub always goes through write()

    def drop(self, code: int, reason: str) -> None:
        self.dropped = (code, reason)


class SelfDeliveringBroker(MemoryBroker):
    """Keeps what start() was given, and fails replays on demand."""

    def __init__(self) -> None:
        super().__init__(100)
        self.hub: Receiver | None = None
        self.replay_error: Unavailable | None = None

    async def start(self, deliver: Deliver, hub: Receiver | None = None) -> None:
        await super().start(deliver, hub)
        self.hub = hub

    async def replay(self, *, since: EventId | None, last: int | None, flt: Filter) -> Replay:
        if self.replay_error is not None:
            raise self.replay_error
        return await super().replay(since=since, last=last, flt=flt)


async def test_start_hands_the_hub_to_the_broker_so_it_can_flush() -> None:
    """A broker delivering on its own gets the hub as its Receiver, and its flush writes."""
    broker = SelfDeliveringBroker()
    hub = Hub(broker)
    await hub.start()
    assert broker.hub is hub
    sink = RecordingSink()
    hub.join(hub.add(sink, Filter()))
    broker.publish_now([("test.event", "app", {"n": 1})])
    assert sink.data == b""  # deliver only queues
    broker.hub.flush()
    assert b'"n":1' in sink.data


async def test_a_replay_the_broker_cannot_give_closes_the_subscriber_with_1011() -> None:
    """When the history is unavailable, the member is closed (so it retries), never left mute."""
    broker = SelfDeliveringBroker()
    hub = Hub(broker)
    await hub.start()
    broker.replay_error = Unavailable("the hub is shutting down")
    sink = RecordingSink()
    member = hub.add(sink, Filter())
    await hub.catch_up(member, last=5)
    assert sink.dropped == (1011, "event history unavailable")
    assert member.closed and hub.members == 0 and hub.dropped == 0
    broker.publish_now([("test.event", "app", {"n": 1})])
    hub.flush()
    assert sink.data == b""
