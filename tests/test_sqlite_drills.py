"""Drills with real processes: `norn serve --broker sqlite:///...` killed with -9 mid-storm, restarted, and faulted.

Every guarantee docs/brokers.md states about the SQLite broker names a test here.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from conftest import TIMEOUT, norn_argv, norn_env, run_norn
from helpers import http_get
from norn_cli.core.events import parse_id
from norn_cli.hub.brokers.sqlite_file import SCHEMA_VERSION

ROUNDS = 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Hub:
    """A `norn serve` subprocess on a fixed port, killed and started again by the test."""

    def __init__(self, db: Path, *args: str, port: int | None = None, cwd: Path | None = None) -> None:
        self.db = db
        self.args = args
        self.port = port or free_port()
        self.cwd = cwd
        self.proc: asyncio.subprocess.Process | None = None
        self.killed = False
        self.stderr: list[str] = []
        self.more = asyncio.Event()  # set when a line is added to `stderr`

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def start(self) -> Hub:
        self.killed = False
        self.proc = await asyncio.create_subprocess_exec(
            *norn_argv("serve", "--port", str(self.port), "--broker", f"sqlite://{self.db}", *self.args),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=norn_env(), cwd=self.cwd,
        )  # fmt: skip
        assert self.proc.stderr is not None
        async with asyncio.timeout(TIMEOUT):
            while True:
                line = (await self.proc.stderr.readline()).decode()
                if not line:
                    raise AssertionError(f"norn serve exited: {''.join(self.stderr)}")
                self.stderr.append(line)
                if "listening on" in line:
                    break
        asyncio.get_running_loop().create_task(self._drain())
        return self

    async def _drain(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self.stderr.append(line.decode())
            self.more.set()

    async def line(self, text: str, start: int = 0) -> int:
        """Wait for a line of the hub's stderr, from the `start`-th on, that contains `text`; its index."""
        async with asyncio.timeout(TIMEOUT):
            while True:
                for i in range(start, len(self.stderr)):
                    if text in self.stderr[i]:
                        return i
                start = len(self.stderr)
                self.more.clear()
                await self.more.wait()

    def kill(self) -> None:
        """SIGKILL now (from any callback): no shutdown hook runs.

        Once per process: a second send_signal would poll, reaping the process
        before asyncio's child watcher can, which then reports exit code 255.
        """
        if self.proc is not None and self.proc.returncode is None and not self.killed:
            self.killed = True
            self.proc.send_signal(signal.SIGKILL)

    async def wait(self) -> int:
        assert self.proc is not None
        async with asyncio.timeout(TIMEOUT):
            return await self.proc.wait()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None and not self.killed:
            self.killed = True
            self.proc.send_signal(signal.SIGTERM)
            await self.wait()

    async def api(self, request: dict[str, Any]) -> dict[str, Any]:
        async with connect(self.url + "/api", open_timeout=TIMEOUT) as api:
            await api.send(json.dumps(request))
            async with asyncio.timeout(TIMEOUT):
                reply: dict[str, Any] = json.loads(await api.recv())
                return reply


@pytest.fixture
async def hubs() -> AsyncIterator[list[Hub]]:
    """Hubs a test starts; killed at the end whatever happened."""
    started: list[Hub] = []
    try:
        yield started
    finally:
        for hub in started:
            hub.kill()
            if hub.proc is not None:
                await hub.wait()


