"""SqliteBroker in a hub in the test's loop: acks after commit, replay from disk, ids across restarts, retention, faults."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from conftest import TIMEOUT
from helpers import event, http_get, publish, recv_json, recv_n, request, wait_members, ws
from norn_cli.core.config import parse_config
from norn_cli.core.durations import parse_duration
from norn_cli.core.errors import ConfigError
from norn_cli.core.events import Event, Filter, parse_id
from norn_cli.hub.brokers.base import Duplicate
from norn_cli.hub.brokers import open_broker
from norn_cli.hub.brokers import sqlite as sqlite_broker
from norn_cli.hub.brokers.sqlite import SqliteBroker
from norn_cli.hub.brokers.sqlite_file import SCHEMA_VERSION, id_of, key_of, parse_sqlite_url
from norn_cli.hub.server import HubServer


class Hubs:
    """Hubs on one database file, one at a time: start, stop, start again."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.srv: HubServer | None = None

    async def start(self, **broker: Any) -> HubServer:
        broker.setdefault("history", 100_000)
        self.srv = HubServer(host="127.0.0.1", port=0, broker=SqliteBroker(self.path, **broker))
        await self.srv.start()
        return self.srv

    async def stop(self) -> None:
        if self.srv is not None:
            await self.srv.close()
            self.srv = None


@pytest.fixture
async def hubs(tmp_path: Path) -> AsyncIterator[Hubs]:
    h = Hubs(tmp_path / "data" / "events.db")
    try:
        yield h
    finally:
        await h.stop()


async def until(broker: Any, check: Any) -> None:
    """Wait (bounded) for a condition the broker's writer thread makes true: checked after each change it makes."""
    assert isinstance(broker, SqliteBroker)
    async with asyncio.timeout(TIMEOUT):
        while not check():
            await broker.changed()


def stored(path: Path) -> list[tuple[int, str]]:
    """(key, envelope) of every stored event, read with a separate connection."""
    with sqlite3.connect(path) as db:
        return [(k, bytes(d).decode()) for k, d in db.execute("SELECT key, data FROM events ORDER BY key")]


# ---------------------------------------------------------------- ids and URLs


def test_ids_pack_into_one_integer_in_order() -> None:
    """An id and its stored key keep one order; an id between two keys maps to the lower one."""
    ids = [(1764250036123, 0), (1764250036123, 1), (1764250036123, (1 << 20) - 1), (1764250036124, 0)]
    keys = [key_of(i) for i in ids]
    assert keys == sorted(keys) and len(set(keys)) == 4
    assert [id_of(k) for k in keys] == ids
    assert key_of((1764250036123, 5_000_000)) == key_of((1764250036123, (1 << 20) - 1))
    assert key_of((1764250036124, -1)) == key_of((1764250036123, (1 << 20) - 1))


def test_sqlite_urls() -> None:
    """Everything after sqlite:// is the path; max_pages is the one option; anything else is refused."""
    assert parse_sqlite_url("sqlite:///var/lib/norn/events.db") == ("/var/lib/norn/events.db", {})
    assert parse_sqlite_url("sqlite://events.db?max_pages=100") == ("events.db", {"max_pages": "100"})
    for bad in ("sqlite://", "sqlite:///x.db?pages=1", "sqlite:///x.db?max_pages=0"):
        with pytest.raises(ValueError):
            parse_sqlite_url(bad)
    assert isinstance(open_broker("sqlite:///tmp/x.db", history=10), SqliteBroker)
    with pytest.raises(ValueError, match="apply to the SQLite broker only"):
        open_broker(None, history=10, retention=60.0)


def test_durations_and_serve_keys(tmp_path: Path) -> None:
    """--retention takes days too (7d); [serve] resolves a relative sqlite path against the file."""
    assert [parse_duration(t) for t in ("90s", "30m", "12h", "7d", "1d12h")] == [90, 1800, 43200, 604800, 129600]
    cfg = parse_config('[serve]\nbroker = "sqlite://data/ev.db"\nretention = "7d"\nfsync = "always"\n', path=tmp_path / "norn.toml")
    assert dict(cfg.serve) == {"broker": f"sqlite://{tmp_path.resolve() / 'data/ev.db'}", "retention": "7d", "fsync": "always"}
    assert parse_config('[serve]\nbroker = "sqlite:///abs/ev.db"\n', path=tmp_path / "norn.toml").serve["broker"] == "sqlite:///abs/ev.db"
    with pytest.raises(ConfigError, match="serve.fsync must be one of normal, always"):
        parse_config('[serve]\nfsync = "sometimes"\n', path=tmp_path / "norn.toml")
    for bad in ("forever", "0"):
        with pytest.raises(ConfigError, match="serve.retention"):
            parse_config(f'[serve]\nretention = "{bad}"\n', path=tmp_path / "norn.toml")


