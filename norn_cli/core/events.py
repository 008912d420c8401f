"""The event envelope, the seed's catalogue, validation and encoding; no I/O."""

from __future__ import annotations

import fnmatch
import json
import re
import time
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

from norn_cli.core.errors import EventError


class PayloadError(EventError):
    """A catalogue type's payload lacks fields or has ones of the wrong JSON type; names every problem at once."""

    def __init__(self, etype: str, problems: list[str]) -> None:
        super().__init__(_payload_message(etype, problems))
        self.etype = etype
        self.problems = problems
from norn_cli.core.wire import text_frame

_orjson: Any
try:  # orjson is an optional speed-up; the stdlib is the fallback.
    import orjson as _orjson
except ImportError:  # pragma: no cover - exercised when the extra is absent
    _orjson = None

__all__ = [
    "CATALOGUE",
    "Event",
    "PayloadError",
    "example_payload",
    "suggest_type",
    "EventId",
    "Filter",
    "MAX_KEY_LEN",
    "dumps",
    "event_key",
    "format_id",
    "loads",
    "make_event",
    "now_ts",
    "parse_id",
    "validate_event",
]

EventId = tuple[int, int]

_TYPE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*(?:\.[a-z0-9][a-z0-9_-]*)+$")
_APP_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_ID_RE = re.compile(r"^(\d{1,15})-(\d{1,15})$")
MAX_TYPE_LEN = 100
MAX_APP_LEN = 64
RESERVED_PREFIX = "hub."
MAX_KEY_LEN = 128
_ENVELOPE_KEYS = frozenset({"type", "appId", "payload", "id", "ts", "key"})

if _orjson is not None:

    def dumps(obj: Any) -> bytes:
        """Serialise to compact UTF-8 JSON bytes."""
        return _orjson.dumps(obj)

    def loads(data: bytes | bytearray | memoryview | str) -> Any:
        """Parse JSON; raises ValueError on bad JSON or bad UTF-8."""
        return _orjson.loads(data)

else:  # pragma: no cover
    _encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))

    def dumps(obj: Any) -> bytes:
        """Serialise to compact UTF-8 JSON bytes."""
        return _encoder.encode(obj).encode()

    def loads(data: bytes | bytearray | memoryview | str) -> Any:
        """Parse JSON; raises ValueError on bad JSON or bad UTF-8."""
        if isinstance(data, memoryview):
            data = bytes(data)
        return json.loads(data)


def parse_id(value: str) -> EventId:
    """Turn `"<ms>-<seq>"` into a comparable pair; ValueError when malformed."""
    m = _ID_RE.match(value)
    if m is None:
        raise ValueError(f"{value!r} is not an event id (expected <milliseconds>-<sequence>)")
    return int(m.group(1)), int(m.group(2))


def format_id(key: EventId) -> str:
    """The wire form of an id pair."""
    return f"{key[0]}-{key[1]}"


_ts_second: list[Any] = [-1, ""]  # the formatted second, reused within it


def now_ts(ms: int | None = None) -> str:
    """RFC 3339 UTC with milliseconds, for the envelope's `ts`."""
    if ms is None:
        ms = int(time.time() * 1000)
    sec, milli = divmod(ms, 1000)
    if sec != _ts_second[0]:
        dt = datetime.fromtimestamp(sec, tz=timezone.utc)
        _ts_second[0], _ts_second[1] = sec, dt.strftime("%Y-%m-%dT%H:%M:%S.")
    return f"{_ts_second[1]}{milli:03d}Z"


class Event:
    """A published event: its id, routing keys and its encoded envelope.

    The envelope is serialised once, at publish; `data` is what every
    subscriber receives, and `frame` the WebSocket frame carrying it.
    """

    __slots__ = ("id", "key", "type", "app", "data", "frame")

    def __init__(self, key: EventId, type: str, app: str, data: bytes) -> None:
        self.key = key
        self.id = format_id(key)
        self.type = type
        self.app = app
        # Fresh, exactly sized copies: orjson's output keeps a 4 KiB
        # allocation, which made the retained history ~40 MB instead of ~5.
        self.frame = frame = text_frame(data)
        self.data = frame[len(frame) - len(data) :]

    def envelope(self) -> dict[str, Any]:
        """The decoded envelope (for clients and tests; the hub never needs it)."""
        out: dict[str, Any] = loads(self.data)
        return out

    def __repr__(self) -> str:
        return f"Event({self.id} {self.type} {self.app})"


def make_event(key: EventId, type: str, app: str, payload: Mapping[str, Any], ms: int) -> Event:
    """Assign the id and timestamp and encode the envelope once."""
    data = dumps(
        {"type": type, "appId": app, "payload": payload, "id": format_id(key), "ts": now_ts(ms)}
    )
    return Event(key, type, app, data)


