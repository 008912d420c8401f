"""Events for `norn emit`: payloads from flags, NDJSON input (whole or streamed), local validation, keys, publishing."""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Sequence
from typing import IO, Any

from norn_cli.client.endpoint import Endpoint
from norn_cli.client.connect import BATCH_BYTES, ConnectionState
from norn_cli.client.publisher import OnAck, PublishStats, publish_resilient
from norn_cli.core.errors import EventError
from norn_cli.core.events import dumps, event_key, loads, validate_event

__all__ = [
    "build_event",
    "build_payload",
    "checked_event",
    "emit_event",
    "emit_events",
    "emit_from_flags",
    "emit_ndjson",
    "keyed",
    "new_key_prefix",
    "read_ndjson",
    "stream_ndjson",
]

MAX_EVENT_BYTES = BATCH_BYTES  # what fits one publish frame with room for the request


def _json_value(text: str) -> Any:
    """A `-p` value: JSON when it parses as JSON, otherwise the text itself."""
    try:
        return loads(text)
    except ValueError:
        return text


def _assign(payload: dict[str, Any], pair: str) -> None:
    key, sep, raw = pair.partition("=")
    if not sep:
        raise EventError(f"-p {pair!r}: expected KEY=VALUE")
    path = key.split(".")
    if not all(path):
        raise EventError(f"-p {pair!r}: {key!r} is not a key (dotted keys nest, like a.b=1)")
    node = payload
    for depth, part in enumerate(path[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            where = ".".join(path[: depth + 1])
            raise EventError(f"-p {pair!r}: {where!r} is already set to a value that is not an object")
        node = child
    node[path[-1]] = _json_value(raw)


def build_payload(data: str | None = None, pairs: Sequence[str] = ()) -> dict[str, Any]:
    """The payload from `--data JSON` and `-p key=value` pairs (which add to or override it)."""
    payload: dict[str, Any] = {}
    if data is not None:
        try:
            parsed = loads(data)
        except ValueError as exc:
            raise EventError(f"--data is not valid JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise EventError("--data must be a JSON object, like '{\"step\": \"build\"}'")
        payload = parsed
    for pair in pairs:
        _assign(payload, pair)
    return payload


def _checked(obj: Any) -> dict[str, Any]:
    etype, app, payload = validate_event(obj)
    event = {"type": etype, "appId": app, "payload": payload}
    size = len(dumps(event))
    if size > MAX_EVENT_BYTES:
        raise EventError(f"the event is {size} bytes encoded; the hub takes at most {MAX_EVENT_BYTES}")
    key = event_key(obj)
    if key is not None:
        event["key"] = key
    return event


def checked_event(obj: Any) -> dict[str, Any]:
    """`obj` as the hub will take it (type, appId, payload, key), validated by its rules; raises EventError."""
    return _checked(obj)


def new_key_prefix() -> str:
    """A random prefix for one run's keys: keys of two runs never meet."""
    return secrets.token_hex(8)


def keyed(event: dict[str, Any], prefix: str, number: int) -> dict[str, Any]:
    """The event with its key: its own `key`, or `<prefix>:<number>` (its line number)."""
    if "key" not in event:
        event["key"] = f"{prefix}:{number}"
    return event


def build_event(etype: str, app: str, payload: dict[str, Any]) -> dict[str, Any]:
    """One event, validated with the hub's own rules; raises EventError."""
    return _checked({"type": etype, "appId": app, "payload": payload})


def _parse_line(line: bytes | str, number: int, source: str, default_type: str | None, default_app: str | None) -> dict[str, Any]:
    try:
        obj = loads(line)
    except ValueError as exc:
        raise EventError(f"{source} line {number}: not valid JSON ({exc})") from None
    if isinstance(obj, dict):
        if default_type is not None:
            obj.setdefault("type", default_type)
        if default_app is not None:
            obj.setdefault("appId", default_app)
    try:
        return _checked(obj)
    except EventError as exc:
        raise EventError(f"{source} line {number}: {exc.message}") from None


def read_ndjson(
    lines: Iterable[bytes | str],
    *,
    source: str = "stdin",
    default_type: str | None = None,
    default_app: str | None = None,
    key_prefix: str | None = None,
) -> list[dict[str, Any]]:
    """Every event of an NDJSON input, validated before any is sent.

    Blank lines are skipped; `id` and `ts` (as `norn tail --json` prints them)
    are dropped, since the hub assigns both; a `key` is kept. With
    `key_prefix`, a line without a key gets `<prefix>:<line number>`. A bad
    line raises EventError naming its line number.
    """
    events: list[dict[str, Any]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            event = _parse_line(line, number, source, default_type, default_app)
        except EventError as exc:
            raise EventError(f"{exc.message}; nothing was sent") from None
        events.append(event if key_prefix is None else keyed(event, key_prefix, number))
    return events


_READ_AHEAD = 1000  # lines the stdin reader may be ahead of the publisher


async def stream_ndjson(
    stream: IO[bytes],
    *,
    key_prefix: str,
    source: str = "stdin",
    default_type: str | None = None,
    default_app: str | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """The keyed events of an NDJSON input as its lines arrive, each validated on arrival.

    A thread reads the lines (stdin cannot be read without blocking
    everywhere), at most 1,000 ahead; a bad line raises EventError after
    the events before it.
    """
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[bytes | None] = asyncio.Queue()
    room = threading.Semaphore(_READ_AHEAD)  # lines handed over and not yet taken
    stopped = threading.Event()

    def hand_over(line: bytes | None) -> None:
        # A plain callback, not a coroutine: a loop that closes first leaves nothing unawaited.
        loop.call_soon_threadsafe(lines.put_nowait, line)

    def read() -> None:
        try:
            for line in stream:
                room.acquire()
                if stopped.is_set():
                    return
                hand_over(line)
        except (RuntimeError, OSError, ValueError):
            pass  # the loop ended, or the input broke: the reader stops either way
        finally:
            try:
                hand_over(None)
            except RuntimeError:
                pass

    threading.Thread(target=read, name="norn-emit-stdin", daemon=True).start()
    number = 0
    try:
        while (line := await lines.get()) is not None:
            room.release()
            number += 1
            if line.strip():
                yield keyed(_parse_line(line, number, source, default_type, default_app), key_prefix, number)
    finally:
        stopped.set()
        room.release(_READ_AHEAD)  # a reader waiting for room wakes, sees `stopped` and ends


async def emit_event(
    endpoint: Endpoint,
    event: dict[str, Any],
    *,
    token: str | None = None,
    cafile: str | None = None,
    retry: bool = True,
    on_state: Callable[[ConnectionState], None] | None = None,
) -> dict[str, Any]:
    """Publish one validated event (keyed at random unless it has a key); return the reply.

    The reply is `{"ok": true, "id": ...}`, plus `"duplicate": true` when the
    hub had the key already.
    """
    if "key" not in event:
        event = keyed(dict(event), new_key_prefix(), 1)
    reply: dict[str, Any] = {}

    def on_ack(event_id: str, duplicate: bool) -> None:
        reply.update({"ok": True, "id": event_id, **({"duplicate": True} if duplicate else {})})

    await publish_resilient(
        endpoint, [event], on_ack=on_ack, retry=retry, total=1, token=token, cafile=cafile, on_state=on_state
    )
    return reply


async def emit_events(
    endpoint: Endpoint,
    events: Sequence[dict[str, Any]] | AsyncIterable[dict[str, Any]],
    *,
    on_ack: OnAck,
    token: str | None = None,
    cafile: str | None = None,
    retry: bool = True,
    on_state: Callable[[ConnectionState], None] | None = None,
) -> PublishStats:
    """Publish keyed events (an event without a key gets one), batched and pipelined, across lost connections.

    `on_ack` gets each event's id, in input order, once, and whether the
    hub had its key already. Errors say how many events got through.
    """
    total = len(events) if isinstance(events, Sequence) else None
    if isinstance(events, Sequence):
        prefix = new_key_prefix()
        events = [ev if "key" in ev else keyed(dict(ev), prefix, i) for i, ev in enumerate(events, 1)]
    return await publish_resilient(
        endpoint, events, on_ack=on_ack, retry=retry, total=total, token=token, cafile=cafile, on_state=on_state
    )


async def emit_from_flags(
    endpoint: Endpoint,
    etype: str,
    app: str,
    *,
    data: str | None = None,
    pairs: Sequence[str] = (),
    key: str | None = None,
    token: str | None = None,
    cafile: str | None = None,
    retry: bool = True,
    on_state: Callable[[ConnectionState], None] | None = None,
) -> dict[str, Any]:
    """`norn emit TYPE --app APP [--data] [-p ...] [--key]`: validate, then publish; return the reply."""
    event = build_event(etype, app, build_payload(data, pairs))
    if key is not None:
        event["key"] = event_key({"key": key})
    return await emit_event(endpoint, event, token=token, cafile=cafile, retry=retry, on_state=on_state)


async def emit_ndjson(
    endpoint: Endpoint,
    lines: IO[bytes],
    *,
    on_ack: OnAck,
    source: str = "stdin",
    stream: bool = False,
    key: str | None = None,
    default_type: str | None = None,
    default_app: str | None = None,
    token: str | None = None,
    cafile: str | None = None,
    retry: bool = True,
    on_state: Callable[[ConnectionState], None] | None = None,
) -> PublishStats:
    """`norn emit --file`: publish every line, keyed `<key or a random prefix>:<line number>` unless it has a key.

    Without `stream`, every line is read and validated before any is sent;
    with it, lines are validated and sent as they arrive.
    """
    prefix = key if key is not None else new_key_prefix()
    events: list[dict[str, Any]] | AsyncIterator[dict[str, Any]]
    if stream:
        events = stream_ndjson(lines, key_prefix=prefix, source=source, default_type=default_type, default_app=default_app)
    else:
        events = read_ndjson(lines, source=source, default_type=default_type, default_app=default_app, key_prefix=prefix)
    return await emit_events(
        endpoint, events, on_ack=on_ack, token=token, cafile=cafile, retry=retry, on_state=on_state
    )
