"""The Broker interface on a Redis stream, so several hubs share one ordered, retained history.

Every hub appends what it is given to one stream (`XADD`, Redis assigns the
id) and runs one reader task that follows the stream (`XREAD BLOCK`) and
hands each entry to its hub, in stream order, once. The publishing hub's own
subscribers get their events from that reader too, so every subscriber of
every hub sees one order.

An entry has one field, `event`: the JSON envelope without `id` and `ts`,
which are only known once Redis has ordered the entry. Both are appended to
those bytes on read (`ts` is the millisecond part of the id), so the payload
is encoded once, at publish, and never parsed again.

A batch is appended by one small Lua script rather than a MULTI/EXEC of
XADDs: just as atomic and contiguous, and measured about 1.7 times the
throughput (redis-py packs each command in Python; see docs/redis.md).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
from collections.abc import Mapping, Sequence
from typing import Any, cast
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from norn_cli.hub.brokers.base import Broker, Deliver, Duplicate, Item, Receiver, Replay, Unavailable
from norn_cli.core.events import Event, EventId, Filter, dumps, format_id, now_ts

__all__ = ["RedisBroker"]

log = logging.getLogger("norn.redis")

MIN_STREAM = 1000
"""The stream keeps at least this many entries: hubs pass events to each other
through it, so a reader a little behind must still find them."""

READ_COUNT = 1000  # entries per XREAD
PAGE = 1000  # entries per XRANGE page when replaying
BLOCK_MS = 1000  # how long XREAD waits; also how often the cached figures refresh
BACKOFF_MIN = 0.1
BACKOFF_MAX = 2.0

_APPEND = """
-- KEYS[1]: the stream; ARGV[1]: MAXLEN ~; ARGV[2..]: one event each. Returns the ids.
local ids = {}
for i = 2, #ARGV do
  ids[i - 1] = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'event', ARGV[i])