def on_disk(db: Path, after: int = -1) -> list[tuple[int, str, Any]]:
    """(key, id, payload) of the stored events above `after`, read beside the running hub."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT key, data FROM events WHERE key > ? ORDER BY key", (after,)).fetchall()
    out = []
    for key, data in rows:
        env = json.loads(data)
        out.append((key, env["id"], env["payload"]))
    return out


# ---------------------------------------------------------------- kill -9 storms


async def storm(hub: Hub, rnd: int, kill_after: int, rng: random.Random) -> list[tuple[str, tuple[int, int]]]:
    """Publish pipelined single events and batches until the hub dies; kill it with -9 once
    `kill_after` events are acknowledged. Returns (id, tag) of every acknowledged event, in ack order."""
    acked: list[tuple[str, tuple[int, int]]] = []
    inflight: asyncio.Queue[list[tuple[int, int]]] = asyncio.Queue()
    window = asyncio.Semaphore(32)
    n = 0
    async with connect(hub.url + "/api", open_timeout=TIMEOUT) as api:

        async def send() -> None:
            nonlocal n
            while True:
                await window.acquire()
                size = 1 if rng.random() < 0.5 else rng.randint(1, 20)
                tags = [(rnd, n + i) for i in range(size)]
                n += size
                events = [{"type": "drill.tick", "appId": "drill", "payload": {"r": r, "n": i}} for r, i in tags]
                req = {"op": "publish", "event": events[0]} if size == 1 else {"op": "publish", "events": events}
                inflight.put_nowait(tags)
                await api.send(json.dumps(req))

        async def receive() -> None:
            while True:
                reply = json.loads(await api.recv())
                tags = inflight.get_nowait()
                window.release()
                assert reply["ok"] is True, reply
                ids = [reply["id"]] if "id" in reply else reply["ids"]
                acked.extend(zip(ids, tags))
                if len(acked) >= kill_after:
                    hub.kill()

        if kill_after == 0:
            hub.kill()
        sender = asyncio.ensure_future(send())
        try:
            async with asyncio.timeout(TIMEOUT):
                await receive()  # until the connection dies, after every ack that arrived
        except ConnectionClosed:
            pass
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
    return acked


class Follower:
    """A /ws subscriber that resumes after every restart with since=<the last id it got>."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.frames: list[dict[str, Any]] = []
        self.since = ""
        self.task: asyncio.Task[None] | None = None
        self.joined = asyncio.Event()
        self.got = asyncio.Event()  # set (and replaced) at each id received

    def follow(self, hub: Hub) -> None:
        self.joined.clear()
        self.task = asyncio.get_running_loop().create_task(self._run(hub))

    async def _run(self, hub: Hub) -> None:
        query = f"?since={self.since}" if self.since else ""
        try:
            async with connect(hub.url + "/ws" + query, open_timeout=TIMEOUT) as sub:
                if not self.since:
                    self.since = sub.response.headers["Norn-Last-Id"]
                self.joined.set()
                async for raw in sub:
                    env = json.loads(raw)
                    self.frames.append(env)
                    if "id" in env:
                        self.ids.append(env["id"])
                        self.since = env["id"]
                        self.got.set()
                        self.got = asyncio.Event()
        except (ConnectionClosed, OSError):
            pass

    async def ended(self) -> None:
        assert self.task is not None
        async with asyncio.timeout(TIMEOUT):
            await self.task

    async def caught_up(self, last_id: str) -> None:
        async with asyncio.timeout(TIMEOUT):
            while not self.ids or self.ids[-1] != last_id:
                await self.got.wait()


