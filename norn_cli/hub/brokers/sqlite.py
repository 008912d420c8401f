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
writer thread in small transactions between commits; deleted pages are
reused, so the file stops growing once retention is reached.

An id `<ms>-<seq>` is stored as one integer, `ms << 20 | seq` (the rowid):
ids and rows share one order. The clock restarts after the stored last id,
so ids keep increasing across restarts even when the wall clock went back.

A lock file beside the database (`PATH.lock`, holding the hub's pid) keeps
a second hub off the same file.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import heapq
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Sequence
from operator import itemgetter
from pathlib import Path
from typing import IO, Any

from norn_cli.core.config import KINDS
from norn_cli.core.errors import ConfigError
from norn_cli.core.events import Event, EventId, Filter, format_id, make_event
from norn_cli.hub.brokers.base import Broker, Deliver, IdClock, Item, Receiver, Replay, Unavailable

__all__ = ["SCHEMA_VERSION", "SqliteBroker", "id_of", "key_of", "parse_sqlite_url"]

log = logging.getLogger("norn.sqlite")

SCHEMA_VERSION = 1
APPLICATION_ID = 0x6E6F726E  # "norn", in the file header: tells our files from other SQLite files
SEQ_BITS = 20
SEQ_MAX = (1 << SEQ_BITS) - 1
KEY_MAX = (1 << 63) - 1
PRUNE_STEP = 1000  # rows deleted per pruning transaction: a short lock, often
AGE_CHECK = 1.0  # seconds between checks for events past the age limit
PROBE_EVERY = 0.5  # seconds between test writes while writes fail
PROBE_BYTES = 64 * 1024  # a test write this big must fit before the hub calls itself healthy again
BUSY_TIMEOUT_MS = 5000
READERS = 2  # threads answering replays
CHECKPOINT_BYTES = 4 << 20  # of events committed between checkpoints (SQLite's own default is 1,000 pages)
CHECKPOINT_EVERY = 1.0  # seconds: a checkpoint at least this often while there is something to copy
FSYNC = {"normal": "NORMAL", "always": "FULL"}

LOOKUP_TYPES = frozenset(
    [f"{kind}.{what}" for kind in KINDS for what in ("queued", "step", "completed", "failed")]
    + ["app.status", "app.restarted", "deploy.rollback"]
)
"""The hub's own events (pipeline runs, app statuses): the hub finds them by type after a restart,
so they are also listed, by type, in a small table instead of indexing every event."""

_SCHEMA = (
    # key: the id, ms << 20 | seq; data: the envelope exactly as subscribers get it
    "CREATE TABLE events (key INTEGER PRIMARY KEY, type TEXT NOT NULL, app TEXT NOT NULL, data BLOB NOT NULL)",
    "CREATE TABLE lookups (key INTEGER PRIMARY KEY, type TEXT NOT NULL, app TEXT NOT NULL)",  # LOOKUP_TYPES only
    "CREATE INDEX lookups_by_type ON lookups (type, key)",
    # count: the events with a key up to count_key (the rest are counted at start);
    # last_key: the newest id stored (0: none), ids continue above it;
    # floor_key: every event above it is retained (below the first id, or the last pruned)
    "CREATE TABLE state (id INTEGER PRIMARY KEY CHECK (id = 0), last_key INTEGER NOT NULL,"
    " floor_key INTEGER NOT NULL, count INTEGER NOT NULL, count_key INTEGER NOT NULL)",
    "CREATE TABLE probe (data BLOB)",  # test writes while the disk is full
)
ROWS_PER_INSERT = 500  # a bigger group is several INSERTs in one transaction
STATE_EVERY = 1.0  # seconds between writes of the count to the state row while publishing


def key_of(eid: EventId) -> int:
    """The stored integer for an id; an id between two possible keys maps to the lower one."""
    ms, seq = eid
    return min(KEY_MAX, (ms << SEQ_BITS) + min(seq, SEQ_MAX))


def id_of(key: int) -> EventId:
    return key >> SEQ_BITS, key & SEQ_MAX


def parse_sqlite_url(url: str) -> tuple[str, dict[str, str]]:
    """`sqlite://PATH[?max_pages=N]` -> (PATH, options); ValueError when malformed.

    Everything after `sqlite://` is the path: `sqlite:///var/lib/norn/events.db`
    is absolute, `sqlite://events.db` relative to the current directory.
    """
    if not url.startswith("sqlite://"):
        raise ValueError(f"not an sqlite:// URL: {url!r}")
    path, _, query = url[len("sqlite://") :].partition("?")
    if not path:
        raise ValueError("an sqlite:// broker URL needs a path, e.g. sqlite:///var/lib/norn/events.db")
    options: dict[str, str] = {}
    for part in filter(None, query.split("&")):
        name, _, value = part.partition("=")
        if name != "max_pages" or not value.isdigit() or int(value) < 1:
            raise ValueError(f"unknown or bad option {part!r} in {url!r} (known: max_pages=N)")
        options[name] = value
    return path, options


class _Group:
    """Events one publish call handed over, and the future its caller awaits."""

    __slots__ = ("events", "future")

    def __init__(self, events: list[Event], future: asyncio.Future[list[Event]]) -> None:
        self.events = events
        self.future = future


class SqliteBroker(Broker):
    """One hub's durable history in an SQLite file.

    While writes fail (disk full, I/O error), `problem` says so and the
    publishes of each failed group raise `Unavailable`; a test write every
    half second (and every publish) finds out when the disk takes writes
    again, and then the hub is healthy without a restart.
    """

    name = "sqlite"
    sole_writer = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        history: int = 10_000,
        retention: float | None = None,
        fsync: str = "normal",
        max_pages: int | None = None,
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
        self._deliver: Deliver | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._db: sqlite3.Connection | None = None  # the writer thread's
        self._lock_file: IO[str] | None = None
        self._clock = IdClock()
        self._inbox: queue.SimpleQueue[_Group | None] = queue.SimpleQueue()  # None: wake up and look
        self._stopping = False  # the writer thread ends once the inbox is empty
        self._inserts: dict[int, str] = {}
        self._closed = False
        self._writer: threading.Thread | None = None
        self._checkpointer: threading.Thread | None = None
        self._wal_due = threading.Event()  # the writer asks for a checkpoint
        self._wal_bytes = 0  # committed since it last asked
        self._catch_up = False  # the checkpointer made a pass: the writer copies the rest
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
        self._committed = 0
        self._commit_seconds = 0.0
        self._write_errors = 0
        self._pruned = 0
        self._next_age_check = 0.0
        self._next_probe = 0.0
        self._next_prune = 0.0  # after a failed step, wait before the next
        self._next_state = 0.0
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
        self._open()
        self._deliver = deliver
        self._problem = None
        self._readers = concurrent.futures.ThreadPoolExecutor(READERS, thread_name_prefix="norn-sqlite-read")
        self._checkpointer = threading.Thread(target=self._checkpoint_loop, name="norn-sqlite-checkpoint", daemon=True)
        self._checkpointer.start()
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
        if self._checkpointer is not None:
            self._wal_due.set()
            await asyncio.get_running_loop().run_in_executor(None, self._checkpointer.join)
        if self._readers is not None:
            self._readers.shutdown(wait=True)
        for conn in self._reader_conns:
            conn.close()
        if self._db is not None:
            self._db.close()
            self._db = None
        self._problem = "the SQLite broker is closed"
        self._deliver = None
        if self._lock_file is not None:
            self._lock_file.close()  # releases the lock
            self._lock_file = None

    def _open(self) -> None:
        path = self.path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the folder {path.parent} for the SQLite broker ({_reason(exc)}); "
                "create it, or use a file in a writable folder"
            ) from None
        self._lock()
        try:
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, cached_statements=600)
        except sqlite3.Error as exc:
            self._unlock()
            raise ConfigError(f"cannot write to {path} ({exc}); make it and its folder writable, or use another file") from None
        try:
            self._prepare(db)
        except BaseException:
            db.close()
            self._unlock()
            raise
        self._db = db

    def _lock(self) -> None:
        """Take `PATH.lock`, or say which hub holds it."""
        lock_path = Path(f"{self.path}.lock")
        try:
            f = open(lock_path, "a+", encoding="ascii")
        except OSError as exc:
            raise ConfigError(
                f"cannot write to {self.path} ({_reason(exc)}); make it and its folder writable, or use another file"
            ) from None
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no second-hub check
            self._lock_file = f
            return
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip()
            f.close()
            who = f"pid {holder}" if holder.isdigit() else "another process"
            raise ConfigError(
                f"{self.path} is in use by another norn hub ({who}); stop that hub, or give this one another file"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._lock_file = f

    def _unlock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def _prepare(self, db: sqlite3.Connection) -> None:
        """Check (or create) the schema, set the pragmas, read the state row."""
        path = self.path
        try:
            app_id = db.execute("PRAGMA application_id").fetchone()[0]
            version = db.execute("PRAGMA user_version").fetchone()[0]
            tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"{path} is not a norn database ({exc}); move it away, or use another file") from None
        if app_id != APPLICATION_ID and (app_id != 0 or tables):
            raise ConfigError(
                f"{path} is not a norn database (it is some other SQLite database); move it away, or use another file"
            )
        if app_id == APPLICATION_ID and version < 1:
            raise ConfigError(f"{path} is not a norn database (it has no schema version); move it away, or use another file")
        if version > SCHEMA_VERSION:
            raise ConfigError(
                f"{path} was written by a newer norn (schema {version}; this norn knows {SCHEMA_VERSION}); "
                "upgrade norn, or use another file"
            )
        try:
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"it cannot use write-ahead logging (journal mode {mode})")
            db.execute(f"PRAGMA synchronous = {FSYNC[self.fsync]}")
            db.execute("PRAGMA journal_size_limit = 16777216")
            db.execute("PRAGMA wal_autocheckpoint = 0")  # the checkpointer thread does it, off the commit path
            if self.max_pages is not None:
                db.execute(f"PRAGMA max_page_count = {int(self.max_pages)}")
            if app_id == 0:
                self._create(db)
            # A file SQLite could only open read-only serves reads until the first publish: find out now.
            db.execute("BEGIN IMMEDIATE")
            db.execute("UPDATE state SET count = count WHERE id = 0")
            db.execute("COMMIT")
            row = db.execute("SELECT last_key, floor_key, count, count_key FROM state WHERE id = 0").fetchone()
            first = db.execute("SELECT key FROM events ORDER BY key LIMIT 1").fetchone()
            # Events committed after the state row was last written (at most STATE_EVERY's worth).
            newer, newest = db.execute(
                "SELECT count(*), max(key) FROM events WHERE key > ?", (row[3] if row else 0,)
            ).fetchone()
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot write to {path} ({exc}); make it and its folder writable, or use another file") from None
        if row is None:
            raise ConfigError(f"{path} is not a norn database (its state row is missing); move it away, or use another file")
        self._stored = max(row[0], newest or 0)
        self._floor = row[1]
        self._count = row[2] + newer
        self._delivered = self._state_written = self._stored
        self._oldest = first[0] if first else None
        self._clock = IdClock(id_of(max(self._stored, self._floor)), max_seq=SEQ_MAX)

    def _create(self, db: sqlite3.Connection) -> None:
        """A new database: the schema, and a floor just below the first id."""
        floor = key_of(IdClock().floor)
        db.execute("BEGIN IMMEDIATE")
        try:
            for stmt in _SCHEMA:  # not executescript: it would COMMIT before the pragmas
                db.execute(stmt)
            db.execute("INSERT INTO state VALUES (0, 0, ?, 0, 0)", (floor,))
            db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        log.info("created the norn database %s", self.path)

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
            if groups:
                self._commit(groups)
                self._housekeep(busy=sum(len(g.events) for g in groups))
            elif self._stopping:
                if self._state_written != self._stored and self._problem is None:
                    self._write_state()
                return
            else:
                self._housekeep()

    def _commit(self, groups: list[_Group]) -> None:
        """One transaction for every event of `groups`; then hand them to the loop (or refuse them)."""
        db = self._db
        assert db is not None
        events = [ev for g in groups for ev in g.events]
        first, last = key_of(events[0].key), key_of(events[-1].key)
        looked_up = [(key_of(ev.key), ev.type, ev.app) for ev in events if ev.type in LOOKUP_TYPES]
        started = time.perf_counter()
        try:
            if len(events) <= ROWS_PER_INSERT and not looked_up:
                db.execute(self._insert(len(events)), _params(events))  # one statement: its own transaction
            else:
                db.execute("BEGIN IMMEDIATE")
                for i in range(0, len(events), ROWS_PER_INSERT):
                    chunk = events[i : i + ROWS_PER_INSERT]
                    db.execute(self._insert(len(chunk)), _params(chunk))
                if looked_up:
                    db.executemany("INSERT INTO lookups (key, type, app) VALUES (?, ?, ?)", looked_up)
                db.execute("COMMIT")
        except sqlite3.Error as exc:
            if not self._landed(db, last):
                self._write_failed(exc)
                self._post(self._refuse, groups, self._problem)
                return
            log.warning("a commit to %s reported an error but is on disk: %s", self.path, exc)
        self._commit_seconds += time.perf_counter() - started
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

    @staticmethod
    def _refuse(groups: list[_Group], problem: str | None) -> None:
        message = f"{problem}; nothing was published, try again when the hub is healthy"
        for g in groups:
            if not g.future.done():
                g.future.set_exception(Unavailable(message))

    def _write_failed(self, exc: sqlite3.Error) -> None:
        self._write_errors += 1
        problem = f"cannot write to {self.path} ({_write_reason(exc)})"
        if problem != self._problem:
            log.warning("%s; publishes are refused until writes succeed again", problem)
        self._problem = problem
        self._next_probe = time.monotonic() + PROBE_EVERY

    def _healed(self) -> None:
        log.warning("%s takes writes again; publishing resumes", self.path)
        self._problem = None

    # ------------------------------------------------------------ housekeeping (writer thread)

    def _housekeeping_due(self) -> float:
        """Seconds until there is pruning or probing to do (0: now)."""
        now = time.monotonic()
        due = [60.0]
        if self._problem is not None and not self._closed:
            due.append(self._next_probe - now)
        if self._count > self.history:
            due.append(self._next_prune - now)
        if self.retention is not None:
            due.append(self._next_age_check - now)
        if self._state_written != self._stored:
            due.append(self._next_state - now)
        if self._catch_up:
            due.append(0.0)
        return min(due)

    def _housekeep(self, busy: int = 0) -> None:
        """One pruning step when due, and a test write while writes fail.

        `busy`: a commit of that many events just happened and more may be
        queued; then the count limit is only enforced a step at a time, once
        a step's worth is over it, with steps sized to keep up with the load.
        """
        now = time.monotonic()
        if self._problem is not None and now >= self._next_probe and not busy:
            self._probe()
        if self._state_written != self._stored and now >= self._next_state and self._problem is None:
            self._write_state()
        if self._catch_up:
            self._finish_checkpoint()
        if now < self._next_prune:
            return
        excess = self._count - self.history
        limit = max(PRUNE_STEP, 2 * busy)
        if excess >= (PRUNE_STEP if busy else 1):
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
        copy and a short sync) and its next commit rewinds the log.
        """
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute(f"PRAGMA synchronous = {FSYNC[self.fsync]}")
        failed = False
        try:
            while not self._closed:
                self._wal_due.wait(CHECKPOINT_EVERY)
                self._wal_due.clear()
                if self._closed:
                    break
                if self._catch_up:
                    continue  # the writer has not finished the last one
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
        self._catch_up = False

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA query_only = 1")
            self._local.conn = conn
            self._reader_conns.append(conn)
        return conn

    def _read(
        self, since: EventId | None, last: int | None, flt: Filter, upto: int
    ) -> tuple[list[tuple[int, str, str, bytes]], int, int | None]:
        """(rows, floor, oldest key) from one snapshot of the database (a reader thread)."""
        conn = self._reader()
        conn.execute("BEGIN")
        try:
            floor = conn.execute("SELECT floor_key FROM state WHERE id = 0").fetchone()[0]
            first = conn.execute("SELECT key FROM events ORDER BY key LIMIT 1").fetchone()
            rows = _select(conn, -1 if since is None else key_of(since), upto, last, flt)
        finally:
            conn.execute("COMMIT")
        return rows, floor, first[0] if first else None

    # ------------------------------------------------------------ figures

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
            "norn_sqlite_file_bytes": size,
        }


_Row = tuple[int, str, str, bytes]
_COLS = "key, type, app, data"


def _select(conn: sqlite3.Connection, after: int, upto: int, last: int | None, flt: Filter) -> list[_Row]:
    """Rows with after < key <= upto matching `flt` (the last `last` of them), oldest first.

    The hub's own types (LOOKUP_TYPES) are read through their index, one
    ordered range per type, so finding a run or an app's status does not
    scan the history. Anything else is read in key order, apps and exact
    types matched by SQLite, wildcards here, on the way.
    """
    if last == 0:
        return []
    exact = flt.exact_types
    indexed = exact is not None and exact <= LOOKUP_TYPES
    col = "l." if indexed else ""
    where = f"{col}key > ? AND {col}key <= ?"
    params: list[Any] = [after, upto]
    if flt.apps is not None:
        where += f" AND {col}app IN ({','.join('?' * len(flt.apps))})"
        params.extend(sorted(flt.apps))
    order = f" ORDER BY {col}key" if last is None else f" ORDER BY {col}key DESC"
    if indexed:
        assert exact is not None
        sql = f"SELECT e.key, e.type, e.app, e.data FROM lookups l JOIN events e ON e.key = l.key WHERE l.type = ? AND {where}{order}"
        if last is not None:
            sql += f" LIMIT {int(last)}"
        parts = [conn.execute(sql, [t, *params]).fetchall() for t in sorted(exact)]
        if len(parts) == 1:
            rows = parts[0]
        else:
            rows = list(heapq.merge(*parts, key=itemgetter(0), reverse=last is not None))
    else:
        if exact is not None:
            where += f" AND type IN ({','.join('?' * len(exact))})"
            params.extend(sorted(exact))
        match = None if flt.types is None or exact is not None else flt.match_type
        if last is not None and match is None:
            order += f" LIMIT {int(last)}"
        cur = conn.execute(f"SELECT {_COLS} FROM events WHERE {where}{order}", params)
        if last is None:
            return cur.fetchall() if match is None else [r for r in cur if match(r[1])]
        rows = []
        for r in cur:
            if match is None or match(r[1]):
                rows.append(r)
                if len(rows) >= last:
                    break
        cur.close()
    if last is not None:
        rows = rows[:last]
        rows.reverse()
    return rows


def _params(events: list[Event]) -> list[Any]:
    out: list[Any] = []
    for ev in events:
        out += (key_of(ev.key), ev.type, ev.app, ev.data)
    return out


def _reason(exc: OSError) -> str:
    return (exc.strerror or str(exc)).lower()


def _write_reason(exc: sqlite3.Error) -> str:
    if getattr(exc, "sqlite_errorname", "") == "SQLITE_FULL":
        return "the disk is full, or the database reached its size limit"
    return str(exc)