end
return ids
"""

_APPEND_KEYED = """
-- KEYS[1]: the stream; ARGV[1]: MAXLEN ~; ARGV[2]: the dedupe window in ms; ARGV[3]: the prefix
-- of the key strings; then pairs: a key ('' for none) and its event. Returns one reply per
-- event: its new id, or '=' followed by the id first published with its key.
local out = {}
for i = 4, #ARGV, 2 do
  local key = ARGV[i]
  local seen = false
  if key ~= '' then
    seen = redis.call('GET', ARGV[3] .. key)
  end
  if seen then
    out[#out + 1] = '=' .. seen
  else
    local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'event', ARGV[i + 1])
    if key ~= '' then
      redis.call('SET', ARGV[3] .. key, id, 'PX', ARGV[2])
    end
    out[#out + 1] = id
  end
end
return out
"""

_Entry = tuple[bytes, Mapping[bytes, bytes]]
_LOST = (RedisConnectionError, RedisTimeoutError, OSError)  # Redis is (maybe) gone


def _key(raw: bytes) -> EventId:
    ms, _, seq = raw.partition(b"-")
    return int(ms), int(seq)


def _event(raw_id: bytes, etype: str, app: str, body: bytes) -> Event:
    """The event for a stream entry: its stored envelope plus `id` and `ts`.

    The bytes equal `events.make_event`'s for the same id: `body` is the
    envelope's first three members, encoded once at publish.
    """
    key = _key(raw_id)
    data = b"".join((body[:-1], b',"id":"', raw_id, b'","ts":"', now_ts(key[0]).encode(), b'"}'))
    return Event(key, etype, app, data)


def _where(url: str) -> str:
    """Where Redis is, for messages: the URL without credentials."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    host = parts.hostname or "localhost"
    host = f"[{host}]" if ":" in host else host
    try:
        port = parts.port or 6379
    except ValueError:  # reported by redis-py, with the reason
        return parts.netloc.rpartition("@")[2]
    return f"{host}:{port}"


def _os_reason(exc: BaseException) -> str:
    """"connection refused" rather than redis-py's "Error 111 connecting to h:p. ..."."""
    for err in (exc, exc.__cause__, exc.__context__):  # redis-py raises inside `except OSError`
        if isinstance(err, socket.gaierror) and err.strerror:
            return err.strerror.lower()
        if isinstance(err, OSError) and err.errno:
            return os.strerror(err.errno).lower()
    text = str(exc).strip().rstrip(".")
    return text[:1].lower() + text[1:] if text else type(exc).__name__


class RedisBroker(Broker):
    """Orders events in one Redis stream shared by every hub that names it.

    While Redis cannot be reached, `problem` says so, publishes raise
    `Unavailable` and replays wait; the reader reconnects by itself with a
    capped, jittered backoff and resumes after the last entry it delivered.
    """

    name = "redis"
    publish_waits = True

    def __init__(
        self,
        url: str,
        *,
        history: int,
        stream: str = "norn:events",
        connect_timeout: float = 2.0,
        timeout: float = 5.0,
    ) -> None:
        if history < 0:
            raise ValueError("history must be >= 0")
        if not stream:
            raise ValueError("the Redis stream name must not be empty")
        self.where = _where(url)
        try:
            self._redis = aioredis.Redis.from_url(
                url,
                socket_connect_timeout=connect_timeout,
                socket_timeout=max(timeout, BLOCK_MS / 1000 + 1),
                retry=Retry(NoBackoff(), 0),  # a retried XADD could publish twice
                client_name="norn-hub",
            )
            self._redis.connection_pool.make_connection()  # unknown ?options fail here, not later
        except (TypeError, ValueError) as exc:
            raise ValueError(f"bad Redis URL for {self.where}: {exc}") from None
        self.stream = stream
        self.history = history
        self._maxlen = max(history, MIN_STREAM)
        self._deliver: Deliver | None = None
        self._hub: Receiver | None = None
        self._reader: asyncio.Task[None] | None = None
        self._up = asyncio.Event()  # set while connected (and when closed, to free waiters)
        self._closed = False
        self._problem: str | None = "the Redis broker has not started"
        self._pos = b""  # the id of the last entry delivered to the hub
        self._last = ""
        self._retained = 0
        self._lag_ms = 0
        self._ever_up = False
        self._reconnects = 0
        self._overruns = 0
        self._names: dict[bytes, str] = {}
        self._append = self._redis.register_script(_APPEND)
        self._append_keyed = self._redis.register_script(_APPEND_KEYED)
        self.key_prefix = f"{stream}:key:"

    # ------------------------------------------------------------ lifecycle

    async def start(self, deliver: Deliver, hub: Receiver | None = None) -> None:
        """Connect once (a failure is reported by `problem`), then follow the stream."""
        self._deliver, self._hub = deliver, hub
        try:
            await self._connect()
        except _LOST + (RedisError,) as exc:
            # Whoever started the hub reports this; the reader keeps trying.
            self._problem = self._explain(exc)
            log.info("%s", self._problem)
        self._reader = asyncio.get_running_loop().create_task(self._follow(), name="norn-redis-reader")

    async def close(self) -> None:
        self._closed = True
        self._problem = "the Redis broker is closed"
        self._deliver = self._hub = None
        self._up.set()  # replays waiting for Redis see _closed and give up
        reader, self._reader = self._reader, None
        while reader is not None and not reader.done():
            # Again until it ends: on Python 3.11, redis-py's asyncio.wait_for
            # may swallow a cancel that lands as a command finishes sending.
            reader.cancel()
            await asyncio.wait({reader}, timeout=0.05)
        if reader is not None:
            await asyncio.gather(reader, return_exceptions=True)
        await self._redis.aclose()

    async def wait_ready(self) -> None:
        """Return once Redis answers (at once if it does); Unavailable once closed."""
        await self._up.wait()
        if self._closed:
            raise Unavailable("the hub is shutting down")

    async def _connect(self) -> None:
        """Find where to read from and mark Redis as up."""
        if self._ever_up:
            # Idle connections from before the outage are dead; a publish must
            # not be the one to find out (it is never retried).
            await self._redis.connection_pool.disconnect(inuse_connections=False)
        info = await self._info()
        last_gen = info["last-generated-id"] if info else None
        if not self._pos:
            # First contact: live delivery starts at the stream's end.
            self._pos = last_gen or b"0-0"
            last = info.get("last-entry") if info else None
            if last:
                self._last = last[0].decode()
        elif last_gen is None or _key(last_gen) < _key(self._pos):
            # Redis came back without the entries this hub had reached
            # (restarted without persistence?). New entries get newer ids,
            # so reading on from _pos loses nothing more.
            log.warning(
                "the Redis stream %s no longer reaches %s; events published before the "
                "outage that this hub had not read yet are lost",
                self.stream, self._pos.decode(),
            )  # fmt: skip
            if self._hub is not None:
                first = info.get("first-entry") if info else None
                self._hub.gap(self._pos.decode(), first[0].decode() if first else "")
        self._apply(info)
        if self._ever_up:
            self._reconnects += 1
            log.warning("Redis at %s is back; resuming after %s", self.where, self._pos.decode())
        self._ever_up = True
        self._problem = None
        self._up.set()

    def _lost(self, exc: BaseException) -> None:
        """Redis failed: say why, refuse publishes, make the reader reconnect."""
        problem = self._explain(exc)
        if self._problem != problem:
            log.warning("%s", problem)
        self._problem = problem
        if not self._closed:
            self._up.clear()

    def _explain(self, exc: BaseException) -> str:
        """One sentence for /healthz and for refused publishes."""
        if isinstance(exc, BusyLoadingError):
            return f"Redis at {self.where} is still loading its data"
        if isinstance(exc, AuthenticationError):
            return f"Redis at {self.where} refused the credentials in the broker URL"
        if isinstance(exc, RedisTimeoutError):
            return f"Redis at {self.where} did not answer in time"
        if isinstance(exc, _LOST):
            return f"Redis at {self.where} is unreachable ({_os_reason(exc)})"
        if isinstance(exc, ResponseError) and str(exc).startswith("WRONGTYPE"):
            return f"the Redis key {self.stream!r} at {self.where} is not a stream"
        return f"Redis at {self.where} failed: {exc}"

    # ------------------------------------------------------------ the reader

    async def _follow(self) -> None:
        """The hub's one reader: deliver each new entry in stream order, once."""
        loop = asyncio.get_running_loop()
        backoff = BACKOFF_MIN
        refresh = loop.time() + BLOCK_MS / 1000
        while not self._closed:
            try:
                if not self._up.is_set():
                    await self._connect()
                    backoff = BACKOFF_MIN
                self._take(await self._read())
                if loop.time() >= refresh:
                    refresh = loop.time() + BLOCK_MS / 1000
                    self._apply(await self._info())
                hub = self._hub
                if hub is not None and hub.congested:
                    await hub.wait_for_room(loop.time())
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if isinstance(exc, _LOST + (RedisError,)):
                    self._lost(exc)
                else:  # a bug on our side; keep following rather than go deaf
                    log.exception("the Redis reader failed; retrying")
                await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
                backoff = min(backoff * 2, BACKOFF_MAX)

    def _take(self, entries: Sequence[_Entry]) -> None:
        """Deliver entries the reader got, and remember where it is."""
        if not entries:
            return
        self._pos = entries[-1][0]
        self._retained += len(entries)
        events = self._events(entries)
        if not events:
            return
        self._last = events[-1].id
        if self._deliver is not None:
            self._deliver(events)
        if self._hub is not None:
            self._hub.flush()

    def _events(self, entries: Sequence[_Entry]) -> list[Event]:
        out = []
        names = self._names
        for raw_id, fields in entries:
            body = fields.get(b"event", b"")
            # type and appId are validated slugs, never escaped in JSON: the
            # envelope's head gives both without parsing the payload.
            t_end = body.find(b'"', 9)
            a_end = body.find(b'"', t_end + 11)
            try:
                if not (body.startswith(b'{"type":"') and body.endswith(b"}") and a_end > 0
                        and body[t_end : t_end + 11] == b'","appId":"'):  # fmt: skip
                    raise ValueError
                etype = names.get(body[9:t_end]) or self._name(body[9:t_end])
                app = names.get(body[t_end + 11 : a_end]) or self._name(body[t_end + 11 : a_end])
            except ValueError:  # UnicodeDecodeError too: written by something else than a hub
                log.warning("skipping entry %s of %s: not a norn event", raw_id.decode(), self.stream)
                continue
            out.append(_event(raw_id, etype, app, body))
        return out

    def _name(self, raw: bytes) -> str:
        """A type or app as str, decoded once (a hub sees few distinct ones)."""
        if len(self._names) >= 4096:
            self._names.clear()
        name = self._names[raw] = raw.decode()
        return name

    async def _read(self) -> list[_Entry]:
        """Entries after the last delivered one, waiting up to BLOCK_MS for some."""
        reply: Any = await self._redis.xread({self.stream: self._pos}, count=READ_COUNT, block=BLOCK_MS)
        return cast(list[_Entry], reply[0][1]) if reply else []

    async def _range(self, start: bytes, end: bytes, count: int) -> list[_Entry]:
        return cast(list[_Entry], await self._redis.xrange(self.stream, start, end, count=count))

    async def _info(self) -> dict[str, Any] | None:
        """XINFO STREAM, or None when the stream does not exist (yet)."""
        try:
            info: dict[str, Any] = await self._redis.xinfo_stream(self.stream)
        except ResponseError as exc:
            if "no such key" in str(exc).lower():
                return None
            raise
        return info

    def _apply(self, info: dict[str, Any] | None) -> None:
        """Refresh the cached figures /status and /metrics read."""
        if info is None:
            self._retained = self._lag_ms = 0
            return
        self._retained = int(info.get("length") or 0)
        pos = _key(self._pos) if self._pos else (0, 0)
        self._lag_ms = max(0, _key(info["last-generated-id"])[0] - pos[0])
        first = info.get("first-entry")
        if first and pos != (0, 0) and _key(first[0]) > pos:
            # Entries after _pos were trimmed before this reader got to them.
            self._overruns += 1
            log.warning(
                "this hub fell behind the Redis stream %s by more than its %d retained events; "
                "its subscribers may have missed events after %s",
                self.stream, self._maxlen, self._pos.decode(),
            )  # fmt: skip
            if self._hub is not None:
                self._hub.gap(self._pos.decode(), first[0].decode())

    # ------------------------------------------------------------ publishing

    async def publish(self, items: Sequence[Item]) -> list[Event]:
        """Append the batch to the stream atomically, in order; the ids are Redis's.

        The events reach subscribers (this hub's too) through the reader.
        """
        if self._problem is not None:
            raise Unavailable(f"{self._problem}; nothing was published, try again when the hub is healthy")
        if not items:
            return []
        bodies = [dumps({"type": t, "appId": a, "payload": p}) for t, a, p in items]
        try:
            # EVALSHA, or EVAL once after NOSCRIPT (the script had not run).
            ids = cast(list[bytes], await self._append(keys=[self.stream], args=[self._maxlen, *bodies]))
        except _LOST as exc:
            self._lost(exc)
            raise Unavailable(f"{self._problem}; the publish was not acknowledged") from None
        except RedisError as exc:
            raise Unavailable(f"{self._explain(exc)}; nothing was published") from None
        return [_event(raw_id, t, a, body) for raw_id, (t, a, _), body in zip(ids, items, bodies)]

    async def publish_keyed(self, items: Sequence[Item], keys: Sequence[str | None]) -> list[Event | Duplicate]:
        """`publish`, with the keys checked and remembered by the same script that appends.

        Each key is a string `<stream>:key:<key>` holding the id, expiring
        after the dedupe window, so every hub on this Redis shares the window
        and Redis bounds it by time.
        """
        if self._problem is not None:
            raise Unavailable(f"{self._problem}; nothing was published, try again when the hub is healthy")
        if not items:
            return []
        bodies = [dumps({"type": t, "appId": a, "payload": p}) for t, a, p in items]
        args: list[Any] = [self._maxlen, max(1, int(self.dedupe_window * 1000)), self.key_prefix]
        for key, body in zip(keys, bodies):
            args.append(key or "")
            args.append(body)
        try:
            replies = cast(list[bytes], await self._append_keyed(keys=[self.stream], args=args))
        except _LOST as exc:
            self._lost(exc)
            raise Unavailable(f"{self._problem}; the publish was not acknowledged") from None
        except RedisError as exc:
            raise Unavailable(f"{self._explain(exc)}; nothing was published") from None
        out: list[Event | Duplicate] = []
        for raw, (t, a, _), body in zip(replies, items, bodies):
            if raw.startswith(b"="):
                out.append(Duplicate(raw[1:].decode()))
            else:
                out.append(_event(raw, t, a, body))
        return out

    # ------------------------------------------------------------ replay

    async def replay(self, *, since: EventId | None, last: int | None, flt: Filter) -> Replay:
        """Retained entries up to what this hub's reader delivered; the rest come live.

        Waits while Redis is unreachable; raises Unavailable once closed.
        """
        while True:
            await self.wait_ready()
            # Read now, before any await: the hub holds every event delivered
            # after this point for the subscriber, so the replay must stop here.
            upto = self._pos
            try:
                if since is None:
                    return Replay(await self._scan_back(upto, last or 0, flt))
                return await self._replay_since(since, last, flt, upto)
            except _LOST as exc:
                self._lost(exc)
            except RedisError as exc:
                raise Unavailable(self._explain(exc)) from None

    async def _replay_since(self, since: EventId, last: int | None, flt: Filter, upto: bytes) -> Replay:
        start = b"(" + format_id(since).encode()
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.xinfo_stream(self.stream)
            pipe.xrange(self.stream, start, upto, count=PAGE)
            info, page = await pipe.execute(raise_on_error=False)
        page = cast(list[_Entry], page)
        if isinstance(info, ResponseError) and "no such key" in str(info).lower():
            info = None
        for reply in (info, page):
            if isinstance(reply, Exception):
                raise reply
        picked: list[Event] = []
        while True:
            picked.extend(ev for ev in self._events(page) if flt.match(ev.type, ev.app))
            if len(page) < PAGE:
                break
            page = await self._range(b"(" + page[-1][0], upto, PAGE)
        if last is not None:
            picked = picked[-last:] if last else []
        return Replay(picked, self._gap(since, info))

    @staticmethod
    def _gap(since: EventId, info: dict[str, Any] | None) -> tuple[str, str] | None:
        """(since, oldest) when entries after `since` may have been removed.

        Redis does not record what trimming removed, so an entry older than
        the first one retained counts as possibly followed by lost ones; an
        id the stream never reached means the stream was reset.
        """
        if info is None:
            return format_id(since), ""
        first = info.get("first-entry")
        newest = _key(info["last-generated-id"])
        if not first:
            return None if since == newest else (format_id(since), "")
        if since < _key(first[0]) or since > newest:
            return format_id(since), first[0].decode()
        return None

    async def _scan_back(self, upto: bytes, n: int, flt: Filter) -> list[Event]:
        """The last `n` entries matching `flt`, scanning at most the retained history."""
        picked: list[Event] = []
        if n <= 0 or upto == b"0-0":
            return picked
        plain = flt.apps is None and flt.types is None
        count = n if plain else max(n, 64)
        scanned = 0
        top = upto
        while scanned < self._maxlen:
            count = min(count, PAGE, self._maxlen - scanned)
            page = cast(list[_Entry], await self._redis.xrevrange(self.stream, top, "-", count=count))
            scanned += len(page)
            for ev in self._events(page):
                if flt.match(ev.type, ev.app):
                    picked.append(ev)
                    if len(picked) == n:
                        break
            if len(picked) == n or len(page) < count:
                break
            top = b"(" + page[-1][0]
            count *= 2
        picked.reverse()
        return picked

    # ------------------------------------------------------------ figures

    @property
    def problem(self) -> str | None:
        return self._problem

    @property
    def last_id(self) -> str:
        return self._last

    @property
    def retained(self) -> int:
        return self._retained

    def metrics(self) -> dict[str, float]:
        return {
            "norn_redis_reconnects_total": self._reconnects,
            "norn_redis_reader_lag_ms": self._lag_ms,
            "norn_redis_reader_overruns_total": self._overruns,
        }