async def test_kill_9_storms_lose_no_acknowledged_event(tmp_path: Path, hubs: list[Hub]) -> None:
    """20 rounds of a publish storm with the hub killed (-9) at a random point: after each restart every
    acknowledged id is on disk exactly once, in order, with its payload; nothing is there twice; a live
    subscriber never saw an event the crash took back; ids keep increasing; and a subscriber resuming
    with since= after each restart gets every stored event once, with no hub.gap."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    db = tmp_path / "drill" / "events.db"
    hub = Hub(db, "--history", "1000000")
    hubs.append(hub)
    follower = Follower()
    stored: list[tuple[int, str, Any]] = []
    seen_tags: set[tuple[int, int]] = set()
    for rnd in range(ROUNDS):
        await hub.start()
        assert [k for k, _, _ in on_disk(db)] == [k for k, _, _ in stored], f"seed {seed}: the restart changed the file"
        follower.follow(hub)
        async with asyncio.timeout(TIMEOUT):
            await follower.joined.wait()
        if rnd == 0:  # one event first, so the follower resumes from an id of its own
            reply = await hub.api({"op": "publish", "event": {"type": "drill.tick", "appId": "drill", "payload": {"r": -1, "n": 0}}})
            await follower.caught_up(reply["id"])
        kill_after = rng.choice([0, 1, rng.randint(2, 300), rng.randint(300, 3000)])
        acked = await storm(hub, rnd, kill_after, rng)
        assert await hub.wait() == -signal.SIGKILL, "".join(hub.stderr)
        await follower.ended()
        # Read what the killed hub left on disk (WAL included), as the next hub will.
        new = on_disk(db, stored[-1][0] if stored else -1)
        if rnd == 0:
            stored.append(new.pop(0))  # the first event
            seen_tags.add((-1, 0))
        ids = [i for _, i, _ in new]
        assert [k for k, _, _ in new] == sorted({k for k, _, _ in new}), f"seed {seed}: order or duplicates"
        by_id = {i: (p["r"], p["n"]) for _, i, p in new}
        for event_id, tag in acked:
            assert by_id.get(event_id) == tag, f"seed {seed} round {rnd}: acknowledged {event_id} {tag} is missing"
        assert [i for i, _ in acked] == [i for i in ids if i in {a for a, _ in acked}], f"seed {seed}: ack order"
        tags = [(p["r"], p["n"]) for _, _, p in new]
        assert len(set(tags)) == len(tags) and not seen_tags & set(tags), f"seed {seed}: an event is stored twice"
        seen_tags.update(tags)
        if stored and new:
            assert parse_id(new[0][1]) > parse_id(stored[-1][1])
        stored.extend(new)
        all_ids = {i for _, i, _ in stored}
        assert set(follower.ids) <= all_ids, f"seed {seed}: a subscriber saw an event the crash took back"
    await hub.start()
    follower.follow(hub)
    if stored:
        await follower.caught_up(stored[-1][1])
    assert follower.ids == [i for _, i, _ in stored], f"seed {seed}: the resuming subscriber missed or repeated"
    assert not [f for f in follower.frames if f["type"] == "hub.gap"], f"seed {seed}"
    status = await hub.api({"op": "status"})
    assert status["retained"] == len(stored) and status["lastId"] == (stored[-1][1] if stored else "")


async def test_tail_resumes_across_restarts_without_a_gap(tmp_path: Path, hubs: list[Hub]) -> None:
    """`norn tail --json` keeps running while the hub is killed (-9) and restarted three times: it prints
    every stored event once, in order, and no hub.gap."""
    db = tmp_path / "events.db"
    hub = Hub(db)
    hubs.append(hub)
    await hub.start()
    tail = await asyncio.create_subprocess_exec(
        *norn_argv("--url", hub.url, "-v", "tail", "--json", "--until", "drill.done"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=norn_env(),
    )  # fmt: skip
    try:
        assert tail.stdout is not None and tail.stderr is not None
        async with asyncio.timeout(TIMEOUT):  # -v: the tail says when it is subscribed
            while b"subscribed to " not in (line := await tail.stderr.readline()):
                assert line, "the tail ended before it subscribed"
        rng = random.Random(7)
        for rnd in range(3):
            await storm(hub, rnd, rng.randint(50, 500), rng)
            await hub.wait()
            await hub.start()
        reply = await hub.api({"op": "publish", "event": {"type": "drill.done", "appId": "drill", "payload": {}}})
        assert reply["ok"]
        async with asyncio.timeout(TIMEOUT * 2):
            out, err = await tail.communicate()
        assert tail.returncode == 0, err
        printed = [json.loads(line) for line in out.decode().splitlines()]
        assert [e["type"] for e in printed].count("hub.gap") == 0
        assert [e["id"] for e in printed] == [i for _, i, _ in on_disk(db)]
    finally:
        if tail.returncode is None:
            tail.kill()
            await tail.wait()


# ---------------------------------------------------------------- retention on a real hub


async def test_retention_by_count_and_age_on_a_running_hub(tmp_path: Path, hubs: list[Hub]) -> None:
    """`--history 50 --retention 2s`: the newest 50 stay until they are 2 s old, then none; a resume from
    before the history is told of the gap, a resume from the last id is not."""
    db = tmp_path / "events.db"
    hub = Hub(db, "--history", "50", "--retention", "2s", "-vv")  # -vv: the hub logs each pruning step
    hubs.append(hub)
    await hub.start()
    async with connect(hub.url + "/api", open_timeout=TIMEOUT) as api:
        for i in range(4):
            events = [{"type": "drill.tick", "appId": "drill", "payload": {"n": 50 * i + j}} for j in range(50)]
            await api.send(json.dumps({"op": "publish", "events": events}))
        async with asyncio.timeout(TIMEOUT):
            replies = [json.loads(await api.recv()) for _ in range(4)]
    ids = [i for r in replies for i in r["ids"]]
    seen = -1
    while True:  # a pruning step may come between two of the publishes: wait for the one after the last
        seen = await hub.line(f"from {db}, 50 kept", seen + 1)
        if [i for _, i, _ in on_disk(db)] == ids[-50:]:
            break
    assert (await hub.api({"op": "status"}))["retained"] == 50
    await hub.line(f"from {db}, 0 kept", seen + 1)  # 2 s after they were published
    assert on_disk(db) == []
    assert (await hub.api({"op": "status"}))["retained"] == 0
    async with connect(f"{hub.url}/ws?since={ids[10]}", open_timeout=TIMEOUT) as sub:
        async with asyncio.timeout(TIMEOUT):
            assert json.loads(await sub.recv()) == {"type": "hub.gap", "appId": "", "payload": {"since": ids[10], "oldest": ""}}
    await hub.stop()
    await hub.start()
    async with connect(f"{hub.url}/ws?since={ids[-1]}", open_timeout=TIMEOUT) as sub:
        reply = await hub.api({"op": "publish", "event": {"type": "drill.tick", "appId": "drill", "payload": {}}})
        async with asyncio.timeout(TIMEOUT):
            assert json.loads(await sub.recv())["id"] == reply["id"]  # no hub.gap: nothing after ids[-1] was lost
    assert parse_id(reply["id"]) > parse_id(ids[-1])


# ---------------------------------------------------------------- faults


@contextmanager
def read_only(path: Path) -> Iterator[None]:
    """Make `path` unwritable, even for root (chattr +i), for the block."""
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(0o555 if path.is_dir() else 0o444)
        try:
            yield
        finally:
            path.chmod(mode)
        return
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("running as root without chattr +i: cannot make a path read-only")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def serve_fails(db: str, *args: str) -> str:
    """Run `norn serve` on `db` expecting exit 2 before it listens; its stderr."""
    result = run_norn("serve", "--port", "0", "--broker", db, *args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    return result.stderr


def test_not_a_norn_database(tmp_path: Path) -> None:
    """A file that is not a database, and another program's SQLite database: exit 2, one sentence, file untouched."""
    text = tmp_path / "notes.db"
    text.write_text("shopping list\n" * 200)
    assert serve_fails(f"sqlite://{text}") == (
        f"norn: {text} is not a norn database (file is not a database); move it away, or use another file\n"
    )
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE users (name TEXT)")
    before = other.read_bytes()
    assert serve_fails(f"sqlite://{other}") == (
        f"norn: {other} is not a norn database (it is some other SQLite database); move it away, or use another file\n"
    )
    assert other.read_bytes() == before and text.read_text() == "shopping list\n" * 200