# ---------------------------------------------------------------- publishing and replay


async def test_ack_means_stored_and_subscribers_get_it(hubs: Hubs) -> None:
    """The folder and file are created on first use; an acknowledged event is in the file; subscribers get it once."""
    srv = await hubs.start()
    assert hubs.path.is_file()
    async with ws(srv.port) as sub, ws(srv.port, "/api") as api:
        await wait_members(srv, 1)
        ids = await publish(api, event(n=1), event(n=2))
        reply = await request(api, {"op": "publish", "events": [event(n=3), event(n=4)]})
        ids += reply["ids"]
        got = await recv_n(sub, 4)
        assert [e["id"] for e in got] == ids
        assert [e["payload"]["n"] for e in got] == [1, 2, 3, 4]
        on_disk = stored(hubs.path)
        assert [json.loads(d)["id"] for _, d in on_disk] == ids
        assert [k for k, _ in on_disk] == [key_of(parse_id(i)) for i in ids]
        status = await request(api, {"op": "status"})
        assert status["broker"] == "sqlite" and status["retained"] == 4 and status["lastId"] == ids[-1]


async def test_everything_comes_back_after_a_restart(hubs: Hubs) -> None:
    """since/last replay from disk after a restart, byte for byte; new ids are above the old ones."""
    srv = await hubs.start()
    async with ws(srv.port, "/api") as api:
        ids = await publish(api, *(event(app="a" if i % 2 else "b", n=i) for i in range(10)))
    async with ws(srv.port, "/ws?last=10") as sub:
        before = [await sub.recv() for _ in range(10)]
    await hubs.stop()
    srv = await hubs.start()
    async with ws(srv.port, "/ws?last=10") as sub:
        after = [await sub.recv() for _ in range(10)]
    assert after == before
    async with ws(srv.port, f"/ws?since={ids[3]}&app=a") as sub, ws(srv.port, "/api") as api:
        got = await recv_n(sub, 3)  # 5, 7, 9
        assert [e["payload"]["n"] for e in got] == [5, 7, 9]
        new = await publish(api, event(app="a", n=10))
        assert parse_id(new[0]) > parse_id(ids[-1])
        assert (await recv_json(sub))["id"] == new[0]
    status = srv.status()
    assert status["lastId"] == new[0] and status["retained"] == 11


async def test_ids_keep_increasing_when_the_clock_goes_back(hubs: Hubs, monkeypatch: pytest.MonkeyPatch) -> None:
    """Restarted with the wall clock an hour behind, the hub numbers on from the stored last id."""
    srv = await hubs.start()
    async with ws(srv.port, "/api") as api:
        old = await publish(api, event(n=1))
    await hubs.stop()
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() - 3600)
    srv = await hubs.start()
    async with ws(srv.port, "/api") as api:
        new = await publish(api, event(n=2), event(n=3))
    assert parse_id(old[0]) < parse_id(new[0]) < parse_id(new[1])
    assert parse_id(new[0])[0] == parse_id(old[0])[0]  # the stored millisecond, counted on


