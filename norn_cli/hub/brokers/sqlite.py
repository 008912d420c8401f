"""The Broker interface on an SQLite file (stdlib sqlite3, WAL): one hub's history, kept across restarts and crashes.

Publishing: the events are numbered and encoded on the event loop, then
queued for one writer thread, which commits everything waiting when it
wakes in one transaction (group commit). Only after COMMIT are the events
handed to the hub, so a subscriber never sees an event a crash could take
back, and only then are the publishers acknowledged. The loop never waits
for the disk: while the writer commits, fan-out goes on.

A commit is kept to one multi-row INSERT where it can (one call into
SQLite, measured about half the time of executemany plus a state update):
no index on every event, only the hub's own event types are listed in a
small `lookups` table, and the count of retained events is written to the
state row at most once a second (a restart counts the rows after it).

Replays read in their own threads (WAL lets them read while the writer
writes) and stop at the last event delivered, so the hub's handoff to live
events (`Hub.catch_up`) has no gap and no duplicate.

Retention, by count (`history`) and by age (`retention`), is pruned by the
writer thread in small transactions between commits, a step of PRUNE_STEP
events at a time while publishing goes on and the last few once it pauses;
deleted pages are reused, so the file stops growing once retention is
reached. Checkpoints (copying SQLite's write-ahead log into the file) run in
a thread of their own, so their disk syncs are not in any publish's way:
one per CHECKPOINT_BYTES of events, and one once publishing pauses. After
each, the log starts over cut short (`journal_size_limit = 0`), so commits
append to it instead of writing over old frames: writing over them measured
about 100 µs more at the p99 of a lone event's delivery (benchmarks/README.md,
"Appending to the log").

The loop thread and the writer thread are pinned to one CPU (`pin_cpu`,
hub/cpus.py): every commit is two hand-offs between them, and on one CPU a
hand-off is a switch between two threads that take turns with the GIL
anyway, where across two it is a wake-up of the other CPU (measured on
two vCPUs: one publisher's throughput 45,000-48,000 events/s across them,
59,000-61,000 on one).

The clock restarts after the stored last id, so ids keep increasing across
restarts even when the wall clock went back. The file itself (schema, ids
as keys, the lock, the checks at opening, the queries) is sqlite_file.py.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from norn_cli.core.events import Event, EventId, Filter, format_id, make_event
from norn_cli.hub import cpus
from norn_cli.hub.brokers.base import (
    Broker, Deliver, Duplicate, IdClock, Item, KeyWindow, Receiver, Replay, Unavailable,
)  # fmt: skip
from norn_cli.hub.brokers.sqlite_file import (
    FSYNC, LOOKUP_TYPES, SEQ_MAX, Opened, connect, id_of, key_of, open_file, parse_sqlite_url, select,
    write_reason,
)  # fmt: skip

__all__ = ["SqliteBroker"]

log = logging.getLogger("norn.sqlite")

PRUNE_STEP = 1000  # rows deleted per pruning transaction: a short lock, often
QUIET = 0.05  # seconds without a commit before fewer than PRUNE_STEP events over the limit are pruned
AGE_CHECK = 1.0  # seconds between checks for events past the age limit
PROBE_EVERY = 0.5  # seconds between test writes while writes fail
PROBE_BYTES = 64 * 1024  # a test write this big must fit before the hub calls itself healthy again
READERS = 2  # threads answering replays
CHECKPOINT_BYTES = 4 << 20  # of events committed between checkpoints (SQLite's own default is 1,000 pages)
CHECKPOINT_EVERY = 1.0  # seconds without a commit before what is left in the log is copied
ROWS_PER_INSERT = 500  # a bigger group is several INSERTs in one transaction
STATE_EVERY = 1.0  # seconds between writes of the count to the state row while publishing


class _Group:
    """Events one publish call handed over, the publish keys stored with them
    (key, id, expires), and the future its caller awaits."""

    __slots__ = ("events", "future", "keys")

    def __init__(
        self, events: list[Event], future: asyncio.Future[list[Event]], keys: list[tuple[str, str, float]] | None = None
    ) -> None:
        self.events = events
        self.future = future
        self.keys = keys


class SqliteBroker(Broker):
    """One hub's durable history in an SQLite file.

    While writes fail (disk full, I/O error), `problem` says so and the
    publishes of each failed group raise `Unavailable`; a test write every
    half second (and every publish) finds out when the disk takes writes
    again, and then the hub is healthy without a restart.
    """

    name = "sqlite"
    publish_waits = True
    sole_writer = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        history: int = 10_000,
        retention: float | None = None,
        fsync: str = "normal",
        max_pages: int | None = None,
        pin_cpu: bool = True,
    ) -> None:
        if history < 0:
            raise ValueError("history must be >= 0")
        if retention is not None and retention <= 0:
            raise ValueError("retention must be a positive number of seconds")
        if fsync not in FSYNC:
            raise ValueError(f"fsync must be one of {', '.join(FSYNC)}, got {fsync!r}")
        self.path = Path(path).absolute()
        self.history = history
        self.retention = retention
        self.fsync = fsync
        self.max_pages = max_pages
        self.pin_cpu = pin_cpu
        self._unpin: frozenset[int] | None = None  # the loop thread's CPUs before it was pinned
        self._deliver: Deliver | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._file: Opened | None = None
        self._db: sqlite3.Connection | None = None  # the writer thread's
        self._clock = IdClock()
        self._inbox: queue.SimpleQueue[_Group | None] = queue.SimpleQueue()  # None: wake up and look
        self._stopping = False  # the writer thread ends once the inbox is empty
        self._inserts: dict[int, str] = {}
        self._pending_keys: dict[str, asyncio.Future[list[Event]]] = {}  # keys whose events are being committed
        self._closed = False
        self._writer: threading.Thread | None = None
        self._checkpointer: threading.Thread | None = None
        self._wal_due = threading.Event()  # the writer asks for a checkpoint
        self._wal_bytes = 0  # committed since it last asked
        self._catch_up = False  # the checkpointer made a pass: the writer copies the rest
        self._changes: asyncio.Event | None = None  # set (and replaced) when the writer changed something
        self._readers: concurrent.futures.ThreadPoolExecutor | None = None
        self._reader_conns: list[sqlite3.Connection] = []
        self._local = threading.local()
        self._problem: str | None = "the SQLite broker has not started"
        # Written by the writer thread, read anywhere (single int assignments).
        self._count = 0
        self._floor = 0
        self._oldest: int | None = None
        self._stored = 0  # the newest key committed
        self._delivered = 0  # the newest key handed to the hub (the loop's)
        self._commits = 0
        self._checkpoints = 0  # completed: the log starts over at the next commit
        self._committed = 0
        self._commit_seconds = 0.0
        self._write_errors = 0
        self._pruned = 0
        self._next_age_check = 0.0
        self._next_probe = 0.0
        self._next_prune = 0.0  # after a failed step, wait before the next
        self._last_commit = 0.0  # monotonic
        self._next_state = 0.0
        self._next_key_prune: float | None = None  # when the oldest stored publish key expires
        self._state_written = 0  # the newest key the state row counts

    # ------------------------------------------------------------ lifecycle

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> SqliteBroker:
        path, options = parse_sqlite_url(url)
        if "max_pages" in options:
            kwargs["max_pages"] = int(options["max_pages"])
        return cls(path, **kwargs)

    async def start(self, deliver: Deliver, hub: Receiver | None = None) -> None:
        """Open (or create) the database, then start the writer thread.

        Raises ConfigError, with one sentence naming the file and what to do,
        when the file cannot serve as this hub's history.
        """
        self._loop = asyncio.get_running_loop()
        self._file = f = open_file(self.path, fsync=self.fsync, max_pages=self.max_pages)
        self._db = f.db
        self._stored = self._delivered = self._state_written = f.last_key
        self._floor, self._count, self._oldest = f.floor_key, f.count, f.oldest
        self._clock = IdClock(id_of(max(f.last_key, f.floor_key)), max_seq=SEQ_MAX)
        self._key_window = KeyWindow(self.dedupe_window)
        for key, event_id, expires in f.keys:  # keys outlive the process, as events do
            self._key_window.add(key, event_id, expires - self.dedupe_window)
        if f.keys:
            self._next_key_prune = time.monotonic() + max(0.0, f.keys[0][2] - time.time())
        self._deliver = deliver
        self._problem = None
        self._changes = asyncio.Event()
        self._readers = concurrent.futures.ThreadPoolExecutor(
            READERS, thread_name_prefix="norn-sqlite-read", initializer=cpus.run_anywhere
        )
        self._checkpointer = threading.Thread(target=self._checkpoint_loop, name="norn-sqlite-checkpoint", daemon=True)
        self._checkpointer.start()
        if self.pin_cpu:
            self._unpin = cpus.pin_here()  # the writer thread inherits the loop thread's CPU
        self._writer = threading.Thread(target=self._write_loop, name="norn-sqlite-writer", daemon=True)
        self._writer.start()

    async def close(self) -> None:
        """Commit what is queued, stop the threads, close the file."""
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            self._stopping = True
            self._inbox.put(None)
            # The writer's last callbacks are queued on the loop before this
            # wait ends, so every group is answered by the time we go on.
            await asyncio.get_running_loop().run_in_executor(None, self._writer.join)
            cpus.unpin(self._unpin)
            self._unpin = None
        if self._checkpointer is not None:
            self._wal_due.set()
            await asyncio.get_running_loop().run_in_executor(None, self._checkpointer.join)
        if self._readers is not None:
            self._readers.shutdown(wait=True)
        for conn in self._reader_conns:
            conn.close()
        if self._file is not None:
            self._file.close()  # the last connection: SQLite folds the log into the file
            self._file = self._db = None
        self._problem = "the SQLite broker is closed"
        self._deliver = None

    # ------------------------------------------------------------ publishing

    async def publish(self, items: Sequence[Item]) -> list[Event]:
        """Number and encode the events, then wait until the writer has committed them.

        Raises Unavailable when their transaction failed (nothing of it is kept).
        """
        if self._closed or self._loop is None:
            raise Unavailable("the hub is shutting down; nothing was published")
        if not items:
            return []
        clock = self._clock
        events = []
        for etype, app, payload in items:
            key, ms = clock.next()
            events.append(make_event(key, etype, app, payload, ms))
        group = _Group(events, self._loop.create_future())
        self._inbox.put(group)
        return await group.future

    async def publish_keyed(self, items: Sequence[Item], keys: Sequence[str | None]) -> list[Event | Duplicate]:
        """`publish`, except that an item whose key was accepted within the dedupe window is not published.

        The keys are stored with their events, in the same transaction, so
        they outlive the process as the events do (a publisher re-sending
        after a `kill -9` of the hub gets the original ids). Checking and
        numbering happen on the loop, in one go, so a key is never taken
        twice; a duplicate of a key still being committed is answered once
        that commit is (and refused if it fails).
        """
        if self._closed or self._loop is None:
            raise Unavailable("the hub is shutting down; nothing was published")
        window = self._key_window
        assert window is not None
        now = time.time()
        out, fresh = window.sort(keys, now)
        waits = [  # the window's duplicates of keys still being committed
            pending for r, key in zip(out, keys) if r is not None and key is not None
            and (pending := self._pending_keys.get(key)) is not None
        ]  # fmt: skip
        group: _Group | None = None
        if fresh:
            events = []
            rows = []
            clock = self._clock
            for i in fresh:
                etype, app, payload = items[i]
                eid, ms = clock.next()
                ev = make_event(eid, etype, app, payload, ms)
                events.append(ev)
                out[i] = ev
                key = keys[i]
                if key is not None:
                    rows.append((key, ev.id, now + self.dedupe_window))
            group = _Group(events, self._loop.create_future(), rows or None)
            for key, event_id, _ in rows:
                window.add(key, event_id, now)
                self._pending_keys[key] = group.future
            self._inbox.put(group)
        try:
            if group is not None:
                await group.future
            for pending in waits:  # the originals these duplicate must be stored too
                await asyncio.shield(pending)
        except Unavailable:
            if group is not None and group.keys:
                for key, _, _ in group.keys:
                    window.discard(key)  # not stored: a re-send must publish it
            raise
        finally:
            if group is not None and group.keys:
                for key, _, _ in group.keys:
                    if self._pending_keys.get(key) is group.future:
                        del self._pending_keys[key]
        return window.settle(out, keys)

    def _write_loop(self) -> None:
        """The writer thread: commit everything waiting, prune and probe in between."""
        inbox = self._inbox
        while True:
            wait = self._housekeeping_due()
            try:
                first = inbox.get(timeout=wait) if wait > 0 else inbox.get_nowait()
            except queue.Empty:
                first = None
            groups = [] if first is None else [first]
            while True:  # everything waiting goes into this commit
                try:
                    more = inbox.get_nowait()
                except queue.Empty:
                    break
                if more is not None:
                    groups.append(more)
            try:
                if groups:
                    self._commit(groups)
                    self._housekeep(busy=sum(len(g.events) for g in groups))
                elif self._stopping:
                    if self._state_written != self._stored and self._problem is None:
                        self._write_state()
                    return
                else:
                    self._housekeep()
            except Exception:  # a bug of ours: the thread must go on answering publishers
                log.exception("the SQLite writer failed")
                if groups:  # a no-op for groups already handed over
                    self._post(self._refuse, groups, "the hub failed to store the events (see its log)")
                self._next_prune = time.monotonic() + PROBE_EVERY

    def _commit(self, groups: list[_Group]) -> None:
        """One transaction for every event of `groups`; then hand them to the loop (or refuse them)."""
        db = self._db
        assert db is not None
        events = [ev for g in groups for ev in g.events]
        first, last = key_of(events[0].key), key_of(events[-1].key)
        looked_up = [(key_of(ev.key), ev.type, ev.app) for ev in events if ev.type in LOOKUP_TYPES]
        started = time.perf_counter()
        try:
            keyed = [row for g in groups if g.keys for row in g.keys]
            if len(events) <= ROWS_PER_INSERT and not looked_up and not keyed:
                db.execute(self._insert(len(events)), _params(events))  # one statement: its own transaction
            else:
                db.execute("BEGIN IMMEDIATE")
                for i in range(0, len(events), ROWS_PER_INSERT):
                    chunk = events[i : i + ROWS_PER_INSERT]
                    db.execute(self._insert(len(chunk)), _params(chunk))
                if looked_up:
                    db.executemany("INSERT INTO lookups (key, type, app) VALUES (?, ?, ?)", looked_up)
                if keyed:
                    db.executemany("INSERT OR REPLACE INTO keys (key, id, expires) VALUES (?, ?, ?)", keyed)
                db.execute("COMMIT")
                if keyed and self._next_key_prune is None:
                    self._next_key_prune = time.monotonic() + self.dedupe_window
        except sqlite3.Error as exc:
            if not self._landed(db, last):
                self._write_failed(exc)
                self._post(self._refuse, groups, self._problem)
                return
            log.warning("a commit to %s reported an error but is on disk: %s", self.path, exc)
        self._commit_seconds += time.perf_counter() - started
        self._last_commit = time.monotonic()
        self._commits += 1
        self._committed += len(events)
        self._stored = last
        self._count += len(events)
        self._wal_bytes += sum(len(ev.data) for ev in events)
        if self._wal_bytes >= CHECKPOINT_BYTES:
            self._wal_bytes = 0
            self._wal_due.set()
        if self._oldest is None:
            self._oldest = first
        if self._problem is not None:
            self._healed()
        self._post(self._hand_over, groups)

    def _insert(self, n: int) -> str:
        """The INSERT of n events (SQLite caches each prepared statement)."""
        sql = self._inserts.get(n)
        if sql is None:
            sql = self._inserts[n] = "INSERT INTO events (key, type, app, data) VALUES " + ",".join(["(?,?,?,?)"] * n)
        return sql

    def _landed(self, db: sqlite3.Connection, last: int) -> bool:
        """After a failed COMMIT: roll back what is open, and tell whether the group is stored anyway."""
        try:
            if db.in_transaction:
                db.execute("ROLLBACK")
            return db.execute("SELECT 1 FROM events WHERE key = ?", (last,)).fetchone() is not None
        except sqlite3.Error:
            return False

    def _post(self, callback: Any, *args: Any) -> None:
        """Run `callback(*args)` on the event loop (in order with earlier posts)."""
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is gone: nobody waits any more
            pass

    def _hand_over(self, groups: list[_Group]) -> None:
        """On the loop, after COMMIT: deliver the events to the hub, then acknowledge."""
        events = [ev for g in groups for ev in g.events] if len(groups) > 1 else groups[0].events
        self._delivered = key_of(events[-1].key)
        if self._deliver is not None:
            try:
                self._deliver(events)
            except Exception:  # the hub's bug must not leave publishers waiting
                log.exception("delivering committed events failed")
        for g in groups:
            if not g.future.done():
                g.future.set_result(g.events)
        self._changed()

    @staticmethod
    def _refuse(groups: list[_Group], problem: str | None) -> None:
        message = f"{problem}; nothing was published, try again when the hub is healthy"
        for g in groups:
            if not g.future.done():
                g.future.set_exception(Unavailable(message))

    def _write_failed(self, exc: sqlite3.Error) -> None:
        self._write_errors += 1
        problem = f"cannot write to {self.path} ({write_reason(exc)})"
        if problem != self._problem:
            log.warning("%s; publishes are refused until writes succeed again", problem)
        self._problem = problem
        self._next_probe = time.monotonic() + PROBE_EVERY
        self._post(self._changed)

    def _healed(self) -> None:
        self._problem = None  # before the line saying so: a reader of the log may act on it
        log.warning("%s takes writes again; publishing resumes", self.path)
        self._post(self._changed)

    # ------------------------------------------------------------ housekeeping (writer thread)

    def _housekeeping_due(self) -> float:
        """Seconds until there is pruning or probing to do (0: now)."""
        now = time.monotonic()
        due = [60.0]
        if self._problem is not None and not self._closed:
            due.append(self._next_probe - now)
        excess = self._count - self.history
        if excess > 0:
            quiet = 0.0 if excess >= PRUNE_STEP else self._last_commit + QUIET
            due.append(max(self._next_prune, quiet) - now)
        if self.retention is not None:
            due.append(self._next_age_check - now)
        if self._state_written != self._stored:
            due.append(self._next_state - now)
        if self._catch_up:
            due.append(0.0)
        if self._next_key_prune is not None:
            due.append(self._next_key_prune - now)
        return min(due)

    def _housekeep(self, busy: int = 0) -> None:
        """One pruning step when due, and a test write while writes fail.

        `busy`: a commit of that many events just happened and more may be
        queued. The count limit is enforced a step at a time once a step's
        worth is over it, with steps sized to keep up with the load, and the
        rest once no commit came for QUIET seconds (a pruning transaction
        after every commit would double the writer's work).
        """
        now = time.monotonic()
        if self._problem is not None and now >= self._next_probe and not busy:
            self._probe()
        if self._state_written != self._stored and now >= self._next_state and self._problem is None:
            self._write_state()
        if self._catch_up:
            self._finish_checkpoint()
        if self._next_key_prune is not None and now >= self._next_key_prune and self._problem is None:
            self._prune_keys()
        if now < self._next_prune:
            return
        excess = self._count - self.history
        limit = max(PRUNE_STEP, 2 * busy)
        if excess >= PRUNE_STEP or (excess > 0 and not busy and now >= self._last_commit + QUIET):
            self._prune(limit)
        elif self.retention is not None and now >= self._next_age_check:
            if self._prune(limit) < limit:
                self._next_age_check = now + AGE_CHECK

    def _write_state(self) -> None:
        """Record the count (and the newest id) in the state row, so a restart counts only what came after."""
        db = self._db
        assert db is not None
        stored = self._stored
        self._next_state = time.monotonic() + STATE_EVERY
        try:
            db.execute(
                "UPDATE state SET count = ?, count_key = ?, last_key = max(last_key, ?) WHERE id = 0",
                (self._count, stored, stored),
            )
        except sqlite3.Error as exc:
            self._landed(db, -1)
            log.warning("cannot write the state of %s: %s", self.path, exc)
            return
        self._state_written = stored

    def _prune_keys(self) -> None:
        """Forget stored publish keys past their window, a step at a time."""
        db = self._db
        assert db is not None
        try:
            db.execute(
                "DELETE FROM keys WHERE key IN (SELECT key FROM keys WHERE expires <= ? LIMIT ?)", (time.time(), PRUNE_STEP)
            )
            (soonest,) = db.execute("SELECT min(expires) FROM keys").fetchone()
        except sqlite3.Error as exc:
            self._landed(db, -1)
            log.warning("cannot forget old publish keys in %s: %s", self.path, exc)
            self._next_key_prune = time.monotonic() + PROBE_EVERY
            return
        self._next_key_prune = None if soonest is None else time.monotonic() + max(0.0, soonest - time.time())
        self._post(self._changed)

    def _probe(self) -> None:
        """A real write (and its undoing) of PROBE_BYTES: does the disk take writes again?"""
        db = self._db
        assert db is not None
        try:
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO probe (data) VALUES (zeroblob(?))", (PROBE_BYTES,))
            db.execute("DELETE FROM probe")
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._landed(db, -1)
            self._write_failed(exc)
            return
        self._healed()

    def _prune(self, limit: int) -> int:
        """Delete up to `limit` of the oldest events past the count or age limit, in one transaction."""
        db = self._db
        assert db is not None
        cut: int | None = None
        excess = self._count - self.history
        try:
            if excess > 0:
                cut = self._nth_key(db, min(excess, limit))
            if self.retention is not None and self._oldest is not None:
                threshold = key_of((int((time.time() - self.retention) * 1000), 0))
                if self._oldest < threshold:
                    by_age = min(self._nth_key(db, limit), threshold - 1)
                    cut = by_age if cut is None else max(cut, by_age)
            if cut is None:
                return 0
            stored = self._stored
            db.execute("BEGIN IMMEDIATE")
            deleted = db.execute("DELETE FROM events WHERE key <= ?", (cut,)).rowcount
            db.execute("DELETE FROM lookups WHERE key <= ?", (cut,))
            db.execute(
                "UPDATE state SET count = ?, count_key = ?, last_key = max(last_key, ?), floor_key = max(floor_key, ?)"
                " WHERE id = 0",
                (self._count - deleted, stored, stored, cut),
            )
            db.execute("COMMIT")
            first = db.execute("SELECT key FROM events ORDER BY key LIMIT 1").fetchone()
        except sqlite3.Error as exc:
            self._landed(db, -1)
            if self._problem is None:
                log.warning("pruning %s failed: %s", self.path, exc)
            self._next_prune = time.monotonic() + PROBE_EVERY
            return 0
        self._count -= deleted
        self._floor = max(self._floor, cut)
        self._state_written = stored
        self._oldest = first[0] if first else None
        self._pruned += deleted
        log.debug("pruned %d events from %s, %d kept", deleted, self.path, self._count)
        self._post(self._changed)
        return int(deleted)

    @staticmethod
    def _nth_key(db: sqlite3.Connection, n: int) -> int:
        """The key of the n-th oldest event (the newest when there are fewer)."""
        row = db.execute("SELECT key FROM events ORDER BY key LIMIT 1 OFFSET ?", (n - 1,)).fetchone()
        if row is None:
            row = db.execute("SELECT max(key) FROM events").fetchone()
        return int(row[0])

    # ------------------------------------------------------------ replay

    async def replay(self, *, since: EventId | None, last: int | None, flt: Filter) -> Replay:
        """Stored events up to the last one delivered (the rest reach the subscriber live)."""
        if self._closed or self._readers is None or self._loop is None:
            raise Unavailable("the hub is shutting down")
        if since is None and last is None:
            return Replay()
        upto = self._delivered  # before any await: later events are held for the subscriber
        rows, floor, first = await self._loop.run_in_executor(self._readers, self._read, since, last, flt, upto)
        events = [Event(id_of(k), t, a, d) for k, t, a, d in rows]
        gap = None
        if since is not None and (key_of(since) < floor or since > id_of(upto)):
            gap = (format_id(since), format_id(id_of(first)) if first is not None else "")
        return Replay(events, gap)

    def _checkpoint_loop(self) -> None:
        """The checkpointer thread: copy the write-ahead log into the file, off the writer's path.

        A checkpoint syncs the file to disk; in the writer's commit (SQLite's
        default) one slow sync holds every publish. This thread copies and
        syncs the bulk (PASSIVE: it never blocks the writer); the log can only
        start over once it is copied whole, so after each pass the writer,
        between two commits, copies the few frames written meanwhile (a short
        copy and a short sync) and its next commit rewinds the log. That is
        done per CHECKPOINT_BYTES committed, or once commits pause for
        CHECKPOINT_EVERY: a sync in the writer every second would be in the
        way of a steady stream of publishes.
        """
        cpus.run_anywhere()  # copying can use another CPU than the loop's
        conn = connect(self.path)
        conn.execute(f"PRAGMA synchronous = {FSYNC[self.fsync]}")
        failed = False
        try:
            while not self._closed:
                asked = self._wal_due.wait(CHECKPOINT_EVERY)
                self._wal_due.clear()
                if self._closed:
                    break
                if self._catch_up:
                    continue  # the writer has not finished the last one
                if not asked and time.monotonic() - self._last_commit < CHECKPOINT_EVERY:
                    continue  # still publishing: wait for the log to fill or for a pause
                try:
                    busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    failed = False
                except sqlite3.Error as exc:
                    if not failed:  # the writer reports write errors; say this once
                        log.warning("checkpointing %s failed: %s", self.path, exc)
                    failed = True
                    continue
                if frames > 0:
                    self._catch_up = True
                    self._inbox.put(None)  # wake the writer if it is idle
        finally:
            conn.close()

    def _finish_checkpoint(self) -> None:
        """The writer's part of a checkpoint: the frames since the checkpointer's pass."""
        db = self._db
        assert db is not None
        try:
            db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:
            log.warning("checkpointing %s failed: %s", self.path, exc)
        else:
            self._checkpoints += 1
            self._post(self._changed)
        self._catch_up = False

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path)
            conn.execute("PRAGMA query_only = 1")
            self._local.conn = conn
            self._reader_conns.append(conn)
        return conn

    def _read(
        self, since: EventId | None, last: int | None, flt: Filter, upto: int
    ) -> tuple[list[Any], int, int | None]:
        """(rows, floor, oldest key) from one snapshot of the database (a reader thread)."""
        conn = self._reader()
        conn.execute("BEGIN")
        try:
            floor = conn.execute("SELECT floor_key FROM state WHERE id = 0").fetchone()[0]
            first = conn.execute("SELECT key FROM events ORDER BY key LIMIT 1").fetchone()
            rows = select(conn, -1 if since is None else key_of(since), upto, last, flt)
        finally:
            conn.execute("COMMIT")
        return rows, floor, first[0] if first else None

    # ------------------------------------------------------------ figures

    def _changed(self) -> None:
        """On the loop: wake whoever waits in `changed`."""
        if self._changes is not None:
            self._changes.set()
            self._changes = asyncio.Event()

    async def changed(self) -> None:
        """Return once the writer thread has next changed the history, the stored keys or `problem`.

        For whoever watches those from the loop (the tests): check, and
        await this while the check fails.
        """
        assert self._changes is not None, "the broker has not started"
        await self._changes.wait()

    @property
    def problem(self) -> str | None:
        return self._problem

    @property
    def last_id(self) -> str:
        return format_id(id_of(self._delivered)) if self._delivered else ""

    @property
    def retained(self) -> int:
        return self._count

    def metrics(self) -> dict[str, float]:
        size = 0
        for suffix in ("", "-wal"):
            try:
                size += os.stat(f"{self.path}{suffix}").st_size
            except OSError:
                pass
        return {
            "norn_sqlite_commits_total": self._commits,
            "norn_sqlite_committed_events_total": self._committed,
            "norn_sqlite_commit_seconds_total": round(self._commit_seconds, 6),
            "norn_sqlite_write_errors_total": self._write_errors,
            "norn_sqlite_pruned_events_total": self._pruned,
            "norn_sqlite_checkpoints_total": self._checkpoints,
            "norn_sqlite_file_bytes": size,
        }


def _params(events: list[Event]) -> list[Any]:
    out: list[Any] = []
    for ev in events:
        out += (key_of(ev.key), ev.type, ev.app, ev.data)
    return out