async def test_newer_schema(tmp_path: Path, hubs: list[Hub]) -> None:
    """A database from a newer norn: exit 2 naming both versions."""
    db = tmp_path / "events.db"
    hub = Hub(db)
    await hub.start()
    await hub.stop()
    with sqlite3.connect(db) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    assert serve_fails(f"sqlite://{db}") == (
        f"norn: {db} was written by a newer norn (schema {SCHEMA_VERSION + 1}; this norn knows {SCHEMA_VERSION}); "
        "upgrade norn, or use another file\n"
    )


async def test_read_only_paths(tmp_path: Path, hubs: list[Hub]) -> None:
    """A read-only folder (new file, or an existing one) or a read-only file: exit 2, one sentence naming it."""
    folder = tmp_path / "ro"
    folder.mkdir()
    with read_only(folder):
        err = serve_fails(f"sqlite://{folder}/events.db")
    assert err.startswith(f"norn: cannot write to {folder}/events.db (") and err.endswith(
        "); make it and its folder writable, or use another file\n"
    ) and err.count("\n") == 1
    nested = folder / "new" / "events.db"
    with read_only(folder):
        err = serve_fails(f"sqlite://{nested}")
    assert err.startswith(f"norn: cannot create the folder {folder}/new for the SQLite broker (") and err.count("\n") == 1
    db = tmp_path / "events.db"
    hub = Hub(db)
    await hub.start()
    await hub.stop()
    with read_only(db):
        err = serve_fails(f"sqlite://{db}")
    assert err.startswith(f"norn: cannot write to {db} (") and err.count("\n") == 1