async def test_replay_filters_match_the_memory_broker(hubs: Hubs) -> None:
    """Exact types (through the index), wildcards and apps select what the memory broker would, in order."""
    srv = await hubs.start()
    types = ["deploy.queued", "deploy.step", "backup.completed", "deploy.completed", "app.restarted"]
    async with ws(srv.port, "/api") as api:
        for i in range(40):
            t = types[i % len(types)]
            payload: dict[str, Any] = {"n": i}
            if t == "deploy.step":
                payload.update(step="build", status="running")
            elif t == "app.restarted":
                payload["appId"] = "x"
            elif t != "backup.completed":
                payload = {"n": i, "id": "r", "app": "x", "status": "s", "steps": [], "startedAt": "t", "ref": "r"}
            await publish(api, {"type": t, "appId": "a" if i % 3 else "b", "payload": payload})
    broker = srv.broker
    from norn_cli.hub.brokers.memory import MemoryBroker

    mem = MemoryBroker(1000)
    all_events = (await broker.replay(since=(0, 0), last=None, flt=Filter())).events
    assert len(all_events) == 40
    mem._history.extend(all_events)  # the same events, in a memory broker's history
    mem._floor = (0, 0)
    cases = [
        Filter(types=["deploy.queued"]), Filter(types=["deploy.queued", "deploy.completed"]),
        Filter(types=["backup.completed", "deploy.step"]), Filter(["a"], ["backup.completed"]),
        Filter(["a"], ["deploy.*"]), Filter(types=["*.completed"]), Filter(["b"]), Filter(["a", "b"], ["app.restarted"]),
    ]  # fmt: skip
    middle = all_events[17].key
    for flt in cases:
        for since, last in ((None, 3), ((0, 0), None), (middle, None), (middle, 2), (None, 0)):
            got = await broker.replay(since=since, last=last, flt=flt)
            want = mem.replay_now(since=since, last=last, flt=flt)
            assert [e.id for e in got.events] == [e.id for e in want.events], (flt.key, since, last)
            assert [e.data for e in got.events] == [e.data for e in want.events]


async def test_handoff_from_disk_to_live_has_no_gap_and_no_duplicate(hubs: Hubs) -> None:
    """Subscribers joining with since= while a publisher streams get every event once, in order."""
    srv = await hubs.start()
    total = 600
    async with ws(srv.port, "/api") as api:
        first = await publish(api, event(n=-1))

        async def produce() -> None:
            for i in range(total):
                await api.send(json.dumps({"op": "publish", "event": event(n=i)}))
            for _ in range(total):
                assert json.loads(await api.recv())["ok"] is True

        async def consume(tap: Any, delay_events: int) -> list[int]:
            await recv_n(tap, delay_events)  # join once this many live events have gone out
            async with ws(srv.port, f"/ws?since={first[0]}") as sub:
                # the tap keeps reading, so it never holds the publisher back as a slow consumer
                _, got = await asyncio.gather(recv_n(tap, total - delay_events), recv_n(sub, total))
                return [e["payload"]["n"] for e in got]

        async with contextlib.AsyncExitStack() as stack:
            taps = [await stack.enter_async_context(ws(srv.port, "/ws")) for _ in range(4)]
            async with asyncio.timeout(TIMEOUT):
                results = await asyncio.gather(
                    produce(), *(consume(tap, d) for tap, d in zip(taps, (1, 50, 200, 400)))
                )
    for seen in results[1:]:
        assert seen == list(range(total))


async def test_since_before_the_history_reports_a_gap_and_inside_it_none(hubs: Hubs) -> None:
    """Pruned by count, the history says which since= may have missed events (hub.gap) and which did not."""
    srv = await hubs.start(history=5)
    async with ws(srv.port, "/api") as api:
        ids = await publish(api, *(event(n=i) for i in range(12)))
    await until(srv.broker, lambda: srv.broker.retained == 5)
    async with ws(srv.port, f"/ws?since={ids[2]}") as sub:
        gap = await recv_json(sub)
        assert gap == {"type": "hub.gap", "appId": "", "payload": {"since": ids[2], "oldest": ids[7]}}
        assert [e["id"] for e in await recv_n(sub, 5)] == ids[7:]
    await hubs.stop()
    srv = await hubs.start(history=5)
    async with ws(srv.port, f"/ws?since={ids[6]}") as sub, ws(srv.port, "/api") as api:
        got = await recv_n(sub, 5)
        assert [e["id"] for e in got] == ids[7:]  # no hub.gap first
        new = await publish(api, event(n=12))
        assert (await recv_json(sub))["id"] == new[0]
    assert len(stored(hubs.path)) <= 6


async def test_retention_by_age(hubs: Hubs) -> None:
    """Events older than --retention are pruned in the background; the hub still numbers on above them."""
    srv = await hubs.start(retention=0.3)
    async with ws(srv.port, "/api") as api:
        ids = await publish(api, event(n=1), event(n=2))
        await until(srv.broker, lambda: srv.broker.retained == 0)
        assert stored(hubs.path) == []
        async with ws(srv.port, f"/ws?since={ids[0]}") as sub:
            assert (await recv_json(sub))["type"] == "hub.gap"
        async with ws(srv.port, f"/ws?since={ids[1]}") as sub:
            new = await publish(api, event(n=3))
            assert (await recv_json(sub))["id"] == new[0]  # nothing after ids[1] was lost: no gap
    assert srv.status()["lastId"] == new[0]