# The seed's catalogue: for each known type, the payload fields it must carry
# and the JSON types each may have. Extra fields (e.g. `runId`) are welcome.
_STR = (str,)
_NUM_OR_STR = (int, float, str)
_DEPLOYMENT: dict[str, tuple[type, ...]] = {
    "id": _STR,
    "app": _STR,
    "status": _STR,
    "steps": (list,),
    "startedAt": _STR,
}
_STEP: dict[str, tuple[type, ...]] = {"step": _STR, "status": _STR}
_STEP_OPTIONAL: dict[str, tuple[type, ...]] = {"output": _STR, "durationMs": _NUM_OR_STR}

CATALOGUE: dict[str, dict[str, tuple[type, ...]]] = {
    "deploy.queued": _DEPLOYMENT,
    "deploy.step": _STEP,
    "deploy.failed": {**_DEPLOYMENT, "error": _STR},
    "deploy.completed": _DEPLOYMENT,
    "deploy.rollback": {"imageTag": _STR},
    "forge.queued": {"app": _STR},
    "forge.step": _STEP,
    "forge.failed": {"step": _STR, "error": _STR},
    "forge.completed": {},
    "teardown.queued": {"app": _STR},
    "teardown.step": _STEP,
    "teardown.failed": {"step": _STR, "error": _STR},
    "teardown.completed": {},
    "app.restarted": {"appId": _STR},
    "app.status": {},
}
_OPTIONAL: dict[str, dict[str, tuple[type, ...]]] = {
    "deploy.step": _STEP_OPTIONAL,
    "forge.step": _STEP_OPTIONAL,
    "teardown.step": _STEP_OPTIONAL,
}
_DEPLOYMENT_TYPES = frozenset({"deploy.queued", "deploy.failed", "deploy.completed"})
_CATALOGUE_PREFIXES = frozenset(t.split(".", 1)[0] for t in CATALOGUE)

_JSON_NAMES = {str: "a string", int: "a number", float: "a number", list: "an array", dict: "an object"}


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return _JSON_NAMES.get(type(value), type(value).__name__)


def _payload_message(etype: str, problems: list[str]) -> str:
    """One problem: `T payload needs field 'x'`; several, joined: `T payload needs fields 'x' and 'y'; field 'z' must be ...`."""
    return f"{etype} payload " + "; ".join(problems)


def _want(kinds: tuple[type, ...]) -> str:
    return " or ".join(dict.fromkeys(_JSON_NAMES[k] for k in kinds))


def _check_payload(etype: str, payload: dict[str, Any]) -> None:
    required = CATALOGUE.get(etype)
    if required is None:
        return
    problems: list[str] = []
    missing = [name for name in required if name not in payload]
    if missing:
        names = ", ".join(repr(n) for n in missing[:-1]) + (" and " if len(missing) > 1 else "") + repr(missing[-1])
        problems.append(f"needs field{'s' if len(missing) > 1 else ''} {names}")
    for name, kinds in required.items():
        if name not in payload:
            continue
        value = payload[name]
        if isinstance(value, bool) or not isinstance(value, kinds):
            problems.append(f"field {name!r} must be {_want(kinds)}, got {_json_kind(value)}")
    for name, kinds in _OPTIONAL.get(etype, {}).items():
        if name in payload and (isinstance(payload[name], bool) or not isinstance(payload[name], kinds)):
            problems.append(f"field {name!r} must be {_want(kinds)}, got {_json_kind(payload[name])}")
    if etype in _DEPLOYMENT_TYPES and not any(
        isinstance(payload.get(k), str) for k in ("ref", "commitSha")
    ):
        problems.append("needs field 'ref' or 'commitSha' (a string)")
    if problems:
        raise PayloadError(etype, problems)


# Values that make a catalogue payload valid, for the example command in error messages.
_EXAMPLE_VALUES: dict[str, Any] = {
    "id": "d-1", "app": "mail-agent", "status": "running", "steps": [], "startedAt": "2025-01-01T12:00:00Z",
    "step": "build", "error": "exit status 1", "imageTag": "v1.2.3", "appId": "mail-agent", "ref": "main",
}  # fmt: skip
_EXAMPLE_BY_KIND: dict[type, Any] = {str: "x", int: 0, float: 0, list: [], dict: {}}


