"""Is a commit slower when SQLite writes over an old write-ahead log than when it appends to a new one?

Stand-alone, no hub, on the file system of --dir (default: a temporary
folder). Two measurements, each one write or commit every 5 ms (a lone
event at a moderate rate, so the CPU caches are as cold as in the hub):

`frames`: the system calls alone. A 24-byte header and a 4,096-byte page
(one WAL frame, at the offsets SQLite uses) written with `pwrite`, either
past the end of an emptied file (appending) or over a file of that many
frames written and synced beforehand (writing over).

`commits`: one-row INSERTs into an SQLite database in WAL mode with
`synchronous=NORMAL`, as the hub's writer does, after 2,000 earlier
commits and a checkpoint, so the log starts over: with
`journal_size_limit` 16 MiB (the log keeps its length and the commits
write over it) or 0 (SQLite cuts it at the first commit, the others append).

Prints the median, p90 and p99 of each, in µs, ROUNDS (3) rounds.

    python benchmarks/log_frames.py
    python benchmarks/log_frames.py --dir /var/lib/norn

Figures, not assertions (benchmarks/README.md, "Appending to the log").
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
import time
from pathlib import Path

FRAME = 24 + 4096
N = 600
PAUSE = 0.005


def _summary(ns: list[int]) -> str:
    ns = sorted(ns)
    at = lambda q: ns[min(len(ns) - 1, int(len(ns) * q))] / 1000  # noqa: E731
    return f"p50 {at(0.5):6.1f}  p90 {at(0.9):6.1f}  p99 {at(0.99):6.1f} µs"


def frames(path: Path, over: bool) -> list[int]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    try:
        if over:
            os.pwrite(fd, b"\0" * (32 + N * FRAME), 0)
            os.fsync(fd)
        header, page = os.urandom(24), os.urandom(4096)
        took = []
        for i in range(N):
            time.sleep(PAUSE)
            t = time.perf_counter_ns()
            os.pwrite(fd, header, 32 + i * FRAME)
            os.pwrite(fd, page, 32 + i * FRAME + 24)
            took.append(time.perf_counter_ns() - t)
        return took
    finally:
        os.close(fd)
        path.unlink()


def commits(path: Path, limit: int) -> list[int]:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute("PRAGMA wal_autocheckpoint = 0")
        db.execute(f"PRAGMA journal_size_limit = {limit}")
        db.execute("CREATE TABLE events (key INTEGER PRIMARY KEY, data BLOB)")
        row = b"x" * 250
        for key in range(2000):  # a long log
            db.execute("INSERT INTO events VALUES (?, ?)", (key, row))
        db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()  # copied whole: the next commit starts it over
        took = []
        for key in range(2000, 2000 + N):
            time.sleep(PAUSE)
            t = time.perf_counter_ns()
            db.execute("INSERT INTO events VALUES (?, ?)", (key, row))
            took.append(time.perf_counter_ns() - t)
        return took
    finally:
        db.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", type=Path, help="where to write (default: a temporary folder)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        where = Path(tmp)
        print(f"{N} writes or commits {PAUSE * 1000:.0f} ms apart in {where}")
        for r in range(1, args.rounds + 1):
            print(f"round {r}")
            print(f"  frame, appended          {_summary(frames(where / 'f', over=False))}")
            print(f"  frame, written over      {_summary(frames(where / 'f', over=True))}")
            print(f"  commit, log cut (0)      {_summary(commits(where / 'x.db', 0))}")
            print(f"  commit, log kept (16 MiB) {_summary(commits(where / 'x.db', 16 << 20))}")


if __name__ == "__main__":
    main()