async def test_the_log_starts_over_short_after_a_checkpoint(hubs: Hubs, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once a checkpoint has copied the write-ahead log into the file, the next commit cuts the log to its own
    frames, so commits append to a short log instead of writing over the frames of a long one."""
    monkeypatch.setattr(sqlite_broker, "CHECKPOINT_EVERY", 0.2)
    srv = await hubs.start()
    log = hubs.path.with_name(hubs.path.name + "-wal")
    frame = 24 + 4096
    async with ws(srv.port, "/api") as api:
        for n in range(100):  # a commit each, a frame or more each
            await publish(api, event(n=n))
        await until(srv.broker, lambda: srv.broker.metrics()["norn_sqlite_checkpoints_total"] >= 1)
        await publish(api, event(n=100))
        assert log.stat().st_size <= 32 + 8 * frame  # the header and this commit's few frames (kept: over 100)
    assert [json.loads(d)["payload"]["n"] for _, d in stored(hubs.path)] == list(range(101))


# ---------------------------------------------------------------- faults


async def test_write_errors_refuse_publishes_until_writes_succeed_again(hubs: Hubs) -> None:
    """A full database (max_page_count) refuses the publishes of the failed group as unavailable, never acks
    them, answers /healthz 503 with the reason, keeps subscribers, and heals by itself once space is freed."""
    srv = await hubs.start(max_pages=40)
    broker = srv.broker
    assert isinstance(broker, SqliteBroker)
    big = "x" * 2000
    async with ws(srv.port) as sub, ws(srv.port, "/api") as api:
        await wait_members(srv, 1)
        acked: list[str] = []
        async with asyncio.timeout(TIMEOUT):
            while True:
                reply = await request(api, {"op": "publish", "event": event(n=len(acked), pad=big)})
                if not reply["ok"]:
                    break
                acked.append(reply["id"])
        assert reply["error"]["code"] == "unavailable"
        assert reply["error"]["message"] == (
            f"cannot write to {hubs.path} (the disk is full, or the database reached its size limit); "
            "nothing was published, try again when the hub is healthy"
        )
        status, _, body = await http_get(srv.port, "/healthz")
        assert status == 503
        assert json.loads(body) == {"ok": False, "clients": 1, "broker": "sqlite", "error": broker.problem}
        assert [e["id"] for e in await recv_n(sub, len(acked))] == acked
        assert [json.loads(d)["id"] for _, d in stored(hubs.path)] == acked
        broker.history = 2  # the operator frees space: pruning makes room
        await until(broker, lambda: broker.problem is None)
        assert (await http_get(srv.port, "/healthz"))[0] == 200
        new = await publish(api, event(n="after"))
        assert (await recv_json(sub))["id"] == new[0]
        assert parse_id(new[0]) > parse_id(acked[-1])
    metrics = srv.metrics_text()
    assert "norn_sqlite_write_errors_total " in metrics and "norn_sqlite_write_errors_total 0" not in metrics


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: p.write_text("hello, not a database\n" * 100), "{p} is not a norn database (file is not a database); move it away, or use another file"),
        (lambda p: sqlite3.connect(p).execute("CREATE TABLE t (x)").connection.commit(),
         "{p} is not a norn database (it is some other SQLite database); move it away, or use another file"),
    ],
    ids=["text-file", "other-sqlite"],
)  # fmt: skip
async def test_a_file_that_is_not_ours_is_refused(tmp_path: Path, setup: Any, message: str) -> None:
    """A text file or another program's SQLite database is refused with one sentence, and left as it was."""
    path = tmp_path / "x.db"
    setup(path)
    before = path.read_bytes()
    with pytest.raises(ConfigError) as info:
        await HubServer(port=0, broker=SqliteBroker(path)).start()
    assert info.value.message == message.format(p=path)
    assert path.read_bytes() == before


async def test_a_newer_schema_is_refused(hubs: Hubs) -> None:
    """A database written by a newer norn is refused, naming both schema versions."""
    await hubs.start()
    await hubs.stop()
    with sqlite3.connect(hubs.path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(ConfigError) as info:
        await hubs.start()
    assert info.value.message == (
        f"{hubs.path} was written by a newer norn (schema {SCHEMA_VERSION + 1}; this norn knows {SCHEMA_VERSION}); "
        "upgrade norn, or use another file"
    )


async def test_a_second_hub_on_the_same_file_is_refused(hubs: Hubs) -> None:
    """The lock beside the file names the hub that holds it; once that hub stops, the file is free."""
    await hubs.start()
    import os

    with pytest.raises(ConfigError) as info:
        await HubServer(port=0, broker=SqliteBroker(hubs.path)).start()
    assert info.value.message == (
        f"{hubs.path} is in use by another norn hub (pid {os.getpid()}); stop that hub, or give this one another file"
    )
    await hubs.stop()
    await hubs.start()


# ---------------------------------------------------------------- publish keys


def keyed(n: int, key: str) -> dict[str, Any]:
    return {**event(n=n), "key": key}


async def test_publish_keys_outlive_a_restart(hubs: Hubs) -> None:
    """A key is stored with its event: after a restart the same key is answered with the original id,
    and publishes nothing."""
    srv = await hubs.start()
    async with ws(srv.port, "/api") as api:
        first = await request(api, {"op": "publish", "event": keyed(1, "deploy-42")})
        again = await request(api, {"op": "publish", "event": keyed(2, "deploy-42")})
    assert first["ok"] and "duplicate" not in first
    assert again == {"ok": True, "id": first["id"], "duplicate": True}
    await hubs.stop()
    srv = await hubs.start()
    async with ws(srv.port, "/api") as api:
        after = await request(api, {"op": "publish", "events": [keyed(3, "deploy-42"), keyed(4, "deploy-43")]})
    assert after["ok"] and after["ids"][0] == first["id"] and after["duplicates"] == [0]
    assert [json.loads(d)["payload"]["n"] for _, d in stored(hubs.path)] == [1, 4]


async def test_a_key_in_flight_is_taken_once(hubs: Hubs) -> None:
    """Two publishes of one key at once, and a key twice in one batch: one event, the others its duplicates."""
    srv = await hubs.start()
    broker = srv.broker
    item = ("test.event", "a", {"n": 1})
    a, b = await asyncio.gather(broker.publish_keyed([item], ["k"]), broker.publish_keyed([item, item], ["k", None]))
    assert isinstance(a[0], Event) and b[0] == Duplicate(a[0].id) and isinstance(b[1], Event)
    batch = await broker.publish_keyed([item, item, item], ["x", "y", "x"])
    assert isinstance(batch[0], Event) and isinstance(batch[1], Event) and batch[2] == Duplicate(batch[0].id)
    assert len(stored(hubs.path)) == 4


async def test_a_key_whose_events_were_not_stored_is_not_remembered(hubs: Hubs) -> None:
    """A keyed publish refused as unavailable (the file is full) leaves no key behind: re-sent once the
    hub is healthy, it is published, not called a duplicate."""
    srv = await hubs.start(max_pages=40)
    broker = srv.broker
    assert isinstance(broker, SqliteBroker)
    pad = "x" * 2000
    async with ws(srv.port, "/api") as api:
        async with asyncio.timeout(TIMEOUT):
            n = 0
            while (reply := await request(api, {"op": "publish", "event": {**keyed(n, f"k{n}"), "payload": {"pad": pad}}}))["ok"]:
                n += 1
        assert reply["error"]["code"] == "unavailable"
        broker.history = 2
        await until(broker, lambda: broker.problem is None)
        retry = await request(api, {"op": "publish", "event": {**keyed(n, f"k{n}"), "payload": {"pad": "y"}}})
    assert retry["ok"] and "duplicate" not in retry
    assert json.loads(stored(hubs.path)[-1][1])["id"] == retry["id"]


async def test_keys_expire_with_the_dedupe_window(hubs: Hubs) -> None:
    """Past the window a key publishes again, and the stored key is forgotten."""
    srv = HubServer(host="127.0.0.1", port=0, broker=SqliteBroker(hubs.path))
    srv.broker.dedupe_window = 0.3
    hubs.srv = srv
    await srv.start()
    first = await srv.broker.publish_keyed([("test.event", "a", {})], ["short"])
    assert isinstance(first[0], Event)

    def keys_left() -> int:
        with sqlite3.connect(hubs.path) as db:
            return int(db.execute("SELECT count(*) FROM keys").fetchone()[0])

    await until(srv.broker, lambda: keys_left() == 0)
    again = await srv.broker.publish_keyed([("test.event", "a", {})], ["short"])
    assert isinstance(again[0], Event) and again[0].id != first[0].id
