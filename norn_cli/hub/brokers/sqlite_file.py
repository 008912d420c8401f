"""The SQLite broker's file: its schema, ids as keys, opening it with every check, and reading it.

An id `<ms>-<seq>` is stored as one integer, `ms << 20 | seq` (the rowid):
ids and rows share one order.

Opening takes `PATH.lock` (a second hub is refused, naming the first one's
pid), creates the file and its folder on first use, and refuses a file that
is not a norn database, one from a newer norn, and one it cannot write,
each with one sentence naming the file and what to do (ConfigError).
"""

from __future__ import annotations

import heapq
import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import IO, Any

from norn_cli.core.config import KINDS
from norn_cli.core.errors import ConfigError
from norn_cli.core.events import EventId, Filter
from norn_cli.hub.brokers.base import IdClock

__all__ = [
    "FSYNC", "LOOKUP_TYPES", "SCHEMA_VERSION", "SEQ_MAX", "Opened", "connect", "id_of", "key_of",
    "open_file", "parse_sqlite_url", "select", "write_reason",
]  # fmt: skip

log = logging.getLogger("norn.sqlite")

SCHEMA_VERSION = 1
APPLICATION_ID = 0x6E6F726E  # "norn", in the file header: tells our files from other SQLite files
SEQ_BITS = 20
SEQ_MAX = (1 << SEQ_BITS) - 1
KEY_MAX = (1 << 63) - 1
BUSY_TIMEOUT_MS = 5000
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
    # publish keys (idempotent publish) accepted within the dedupe window, with their events' ids
    "CREATE TABLE keys (key TEXT PRIMARY KEY, id TEXT NOT NULL, expires REAL NOT NULL) WITHOUT ROWID",
    "CREATE INDEX keys_by_expiry ON keys (expires)",
)


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


@dataclass
class Opened:
    """An open database: the writer's connection, the lock, and what the state row says."""

    db: sqlite3.Connection
    lock: IO[str] | None
    last_key: int  # the newest id stored (0: none)
    floor_key: int  # every event above it is retained
    count: int  # events retained
    oldest: int | None  # the oldest retained key
    keys: list[tuple[str, str, float]]  # publish keys still in their window (key, id, expires), oldest first

    def close(self) -> None:
        self.db.close()
        if self.lock is not None:
            self.lock.close()  # releases the lock
            self.lock = None


def connect(path: Path, **kwargs: Any) -> sqlite3.Connection:
    """A connection for a thread of the broker (autocommit: transactions are explicit)."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, **kwargs)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return conn


def open_file(path: Path, *, fsync: str, max_pages: int | None) -> Opened:
    """Lock, open (or create) and check the database; ConfigError when it cannot be this hub's history."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create the folder {path.parent} for the SQLite broker ({_reason(exc)}); "
            "create it, or use a file in a writable folder"
        ) from None
    lock = _lock(path)
    try:
        db = connect(path, cached_statements=600)
    except sqlite3.Error as exc:
        if lock is not None:
            lock.close()
        raise ConfigError(f"cannot write to {path} ({exc}); make it and its folder writable, or use another file") from None
    try:
        return _prepare(path, db, lock, fsync=fsync, max_pages=max_pages)
    except BaseException:
        db.close()
        if lock is not None:
            lock.close()
        raise


def _lock(path: Path) -> IO[str] | None:
    """Take `PATH.lock`, or say which hub holds it."""
    try:
        f = open(f"{path}.lock", "a+", encoding="ascii")
    except OSError as exc:
        raise ConfigError(
            f"cannot write to {path} ({_reason(exc)}); make it and its folder writable, or use another file"
        ) from None
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no second-hub check
        return f
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip()
        f.close()
        who = f"pid {holder}" if holder.isdigit() else "another process"
        raise ConfigError(
            f"{path} is in use by another norn hub ({who}); stop that hub, or give this one another file"
        ) from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def _prepare(path: Path, db: sqlite3.Connection, lock: IO[str] | None, *, fsync: str, max_pages: int | None) -> Opened:
    """Check (or create) the schema, set the pragmas, read the state row."""
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
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"it cannot use write-ahead logging (journal mode {mode})")
        db.execute(f"PRAGMA synchronous = {FSYNC[fsync]}")
        # Each time the log starts over (after a checkpoint), SQLite cuts it to what that commit wrote, so
        # commits append to the log rather than write over its old frames (measured slower: benchmarks/README.md).
        db.execute("PRAGMA journal_size_limit = 0")
        db.execute("PRAGMA wal_autocheckpoint = 0")  # the broker's checkpointer thread does it, off the commit path
        if max_pages is not None:
            db.execute(f"PRAGMA max_page_count = {int(max_pages)}")
        if app_id == 0:
            _create(path, db)
        # A file SQLite could only open read-only serves reads until the first publish: find out now.
        db.execute("BEGIN IMMEDIATE")
        db.execute("UPDATE state SET count = count WHERE id = 0")
        db.execute("COMMIT")
        row = db.execute("SELECT last_key, floor_key, count, count_key FROM state WHERE id = 0").fetchone()
        first = db.execute("SELECT key FROM events ORDER BY key LIMIT 1").fetchone()
        # Events committed after the state row was last written (a second's worth at most).
        newer, newest = db.execute(
            "SELECT count(*), max(key) FROM events WHERE key > ?", (row[3] if row else 0,)
        ).fetchone()
        keys = db.execute("SELECT key, id, expires FROM keys WHERE expires > ? ORDER BY expires", (time.time(),)).fetchall()
    except sqlite3.Error as exc:
        raise ConfigError(f"cannot write to {path} ({exc}); make it and its folder writable, or use another file") from None
    if row is None:
        raise ConfigError(f"{path} is not a norn database (its state row is missing); move it away, or use another file")
    return Opened(db, lock, max(row[0], newest or 0), row[1], row[2] + newer, first[0] if first else None, keys)


def _create(path: Path, db: sqlite3.Connection) -> None:
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
    log.info("created the norn database %s", path)


_Row = tuple[int, str, str, bytes]
_COLS = "key, type, app, data"


def select(conn: sqlite3.Connection, after: int, upto: int, last: int | None, flt: Filter) -> list[_Row]:
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


def _reason(exc: OSError) -> str:
    return (exc.strerror or str(exc)).lower()


def write_reason(exc: sqlite3.Error) -> str:
    if getattr(exc, "sqlite_errorname", "") == "SQLITE_FULL":
        return "the disk is full, or the database reached its size limit"
    return str(exc)
