"""Routing is a pure function of the request: the same cases the raw-socket tests drive, without a socket."""

from __future__ import annotations

from websockets.datastructures import Headers

from norn_cli.hub.routing import Refuse, Subscribe, route

UP = [("Upgrade", "websocket"), ("Connection", "Upgrade")]


def go(target: str, *headers: tuple[str, str], peer: str = "127.0.0.1", token: str | None = None, origins: tuple[str, ...] = ()):
    return route(target, Headers(list(headers)), peer, token=token, allowed_origins=frozenset(origins))


def test_pages_before_anything_else() -> None:
    """/healthz and /metrics answer whatever the headers, even an Origin nobody allowed."""
    assert go("/healthz") == "healthz"
    assert go("/metrics?x=1", ("Origin", "https://evil.example")) == "metrics"


def test_unknown_path_and_plain_http() -> None:
    """A path that is no endpoint is 404; /ws and /api without an upgrade are 426 with the Upgrade header."""
    assert go("/nope") == Refuse(404, "no such endpoint /nope; try /ws, /api, /healthz or /metrics")
    assert go("/ws") == Refuse(426, "/ws is a WebSocket endpoint; connect with a WebSocket client", upgrade=True)


def test_origin_rule() -> None:
    """A foreign or repeated Origin is refused with 403; a configured one gets in."""
    assert go("/ws", *UP, ("Origin", "https://evil.example")) == Refuse(403, "origin 'https://evil.example' is not allowed")
    twice = go("/ws", *UP, ("Origin", "http://localhost"), ("Origin", "http://localhost"))
    assert twice == Refuse(403, "origin 'http://localhost' is not allowed")
    ok = go("/ws", *UP, ("Origin", "https://norn.example"), origins=("https://norn.example",))
    assert isinstance(ok, Subscribe)


def test_api_token_rule() -> None:
    """/api: a missing or wrong token is 401, a right one passes; without a token, only local non-page clients."""
    need = Refuse(401, "this hub needs a bearer token for /api (Authorization: Bearer <token>)")
    assert go("/api", *UP, token="s3cret") == need
    assert go("/api", *UP, ("Authorization", "Bearer wrong"), token="s3cret") == Refuse(
        401, "the hub refused this token (Authorization: Bearer <token>)"
    )
    assert go("/api", *UP, ("Authorization", "Bearer s3cret"), token="s3cret") == "api"
    assert go("/api", *UP) == "api"
    assert go("/api", *UP, peer="10.1.2.3") == Refuse(403, "without a token, /api is only for clients on this machine")
    assert go("/api", *UP, ("Origin", "http://localhost:3000")) == Refuse(
        403, "publishing from a web page needs a token; this hub has none"
    )


def test_subscription_query() -> None:
    """The /ws query becomes a filter and a replay request; a bad one is a 400."""
    sub = go("/ws?app=a,b&type=deploy.*&since=5-1&last=3", *UP)
    assert isinstance(sub, Subscribe)
    assert (sub.flt.apps, sub.flt.types, sub.since, sub.last) == (frozenset({"a", "b"}), frozenset({"deploy.*"}), (5, 1), 3)
    assert go("/ws?last=-1", *UP) == Refuse(400, "last must be zero or more, got '-1'")
    assert go("/ws?since=nope", *UP) == Refuse(400, "'nope' is not an event id (expected <milliseconds>-<sequence>)")
