"""The hub's fan-out and backpressure policy, with recording sinks instead of sockets."""

from __future__ import annotations

import asyncio
import json

from conftest import TIMEOUT
from norn_cli.hub.brokers.memory import MemoryBroker
from norn_cli.core.events import Filter
from norn_cli.hub.fanout import Hub


class Sink:
    """Records what the hub writes and how it closes."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.closed: tuple[int, str] | None = None

    def write(self, data: bytes) -> None:
        self.chunks.append(data)

    def direct_fd(self) -> int:
        return -1  # no socket: the hub always goes through write()

    def drop(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def events(self) -> list[dict]:
        """Decode the unmasked text frames written so far."""
        out, buf = [], b"".join(self.chunks)
        while buf:
            n, head = buf[1] & 0x7F, 2
            if n == 126:
                n, head = int.from_bytes(buf[2:4], "big"), 4
            out.append(json.loads(buf[head : head + n]))
            buf = buf[head + n :]
        return out


async def make_hub(queue_size: int = 4, stall_grace: float = 30.0) -> Hub:
    hub = Hub(MemoryBroker(100), queue_size=queue_size, stall_grace=stall_grace)
    await hub.start()
    return hub


async def publish(hub: Hub, *ns: int, app: str = "a") -> None:
    await hub.publish([("x.y", app, {"n": n}) for n in ns])
    hub.flush()


async def test_a_burst_is_one_write_per_member() -> None:
    """Events delivered before a flush reach each member as one coalesced write, in order."""
    hub = await make_hub()
    sinks = [Sink(), Sink()]
    for s in sinks:
        hub.join(hub.add(s, Filter()))
    await hub.publish([("x.y", "a", {"n": n}) for n in range(3)])
    await hub.publish([("x.y", "a", {"n": 3})])
    hub.flush()
    for s in sinks:
        assert len(s.chunks) == 1
        assert [e["payload"]["n"] for e in s.events()] == [0, 1, 2, 3]
    assert hub.delivered == 8


async def test_members_with_different_filters_get_only_their_events() -> None:
    """Each filter group sees exactly its own events."""
    hub = await make_hub()
    a, b, any_app = Sink(), Sink(), Sink()
    hub.join(hub.add(a, Filter(apps=["a"])))
    hub.join(hub.add(b, Filter(apps=["b"], types=["x.*"])))
    hub.join(hub.add(any_app, Filter(types=["x.y"])))
    await publish(hub, 1, app="a")
    await publish(hub, 2, app="b")
    await hub.publish([("z.z", "b", {"n": 3})])
    hub.flush()
    assert [e["payload"]["n"] for e in a.events()] == [1]
    assert [e["payload"]["n"] for e in b.events()] == [2]
    assert [e["payload"]["n"] for e in any_app.events()] == [1, 2]


async def test_paused_member_gets_its_backlog_on_resume_and_publishers_wait() -> None:
    """A member that is behind but draining is waited for, then gets everything in order."""
    hub = await make_hub(queue_size=4)
    loop = asyncio.get_running_loop()
    slow, fast = Sink(), Sink()
    m = hub.add(slow, Filter())
    hub.join(m)
    hub.join(hub.add(fast, Filter()))
    await publish(hub, 0)
    hub.pause(m, loop.time())
    await publish(hub, 1, 2, 3)  # within the queue of 4
    assert [e["payload"]["n"] for e in slow.events()] == [0]
    waiting = asyncio.create_task(hub.wait_for_room(loop.time()))
    await asyncio.sleep(0)
    assert not waiting.done()  # the publisher is held while the member catches up
    hub.resume(m)
    async with asyncio.timeout(TIMEOUT):
        await waiting
    assert [e["payload"]["n"] for e in slow.events()] == [0, 1, 2, 3]
    assert [e["payload"]["n"] for e in fast.events()] == [0, 1, 2, 3]
    assert slow.closed is None and hub.dropped == 0


async def test_stalled_member_is_not_waited_for_and_is_dropped_on_overflow() -> None:
    """A member paused past the grace period no longer holds publishers; overflowing its queue drops it with 1013."""
    hub = await make_hub(queue_size=4, stall_grace=0.01)
    loop = asyncio.get_running_loop()
    stalled, healthy = Sink(), Sink()
    m = hub.add(stalled, Filter())
    hub.join(m)
    hub.join(hub.add(healthy, Filter()))
    hub.pause(m, loop.time() - 1.0)  # paused a second ago: past the grace
    async with asyncio.timeout(TIMEOUT):
        await hub.wait_for_room(loop.time())  # returns at once
    await publish(hub, *range(4))
    assert stalled.closed is None  # 4 queued: at the limit, not over
    await publish(hub, 4)
    assert stalled.closed == (1013, "slow consumer")
    assert hub.dropped == 1 and hub.members == 1 and not hub.congested
    await publish(hub, 5)
    assert [e["payload"]["n"] for e in healthy.events()] == list(range(6))
    assert stalled.events() == []


async def test_catch_up_hands_over_without_gap_or_duplicate() -> None:
    """Events published while a replay is assembled are sent once, after the replay."""
    hub = await make_hub()
    await publish(hub, 0, 1, 2)
    sink = Sink()
    m = hub.add(sink, Filter())
    since = hub.broker.replay_now(since=None, last=3, flt=Filter()).events[0].key  # type: ignore[attr-defined]
    await hub.catch_up(m, since=since)
    await publish(hub, 3)
    assert [e["payload"]["n"] for e in sink.events()] == [1, 2, 3]


async def test_leave_is_idempotent_and_empties_groups() -> None:
    """Leaving twice is harmless and the last member's group disappears."""
    hub = await make_hub()
    m = hub.add(Sink(), Filter(apps=["a"]))
    hub.join(m)
    hub.leave(m)
    hub.leave(m)
    assert hub.members == 0 and hub._by_app == {} and hub._groups == {}
    await publish(hub, 1)


async def test_gap_reaches_every_member_in_order_with_its_events() -> None:
    """A broker-reported gap is one hub.gap frame to every member, whatever its filter, after what it already had."""
    hub = await make_hub()
    a, b = Sink(), Sink()
    hub.join(hub.add(a, Filter(apps=["a"])))
    hub.join(hub.add(b, Filter(types=["z.*"])))
    await publish(hub, 1, app="a")
    hub.gap("5-0", "9-0")
    await publish(hub, 2, app="a")
    gap = {"type": "hub.gap", "appId": "", "payload": {"since": "5-0", "oldest": "9-0"}}
    assert [e if e["type"] == "hub.gap" else e["payload"]["n"] for e in a.events()] == [1, gap, 2]
    assert b.events() == [gap]
