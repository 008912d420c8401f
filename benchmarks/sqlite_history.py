"""The SQLite broker's file and memory over a long run, and its startup with a big history.

`growth`: one `norn serve --broker sqlite://...` (this checkout) with
`--history H`; one /api publisher sends EVENTS events (about 250 bytes of
envelope each) in batches of BATCH, at most WINDOW unacknowledged, and one
/ws subscriber reads them all. Every STEP events it prints the database
file's size (with its WAL) and the hub's RSS: once retention is reached,
the file should stop growing.

`--memory` runs the same against the memory broker, for its RSS.

`startup`: writes a database of EVENTS stored events straight through
sqlite3 (the broker's own schema, made by opening it once), then starts
`norn serve` on it RUNS times and prints how long each took to its ready
line (page cache warm: the file was just written or read; `--cold` drops
the page cache before each start, as root).

    python benchmarks/sqlite_history.py growth --events 1000000 --history 100000
    python benchmarks/sqlite_history.py startup --events 1000000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from norn_cli.core.events import make_event  # noqa: E402
from norn_cli.hub.brokers.sqlite_file import key_of  # noqa: E402


async def start_hub(db: Path | None, *args: str) -> tuple[asyncio.subprocess.Process, str, float]:
    """`norn serve` on `db` (None: the memory broker): the process, its URL and the seconds to its ready line."""
    started = time.perf_counter()
    broker = ["--broker", f"sqlite://{db}"] if db is not None else []
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "norn_cli", "serve", "--port", "0", *broker, *args,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert proc.stderr is not None
    line = (await proc.stderr.readline()).decode()
    took = time.perf_counter() - started
    if "listening on" not in line:
        raise SystemExit(f"norn serve did not start: {line}{(await proc.stderr.read()).decode()}")
    return proc, line.split("listening on ", 1)[1].split(" ", 1)[0], took


def file_bytes(db: Path) -> int:
    return sum(os.path.getsize(p) for p in (db, Path(f"{db}-wal")) if p.exists())


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def growth(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="norn-sqlite-") as tmp:
        db = Path(tmp) / "events.db"
        proc, url, _ = await start_hub(None if args.memory else db, "--history", str(args.history))
        pad = "x" * 100
        try:
            async with connect(url + "/ws", max_queue=None) as sub, connect(url + "/api") as api:
                received = 0

                async def read() -> None:
                    nonlocal received
                    async for _ in sub:
                        received += 1
                        if received == args.events:
                            return

                reader = asyncio.create_task(read())
                sent = acked = 0
                inflight = 0
                t0 = time.perf_counter()
                print(f"{'events':>10} {'file MiB':>9} {'hub RSS MiB':>11} {'events/s':>9}")
                next_mark = args.step
                while acked < args.events:
                    while inflight < args.window and sent < args.events:
                        n = min(args.batch, args.events - sent)
                        events = [{"type": "bench.tick", "appId": "bench", "payload": {"n": sent + i, "pad": pad}} for i in range(n)]
                        await api.send(json.dumps({"op": "publish", "events": events}))
                        sent += n
                        inflight += 1
                    reply = json.loads(await api.recv())
                    assert reply["ok"], reply
                    acked += len(reply["ids"])
                    inflight -= 1
                    if acked >= next_mark:
                        rate = acked / (time.perf_counter() - t0)
                        print(f"{acked:>10,} {file_bytes(db) / 2**20:>9.1f} {rss_bytes(proc.pid) / 2**20:>11.1f} {rate:>9,.0f}", flush=True)
                        next_mark += args.step
                await asyncio.wait_for(reader, 60)
        finally:
            proc.terminate()
            await proc.wait()
        print(f"after stopping: file {file_bytes(db) / 2**20:.1f} MiB")


def fill(db: Path, events: int) -> None:
    """EVENTS stored events, written straight into the broker's schema."""
    conn = sqlite3.connect(db, isolation_level=None)
    (last,) = conn.execute("SELECT last_key FROM state").fetchone()
    ms = max(int(time.time() * 1000), last >> 20) - events // 1000 - 1
    conn.execute("BEGIN")
    rows = []
    for i in range(events):
        key = (ms + i // 1000, i % 1000)
        ev = make_event(key, "bench.tick", "bench", {"n": i, "pad": "x" * 100}, key[0])
        rows.append((key_of(key), ev.type, ev.app, ev.data))
        if len(rows) == 10_000:
            conn.executemany("INSERT INTO events VALUES (?, ?, ?, ?)", rows)
            rows.clear()
    conn.executemany("INSERT INTO events VALUES (?, ?, ?, ?)", rows)
    (newest,) = conn.execute("SELECT max(key) FROM events").fetchone()
    conn.execute("UPDATE state SET last_key = ?, count = ?, count_key = ?", (newest, events, newest))
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


async def startup(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="norn-sqlite-") as tmp:
        db = Path(tmp) / "events.db"
        proc, _, _ = await start_hub(db)  # creates the schema
        proc.terminate()
        await proc.wait()
        t = time.perf_counter()
        fill(db, args.events)
        print(f"wrote {args.events:,} events in {time.perf_counter() - t:.1f} s: {file_bytes(db) / 2**20:.0f} MiB")
        took = []
        for _ in range(args.runs):
            if args.cold:  # needs root: the file is read from disk again
                os.sync()
                Path("/proc/sys/vm/drop_caches").write_text("3\n")
            proc, url, seconds = await start_hub(db, "--history", str(args.events))
            async with connect(url + "/api") as api:
                await api.send(json.dumps({"op": "status"}))
                status = json.loads(await api.recv())
            assert status["retained"] == args.events, status
            proc.terminate()
            await proc.wait()
            took.append(seconds)
        print("to the ready line:", ", ".join(f"{s * 1000:.0f} ms" for s in took), f"(median {statistics.median(took) * 1000:.0f} ms)")
        t = time.perf_counter()
        out = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "norn_cli", "--help", stdout=asyncio.subprocess.DEVNULL, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        await out.wait()
        print(f"for scale, `norn --help`: {(time.perf_counter() - t) * 1000:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    g = sub.add_parser("growth")
    g.add_argument("--events", type=int, default=1_000_000)
    g.add_argument("--history", type=int, default=100_000)
    g.add_argument("--batch", type=int, default=100)
    g.add_argument("--window", type=int, default=8)
    g.add_argument("--step", type=int, default=100_000)
    g.add_argument("--memory", action="store_true", help="the memory broker instead, for comparison")
    s = sub.add_parser("startup")
    s.add_argument("--events", type=int, default=1_000_000)
    s.add_argument("--runs", type=int, default=5)
    s.add_argument("--cold", action="store_true", help="drop the page cache before each start (root only)")
    args = parser.parse_args()
    asyncio.run(growth(args) if args.what == "growth" else startup(args))


if __name__ == "__main__":
    main()