async def test_a_second_hub_on_the_same_file(tmp_path: Path, hubs: list[Hub]) -> None:
    """While one hub serves a file, a second `norn serve` on it exits 2 naming the first hub's pid."""
    db = tmp_path / "events.db"
    hub = Hub(db)
    hubs.append(hub)
    await hub.start()
    assert hub.proc is not None
    err = serve_fails(f"sqlite://{db}")
    assert err == (
        f"norn: {db} is in use by another norn hub (pid {hub.proc.pid}); stop that hub, or give this one another file\n"
    )
    hub.kill()
    await hub.wait()
    await hub.start()  # a killed hub's lock goes with it


async def test_disk_full_refuses_then_recovers_by_itself(tmp_path: Path, hubs: list[Hub]) -> None:
    """With the file capped (max_page_count), publishes past the cap get `unavailable` and no ack, /healthz
    says 503 with the reason, the subscriber stays connected; once retention frees pages the hub is healthy
    again by itself and the subscriber gets what comes next."""
    db = tmp_path / "events.db"
    hub = Hub(Path(f"{db}?max_pages=40"), "--retention", "4s")
    hubs.append(hub)
    await hub.start()
    pad = "x" * 3000
    async with connect(hub.url + "/ws", open_timeout=TIMEOUT) as sub, connect(hub.url + "/api") as api:
        acked: list[str] = []
        async with asyncio.timeout(TIMEOUT):
            while True:
                await api.send(json.dumps({"op": "publish", "event": {"type": "drill.tick", "appId": "drill", "payload": {"pad": pad}}}))
                reply = json.loads(await api.recv())
                if not reply["ok"]:
                    break
                acked.append(reply["id"])
        assert reply["error"]["code"] == "unavailable"
        reason = f"cannot write to {db} (the disk is full, or the database reached its size limit)"
        assert reply["error"]["message"] == f"{reason}; nothing was published, try again when the hub is healthy"
        status, _, body = await http_get(hub.port, "/healthz")
        assert (status, json.loads(body)) == (503, {"ok": False, "clients": 1, "broker": "sqlite", "error": reason})
        assert [i for _, i, _ in on_disk(db)] == acked
        await hub.line(f"{db} takes writes again; publishing resumes")  # once retention freed pages
        status, _, body = await http_get(hub.port, "/healthz")
        assert (status, json.loads(body)) == (200, {"ok": True, "clients": 1, "broker": "sqlite"})
        async with asyncio.timeout(TIMEOUT):
            await api.send(json.dumps({"op": "publish", "event": {"type": "drill.tick", "appId": "drill", "payload": {"n": 1}}}))
            after = json.loads(await api.recv())
            assert after["ok"] is True
            got = [json.loads(await sub.recv())["id"] for _ in range(len(acked) + 1)]
        assert got == [*acked, after["id"]]
    assert "publishes are refused until writes succeed again" in "".join(hub.stderr)
    await hub.stop()


# ---------------------------------------------------------------- runs across a restart

PIPELINE = """
[apps.web]
[[apps.web.deploy]]
name = "build"
run = "echo building"
[[apps.web.deploy]]
name = "test"
run = "echo $$ > step.pid; echo testing; exec sleep 60"
"""


async def test_a_run_cut_off_by_kill_9_is_watched_to_its_failure(tmp_path: Path, hubs: list[Hub]) -> None:
    """A deploy running when the hub is killed (-9): after the restart `norn watch RUN_ID` and
    `norn deploy --attach` find it and end with deploy.failed `hub restarted` (exit 1)."""
    (tmp_path / "norn.toml").write_text(PIPELINE)
    db = tmp_path / "events.db"
    hub = Hub(db, "--config", str(tmp_path / "norn.toml"), cwd=tmp_path)
    hubs.append(hub)
    await hub.start()
    try:
        async with connect(hub.url + "/ws?type=deploy.step", open_timeout=TIMEOUT) as sub:
            reply = await hub.api({"op": "deploy", "app": "web", "ref": "abc"})
            run_id = reply["runId"]
            async with asyncio.timeout(TIMEOUT):
                while True:
                    p = json.loads(await sub.recv())["payload"]
                    if p["step"] == "test" and p.get("output") == "testing":
                        break
        hub.kill()
        await hub.wait()
        await hub.start()
        for argv in (("watch", run_id, "--json"), ("deploy", "web", "--attach", "--json")):
            result = await asyncio.to_thread(run_norn, "--url", hub.url, *argv)
            assert result.returncode == 1, result.stderr
            printed = [json.loads(line) for line in result.stdout.splitlines()]
            assert printed[0]["type"] == "deploy.queued" and printed[-1]["type"] == "deploy.failed"
            assert {e["payload"]["runId"] for e in printed} == {run_id}
            final = printed[-1]["payload"]
            assert (final["error"], final["step"]) == ("hub restarted", "test")
            assert final["steps"][0]["status"] == "completed" and final["steps"][1]["status"] == "failed"
        assert "cut off by a hub restart" in "".join(hub.stderr)
    finally:
        pid_file = tmp_path / "step.pid"
        if pid_file.exists():  # the step outlived the killed hub, as an orphan would
            try:
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass


# ---------------------------------------------------------------- settings


async def test_serve_table_path_is_beside_the_config_file(tmp_path: Path, hubs: list[Hub]) -> None:
    """`[serve] broker = "sqlite://data/events.db"` creates the file (and its folder) beside norn.toml,
    whatever the current directory."""
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "norn.toml").write_text('[serve]\nbroker = "sqlite://data/events.db"\nretention = "7d"\nhistory = 500\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = await asyncio.create_subprocess_exec(
        *norn_argv("serve", "--port", "0", "--config", str(conf / "norn.toml")),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=norn_env(), cwd=elsewhere,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        async with asyncio.timeout(TIMEOUT):
            line = (await proc.stderr.readline()).decode()
        assert "listening on" in line and "broker: sqlite" in line, line
        assert (conf / "data" / "events.db").is_file()
        assert not (elsewhere / "data").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(TIMEOUT):
            assert await proc.wait() == 0


def test_sqlite_options_need_the_sqlite_broker() -> None:
    """--retention, --fsync or --no-pin-cpu with the memory broker is a usage error naming the broker they need."""
    for option in (["--retention", "7d"], ["--fsync", "always"], ["--no-pin-cpu"]):
        result = run_norn("serve", "--port", "0", *option)
        assert result.returncode == 2
        assert "--retention, --fsync and --no-pin-cpu apply to the SQLite broker only (--broker sqlite:///PATH)" in result.stderr
    bad = run_norn("serve", "--port", "0", "--broker", "sqlite:///tmp/x.db", "--retention", "a week")
    assert bad.returncode == 2 and "is not a duration: use seconds (30, 1.5) or units d, h, m, s, ms" in bad.stderr


async def test_keyed_resend_after_kill_9_publishes_each_event_once(tmp_path: Path, hubs: list[Hub]) -> None:
    """Keyed publishes with the hub killed (-9) mid-storm: re-sending everything after the restart (the
    acknowledged ones too) stores each event exactly once, and an acknowledged one keeps its id."""
    db = tmp_path / "events.db"
    hub = Hub(db, "--history", "100000")
    hubs.append(hub)
    await hub.start()
    total = 2000
    acked: dict[int, str] = {}

    def keyed(n: int) -> dict[str, Any]:
        return {"type": "drill.tick", "appId": "drill", "payload": {"n": n}, "key": f"drill-{n}"}

    window = asyncio.Semaphore(32)  # the hub is never more than 32 acks ahead of this reader
    async with connect(hub.url + "/api", open_timeout=TIMEOUT) as api:

        async def send() -> None:
            for n in range(total):
                await window.acquire()
                await api.send(json.dumps({"op": "publish", "event": keyed(n)}))

        sender = asyncio.ensure_future(send())
        try:
            async with asyncio.timeout(TIMEOUT):
                for n in range(total):
                    acked[n] = json.loads(await api.recv())["id"]
                    window.release()
                    if n == 700:
                        hub.kill()
        except ConnectionClosed:
            pass
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
    await hub.wait()
    assert 700 <= len(acked) < total
    await hub.start()
    async with connect(hub.url + "/api", open_timeout=TIMEOUT) as api:
        for start in range(0, total, 100):
            await api.send(json.dumps({"op": "publish", "events": [keyed(n) for n in range(start, start + 100)]}))
        async with asyncio.timeout(TIMEOUT):
            replies = [json.loads(await api.recv()) for _ in range(0, total, 100)]
    ids = [i for r in replies for i in r["ids"]]
    assert all(ids[n] == event_id for n, event_id in acked.items())
    stored = [p["n"] for _, _, p in on_disk(db)]
    assert sorted(stored) == list(range(total))  # each once
