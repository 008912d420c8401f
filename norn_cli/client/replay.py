"""`norn replay`: re-publish a recording made by `norn tail --json`, with its original spacing or faster."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from norn_cli.client.connect import ConnectionState
from norn_cli.client.emit import checked_event, keyed, new_key_prefix
from norn_cli.client.endpoint import Endpoint
from norn_cli.client.publisher import PublishStats, publish_resilient
from norn_cli.core.errors import EventError
from norn_cli.core.events import RESERVED_PREFIX, Filter, loads

__all__ = ["Recorded", "Recording", "read_recording", "replay", "schedule"]


@dataclass(frozen=True)
class Recorded:
    """One event of a recording: what will be published, and when it was first published (ms, or None)."""

    line: int
    event: dict[str, Any]
    at_ms: float | None


@dataclass
class Recording:
    """The events of a recording that pass the filters, in file order, and how many lines did not."""

    events: list[Recorded] = field(default_factory=list)
    skipped: int = 0


def _ts_ms(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise EventError(f"{where}: 'ts' must be a timestamp string like 2026-11-27T10:00:00.000Z")
    try:
        return datetime.fromisoformat(value).timestamp() * 1000
    except ValueError:
        raise EventError(f"{where}: 'ts' {value!r} is not a timestamp like 2026-11-27T10:00:00.000Z") from None


def read_recording(
    lines: Iterable[bytes | str], *, source: str = "stdin", apps: Sequence[str] = (), types: Sequence[str] = (),
    rewrite_app: str | None = None,
) -> Recording:  # fmt: skip
    """Every line of a recording, checked before anything is sent; raises EventError naming a bad line.

    Blank lines and the hub's own frames (`hub.*`, e.g. `hub.gap`) are
    skipped; `apps` (any of) and `types` (globs, any of) filter as `norn tail`
    does, before `rewrite_app` renames the app. `id` and `ts` are dropped
    (the hub assigns both); `ts` is kept aside for the spacing.
    """
    flt = Filter(apps, types)
    out = Recording()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{source} line {number}"
        try:
            obj = loads(line)
        except ValueError as exc:
            raise EventError(f"{where}: not valid JSON ({exc}); nothing was sent") from None
        if not isinstance(obj, dict):
            raise EventError(f"{where}: expected a JSON object (an event as `norn tail --json` prints it); nothing was sent")
        etype, app = obj.get("type"), obj.get("appId")
        if isinstance(etype, str) and etype.startswith(RESERVED_PREFIX):
            out.skipped += 1
            continue
        if not flt.match(etype if isinstance(etype, str) else "", app if isinstance(app, str) else ""):
            out.skipped += 1
            continue
        at_ms = _ts_ms(obj.get("ts"), where)
        if rewrite_app is not None:
            obj["appId"] = rewrite_app
        try:
            event = checked_event(obj)
        except EventError as exc:
            raise EventError(f"{where}: {exc.message}; nothing was sent") from None
        out.events.append(Recorded(number, event, at_ms))
    return out


def schedule(events: Sequence[Recorded], speed: float | None) -> list[float]:
    """Seconds after the start at which each event is due: its distance from the first `ts`, divided by `speed`.

    `speed=None` is as fast as the hub takes them (all 0). An event without a
    `ts`, or one older than the event before it, goes right after that one.
    """
    out: list[float] = []
    first: float | None = None
    prev = 0.0
    for rec in events:
        due = prev
        if speed is not None and rec.at_ms is not None:
            if first is None:
                first = rec.at_ms
            due = max(prev, (rec.at_ms - first) / 1000 / speed)
        out.append(due)
        prev = due
    return out


async def replay(
    endpoint: Endpoint,
    recording: Recording,
    *,
    speed: float | None = 1.0,
    on_progress: Callable[[int, int], None] | None = None,
    token: str | None = None,
    cafile: str | None = None,
    retry: bool = True,
    on_state: Callable[[ConnectionState], None] | None = None,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> PublishStats:
    """Publish the recording's events in order, each when due (see `schedule`); return the stats.

    Every event is keyed (a random prefix and its line number), so a lost
    connection re-sends exactly what was not acknowledged. `on_progress(done,
    total)` hears of each acknowledgement.
    """
    total = len(recording.events)
    due = schedule(recording.events, speed)
    prefix = new_key_prefix()
    done = 0

    def on_ack(event_id: str, duplicate: bool) -> None:
        nonlocal done
        done += 1
        if on_progress is not None:
            on_progress(done, total)

    async def paced() -> AsyncIterator[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for rec, at in zip(recording.events, due):
            wait = at - (loop.time() - start)
            if wait > 0:
                await sleep(wait)
            yield keyed(dict(rec.event), prefix, rec.line)

    events: AsyncIterator[dict[str, Any]] | list[dict[str, Any]]
    if speed is None:
        events = [keyed(dict(rec.event), prefix, rec.line) for rec in recording.events]
    else:
        events = paced()
    return await publish_resilient(
        endpoint, events, on_ack=on_ack, retry=retry, total=total, token=token, cafile=cafile, on_state=on_state
    )
