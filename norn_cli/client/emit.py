"""Events for `norn emit`: payloads from flags, NDJSON input, local validation, pipelined publishing."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from norn_cli.client.endpoint import Endpoint
from norn_cli.client.connect import BATCH_BYTES, ApiClient, publish_stream
from norn_cli.core.errors import EventError, HubUnreachable, OperationFailed
from norn_cli.core.events import dumps, loads, validate_event

__all__ = [
    "build_event",
    "build_payload",
    "emit_event",
    "emit_events",
    "emit_from_flags",
    "emit_ndjson",
    "read_ndjson",
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
    return event


def build_event(etype: str, app: str, payload: dict[str, Any]) -> dict[str, Any]:
    """One event, validated with the hub's own rules; raises EventError."""
    return _checked({"type": etype, "appId": app, "payload": payload})


def read_ndjson(
    lines: Iterable[bytes | str],
    *,
    source: str = "stdin",
    default_type: str | None = None,
    default_app: str | None = None,
) -> list[dict[str, Any]]:
    """Every event of an NDJSON input, validated before any is sent.

    Blank lines are skipped; `id` and `ts` (as `norn tail --json` prints them)
    are dropped, since the hub assigns both. A bad line raises EventError
    naming its line number.
    """
    events: list[dict[str, Any]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = loads(line)
        except ValueError as exc:
            raise EventError(f"{source} line {number}: not valid JSON ({exc}); nothing was sent") from None
        if isinstance(obj, dict):
            if default_type is not None:
                obj.setdefault("type", default_type)
            if default_app is not None:
                obj.setdefault("appId", default_app)
        try:
            events.append(_checked(obj))
        except EventError as exc:
            raise EventError(f"{source} line {number}: {exc.message}; nothing was sent") from None
    return events


async def emit_event(
    endpoint: Endpoint, event: dict[str, Any], *, token: str | None = None, cafile: str | None = None
) -> dict[str, Any]:
    """Publish one validated event; return the hub's reply (`{"ok": true, "id": ...}`)."""
    async with ApiClient(endpoint, token=token, cafile=cafile) as api:
        return await api.request({"op": "publish", "event": event})


async def emit_events(
    endpoint: Endpoint,
    events: Sequence[dict[str, Any]],
    *,
    on_id: Callable[[str], None],
    token: str | None = None,
    cafile: str | None = None,
) -> int:
    """Publish validated events over one connection, batched and pipelined.

    `on_id` gets each assigned id, in input order. Returns how many were
    published; when the hub refuses a batch, says how many got through.
    """
    published = 0
    if not events:
        return 0
    async with ApiClient(endpoint, token=token, cafile=cafile) as api:
        try:
            async for event_id in publish_stream(api, events):
                published += 1
                on_id(event_id)
        except OperationFailed as exc:
            raise OperationFailed(
                f"the hub refused a batch starting at event {published + 1} of {len(events)}: "
                f"{exc.message} (the {published} before it were published)",
                code=exc.code,
            ) from None
        except HubUnreachable as exc:
            raise HubUnreachable(f"{exc.message} ({published} of {len(events)} events were published)") from None
    return published


async def emit_from_flags(
    endpoint: Endpoint,
    etype: str,
    app: str,
    *,
    data: str | None = None,
    pairs: Sequence[str] = (),
    token: str | None = None,
    cafile: str | None = None,
) -> dict[str, Any]:
    """`norn emit TYPE --app APP [--data] [-p ...]`: validate, then publish; return the reply."""
    event = build_event(etype, app, build_payload(data, pairs))
    return await emit_event(endpoint, event, token=token, cafile=cafile)


async def emit_ndjson(
    endpoint: Endpoint,
    lines: Iterable[bytes | str],
    *,
    on_id: Callable[[str], None],
    source: str = "stdin",
    default_type: str | None = None,
    default_app: str | None = None,
    token: str | None = None,
    cafile: str | None = None,
) -> int:
    """`norn emit --file`: read and validate every line, then publish them all; return how many."""
    events = read_ndjson(lines, source=source, default_type=default_type, default_app=default_app)
    return await emit_events(endpoint, events, on_id=on_id, token=token, cafile=cafile)
