"""Issue 13's drill on one SQLite hub killed with -9 and restarted in place: emit --stream and two tails, every event once, in order."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from conftest import TIMEOUT, norn_argv, norn_env
from test_sqlite_drills import Hub, hubs  # noqa: F401  (hubs: the fixture)


def events_on_disk(db: Path) -> int:
    with closing(sqlite3.connect(db)) as conn:
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])


DRILL_EVENTS = 6000
DRILL_RATE = 600  # events/s offered by the feeder: 10 s of input
DRILL_KILLS = 4
DRILL_EVERY = 2.0  # seconds between kills
DRILL_TAILS = 2


async def _lines(stream: asyncio.StreamReader, into: list[str]) -> None:
    while raw := await stream.readline():
        into.append(raw.decode().rstrip("\n"))


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_kill_9_the_sqlite_hub_in_place_nothing_lost_nothing_doubled(tmp_path: Path, hubs: list[Hub]) -> None:
    """`norn emit --stream` and `norn tail --json` against one SQLite hub killed -9 and restarted in place:
    emit gets N distinct ids, every tail prints exactly those N events once, in order."""
    hub = Hub(tmp_path / "drill.db")
    hubs.append(hub)
    await hub.start()
    procs: list[asyncio.subprocess.Process] = []
    try:
        tails: list[tuple[asyncio.subprocess.Process, list[str], list[str]]] = []
        for _ in range(DRILL_TAILS):
            p = await asyncio.create_subprocess_exec(
                *norn_argv("--url", hub.url, "tail", "-v", "--json", "--count", str(DRILL_EVENTS), "--app", "drill"),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=norn_env(),
            )  # fmt: skip
            procs.append(p)
            assert p.stdout is not None and p.stderr is not None
            out: list[str] = []
            err: list[str] = []
            async with asyncio.timeout(TIMEOUT):  # -v: it says when it is subscribed
                while "subscribed to" not in (line := (await p.stderr.readline()).decode()):
                    assert line, "tail ended before it subscribed"
                    err.append(line.rstrip("\n"))
            asyncio.get_running_loop().create_task(_lines(p.stdout, out))
            asyncio.get_running_loop().create_task(_lines(p.stderr, err))
            tails.append((p, out, err))
        emit = await asyncio.create_subprocess_exec(
            *norn_argv("--url", hub.url, "emit", "--file", "-", "--stream", "--json"),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=norn_env(),
        )  # fmt: skip
        procs.append(emit)
        assert emit.stdout is not None and emit.stderr is not None and emit.stdin is not None
        acks: list[str] = []
        emit_err: list[str] = []
        readers = [
            asyncio.ensure_future(_lines(emit.stdout, acks)),
            asyncio.ensure_future(_lines(emit.stderr, emit_err)),
        ]

        async def feed() -> None:
            assert emit.stdin is not None
            loop = asyncio.get_running_loop()
            start = loop.time()
            chunk = DRILL_RATE // 20
            for first in range(0, DRILL_EVENTS, chunk):
                lines = "".join(
                    json.dumps({"type": "drill.tick", "appId": "drill", "payload": {"n": n}}) + "\n"
                    for n in range(first, min(first + chunk, DRILL_EVENTS))
                )
                emit.stdin.write(lines.encode())
                await emit.stdin.drain()
                await asyncio.sleep(max(0.0, start + (first + chunk) / DRILL_RATE - loop.time()))  # the steady rate
            emit.stdin.close()

        async def killer() -> int:
            for _ in range(DRILL_KILLS):
                await asyncio.sleep(DRILL_EVERY)  # the drill's cadence
                hub.kill()
                await hub.wait()
                await hub.start()
            return DRILL_KILLS

        async with asyncio.timeout(DRILL_EVENTS / DRILL_RATE + TIMEOUT * 4):
            killed, _ = await asyncio.gather(killer(), feed())
            code = await emit.wait()
            await asyncio.gather(*readers)
            tail_codes = [await p.wait() for p, _, _ in tails]
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()

    assert code == 0, emit_err[-5:]
    replies = [json.loads(line) for line in acks]
    ids = [r["id"] for r in replies]
    assert len(ids) == DRILL_EVENTS and len(set(ids)) == DRILL_EVENTS
    duplicates = sum(1 for r in replies if r.get("duplicate"))
    reconnects = sum(1 for line in emit_err if "reconnected to" in line)
    for (_, out, err), tail_code in zip(tails, tail_codes):
        assert tail_code == 0, err[-5:]
        envs = [json.loads(line) for line in out]
        assert [e["id"] for e in envs] == ids  # exactly these events, each once, in one order
        assert [e["payload"]["n"] for e in envs] == list(range(DRILL_EVENTS))
    tail_reconnects = [sum(1 for line in err if "reconnected to" in line) for _, _, err in tails]
    assert events_on_disk(hub.db) == DRILL_EVENTS
    print(
        f"\nsqlite drill: {DRILL_EVENTS} events, hub killed -9 {killed} times; emit: exit {code}, "
        f"{len(set(ids))} distinct ids, {duplicates} duplicates absorbed by keys, {reconnects} reconnects; "
        f"tails: {[len(out) for _, out, _ in tails]} events each, identical order, reconnects {tail_reconnects}"
    )
