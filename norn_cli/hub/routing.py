"""Where an HTTP request goes, as a pure function of the request: a page, a refusal, or a WebSocket upgrade."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import parse_qsl

from norn_cli.core.events import EventId, Filter, parse_id
from norn_cli.core.origin import api_refusal, origin_allowed
from norn_cli.hub.ui import PREFIX as UI_PREFIX

__all__ = ["Refuse", "Route", "Subscribe", "route"]

ENDPOINTS = "/ws, /api, /healthz or /metrics"


class RequestHeaders(Protocol):
    """The part of websockets' `Headers` routing reads."""

    def get(self, key: str, default: str, /) -> str: ...

    def get_all(self, key: str) -> list[str]: ...


@dataclass(frozen=True, slots=True)
class Refuse:
    """Answer with this HTTP status and one line of text, then close."""

    status: int
    message: str
    upgrade: bool = False  # 426: say which protocol to upgrade to


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Upgrade to a `/ws` subscriber with this filter and replay request."""

    flt: Filter
    since: EventId | None
    last: int | None
    query: str


Route = Refuse | Subscribe | str
"""A refusal, a subscription, or the name of what to serve: "healthz", "metrics", "ui" or "api"."""


def route(
    target: str, headers: RequestHeaders, peer_host: str, *, token: str | None, allowed_origins: Collection[str],
    tls: bool = False, ui: bool = False,
) -> Route:
    """Decide what to do with a request for `target` (path and query) from `peer_host`.

    `tls`: the hub serves wss:// (a same-origin page is https://); `ui`: it serves the dashboard.
    """
    path, _, query = target.partition("?")
    if path in ("/healthz", "/metrics"):
        return path[1:]
    if ui and (path == "/" or path.startswith(UI_PREFIX)):
        return "ui"
    if path not in ("/ws", "/api"):
        return Refuse(404, f"no such endpoint {path}; try {ENDPOINTS}")
    if "websocket" not in headers.get("Upgrade", "").lower():
        return Refuse(426, f"{path} is a WebSocket endpoint; connect with a WebSocket client", upgrade=True)
    origins = headers.get_all("Origin")
    origin = origins[0] if origins else None
    hosts = headers.get_all("Host")  # same origin: a page this hub served, under its own name
    own = hosts[0] if len(hosts) == 1 else None
    if len(origins) > 1 or not origin_allowed(origin, allowed_origins, host=own, tls=tls):
        return Refuse(403, f"origin {origin!r} is not allowed")
    if path == "/api":
        refusal = api_refusal(
            headers.get("Authorization", ""), has_origin=origin is not None, peer_host=peer_host, token=token
        )
        return "api" if refusal is None else Refuse(*refusal)
    try:
        flt, since, last = parse_subscription(query)
    except ValueError as exc:
        return Refuse(400, str(exc))
    return Subscribe(flt, since, last, query)


def parse_subscription(query: str) -> tuple[Filter, EventId | None, int | None]:
    """A `/ws` query string's filter and replay request; ValueError for a bad one."""
    apps: list[str] = []
    types: list[str] = []
    since = None
    last = None
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name == "app":
            apps.extend(v for v in value.split(",") if v)
        elif name == "type":
            types.extend(v for v in value.split(",") if v)
        elif name == "since":
            if value:
                since = parse_id(value)
        elif name == "last":
            try:
                last = int(value)
            except ValueError:
                raise ValueError(f"last must be a whole number, got {value!r}") from None
            if last < 0:
                raise ValueError(f"last must be zero or more, got {value!r}")
    return Filter(apps, types), since, last
