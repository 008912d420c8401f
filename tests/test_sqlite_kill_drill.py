"""Issue 13's drill on one SQLite hub killed with -9 and restarted in place: emit --stream and two tails, every event once, in order."""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from drill_support import finish, start_emit, start_tails, verdict
from test_sqlite_drills import Hub, hubs  # noqa: F401  (hubs: the fixture)


def events_on_disk(db: Path) -> int:
    with closing(sqlite3.connect(db)) as conn:
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])


DRILL_EVENTS = 6000
DRILL_RATE = 600  # events/s offered by the feeder: 10 s of input
DRILL_KILLS = 4
DRILL_EVERY = 2.0  # seconds between kills
DRILL_TAILS = 2


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
        tails = await start_tails(hub.url, DRILL_TAILS, DRILL_EVENTS, procs)
        emit = await start_emit(hub.url, procs)

        async def killer() -> int:
            for _ in range(DRILL_KILLS):
                await asyncio.sleep(DRILL_EVERY)  # the drill's cadence
                hub.kill()
                await hub.wait()
                await hub.start()
            return DRILL_KILLS

        codes = await finish(emit, tails, killer(), DRILL_EVENTS, DRILL_RATE)
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()

    counts = verdict(emit, tails, codes, DRILL_EVENTS)
    assert events_on_disk(hub.db) == DRILL_EVENTS
    print(f"\nsqlite drill: {DRILL_EVENTS} events, hub killed -9 {DRILL_KILLS} times; {counts}")