def example_payload(etype: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    """`payload` with what a catalogue type needs filled in or corrected, so that it validates."""
    out = dict(payload)
    for name, kinds in {**CATALOGUE.get(etype, {}), **_OPTIONAL.get(etype, {})}.items():
        value = out.get(name)
        ok = name in out and not isinstance(value, bool) and isinstance(value, kinds)
        if not ok and (name in CATALOGUE.get(etype, {}) or name in out):
            sample = _EXAMPLE_VALUES.get(name, _EXAMPLE_BY_KIND[kinds[0]])
            out[name] = sample if isinstance(sample, kinds) else _EXAMPLE_BY_KIND[kinds[0]]
    if etype in _DEPLOYMENT_TYPES and not any(isinstance(out.get(k), str) for k in ("ref", "commitSha")):
        out["ref"] = _EXAMPLE_VALUES["ref"]
    return out


def _edit_distance(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def suggest_type(etype: str) -> str | None:
    """The catalogue type `etype` is probably a typo of (edit distance 1 or 2), or None.

    Only types whose first part is a catalogue prefix (deploy., forge., ...) are
    checked: `backup.completed` is the user's own type, not a typo.
    """
    if etype in CATALOGUE or etype.split(".", 1)[0] not in _CATALOGUE_PREFIXES:
        return None
    best = min(CATALOGUE, key=lambda known: (_edit_distance(etype, known), known))
    return best if _edit_distance(etype, best) <= 2 else None


def validate_event(obj: Any) -> tuple[str, str, dict[str, Any]]:
    """Check one incoming event; return (type, appId, payload) or raise EventError.

    The publisher's `id` and `ts`, if any, are ignored: the hub assigns both.
    """
    if not isinstance(obj, dict):
        raise EventError(f"an event must be a JSON object, got {_json_kind(obj)}")
    extra = obj.keys() - _ENVELOPE_KEYS
    if extra:
        raise EventError(f"unknown event field {sorted(extra)[0]!r} (allowed: type, appId, payload, key)")
    etype = obj.get("type")
    if etype is None:
        raise EventError("event needs field 'type'")
    if not isinstance(etype, str):
        raise EventError(f"event 'type' must be a string, got {_json_kind(etype)}")
    if len(etype) > MAX_TYPE_LEN or not _TYPE_RE.match(etype):
        raise EventError(
            f"event type {etype!r} is not a dotted lower-case name like 'deploy.step'"
        )
    if etype.startswith(RESERVED_PREFIX):
        raise EventError(f"event type {etype!r} is reserved for the hub")
    app = obj.get("appId")
    if app is None:
        raise EventError("event needs field 'appId'")
    if not isinstance(app, str):
        raise EventError(f"event 'appId' must be a string, got {_json_kind(app)}")
    if len(app) > MAX_APP_LEN or not _APP_RE.match(app):
        raise EventError(
            f"event appId {app!r} is not a short slug (letters, digits, '.', '_', '-'; at most 64)"
        )
    payload = obj.get("payload", {})
    if not isinstance(payload, dict):
        raise EventError(f"event 'payload' must be a JSON object, got {_json_kind(payload)}")
    _check_payload(etype, payload)
    return etype, app, payload


def event_key(obj: dict[str, Any]) -> str | None:
    """A publish's idempotency `key` (1-128 printable characters), None when absent; raises EventError.

    The key is not part of the envelope: subscribers never see it.
    """
    key = obj.get("key")
    if key is None:
        return None
    if not isinstance(key, str):
        raise EventError(f"event 'key' must be a string, got {_json_kind(key)}")
    if not 0 < len(key) <= MAX_KEY_LEN or not key.isprintable():
        raise EventError(f"event 'key' must be 1 to {MAX_KEY_LEN} printable characters")
    return key


class Filter:
    """A subscriber's server-side filter: apps (any of) and type patterns (any of).

    Matching results are cached per type, since a hub sees few distinct types.
    """

    __slots__ = ("apps", "types", "_exact", "_globs", "_cache")

    def __init__(self, apps: Iterable[str] = (), types: Iterable[str] = ()) -> None:
        self.apps: frozenset[str] | None = frozenset(apps) or None
        pats = frozenset(types)
        self.types: frozenset[str] | None = pats or None
        self._exact = frozenset(p for p in pats if not _is_glob(p))
        globs = [p for p in pats if _is_glob(p)]
        self._globs = re.compile("|".join(fnmatch.translate(p) for p in globs)) if globs else None
        self._cache: dict[str, bool] = {}

    @property
    def key(self) -> tuple[frozenset[str] | None, frozenset[str] | None]:
        """Subscribers with equal keys share one fan-out group."""
        return self.apps, self.types

    @property
    def exact_types(self) -> frozenset[str] | None:
        """The types matched when every pattern is a plain name (no wildcard), else None."""
        return self._exact if self.types is not None and self._globs is None else None

    def match_type(self, etype: str) -> bool:
        if self.types is None:
            return True
        hit = self._cache.get(etype)
        if hit is None:
            hit = etype in self._exact or (
                self._globs is not None and self._globs.match(etype) is not None
            )
            if len(self._cache) < 4096:
                self._cache[etype] = hit
        return hit

    def match(self, etype: str, app: str) -> bool:
        return (self.apps is None or app in self.apps) and self.match_type(etype)


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")
