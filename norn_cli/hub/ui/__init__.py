"""The live dashboard at `GET /`: its files (package data beside this module) and, as a pure
function of the request, the HTTP answer for each of its paths.

The page is static: `index.html`, `app.css`, `app.js` and `icon.svg`, no build
step, nothing fetched from anywhere but the hub. It subscribes to `/ws` like
any client and never publishes. Every answer carries a strict
Content-Security-Policy: no inline script or style, connections only to the
hub itself.
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources
from typing import NamedTuple
from urllib.parse import parse_qsl

from norn_cli.core.origin import is_authority

__all__ = ["ASSETS", "PREFIX", "UiResponse", "content_security_policy", "respond", "total_size"]

PREFIX = "/ui/"
ASSETS = {
    "app.css": "text/css; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "icon.svg": "image/svg+xml",
}
"""The files under /ui/, with their content types; index.html is served at `/`."""

_INDEX_TYPE = "text/html; charset=utf-8"
_IMMUTABLE = "public, max-age=31536000, immutable"  # a versioned asset URL never changes
_REVALIDATE = "no-cache"  # keep it, but ask (If-None-Match) before each use


class UiResponse(NamedTuple):
    """An HTTP answer: the connection adds Date and Connection."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    body: bytes


class _File(NamedTuple):
    body: bytes
    ctype: str
    etag: str
    version: str


def content_security_policy(host: str | None, tls: bool) -> str:
    """The page's policy: its own scripts, styles and icon, and WebSockets to this hub only.

    `'self'` covers ws:/wss: to the same host in current browsers, not in all;
    the hub's own ws:// and wss:// address (from the Host header, when it is
    well-formed) is named as well. Both schemes, since a proxy in front of the
    hub may terminate TLS.
    """
    connect = "'self'"
    if host is not None and is_authority(host):
        connect += f" ws://{host} wss://{host}" if not tls else f" wss://{host}"
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        f"connect-src {connect}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


def respond(
    path: str, query: str = "", *, host: str | None = None, tls: bool = False, if_none_match: str | None = None
) -> UiResponse | None:
    """The answer to `GET path?query`, or None when the path is not the dashboard's.

    `/` is the page; `/ui/NAME` its files (404 for any other name). Files are
    revalidated by ETag (304 when `if_none_match` names the current one); a
    file asked for with its current `?v=` version, as the page links it, may
    be cached for good.
    """
    if path == "/":
        name = "index.html"
    elif path.startswith(PREFIX):
        name = path[len(PREFIX) :]
        if name not in ASSETS:
            return _plain(404, "Not Found", f"no such dashboard file {path}\n")
    else:
        return None
    file = _files()[name]
    versioned = name != "index.html" and dict(parse_qsl(query)).get("v") == file.version
    headers = [
        ("ETag", file.etag),
        ("Cache-Control", _IMMUTABLE if versioned else _REVALIDATE),
        *_security_headers(host, tls),
    ]
    if if_none_match is not None and _etag_matches(if_none_match, file.etag):
        return UiResponse(304, "Not Modified", tuple(headers), b"")
    headers += [("Content-Type", file.ctype), ("Content-Length", str(len(file.body)))]
    return UiResponse(200, "OK", tuple(headers), file.body)


def total_size() -> int:
    """Bytes of the page and its files together, as served."""
    return sum(len(f.body) for f in _files().values())


def _security_headers(host: str | None, tls: bool) -> list[tuple[str, str]]:
    return [
        ("Content-Security-Policy", content_security_policy(host, tls)),
        ("X-Content-Type-Options", "nosniff"),
        ("X-Frame-Options", "DENY"),
        ("Referrer-Policy", "no-referrer"),
        ("Cross-Origin-Resource-Policy", "same-origin"),
    ]


def _plain(status: int, reason: str, text: str) -> UiResponse:
    body = text.encode()
    headers = (("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))))
    return UiResponse(status, reason, headers + tuple(_security_headers(None, False)), body)


def _etag_matches(header: str, etag: str) -> bool:
    """If-None-Match: `*`, or a list of tags, weak ones (W/"...") compared weakly."""
    tags = [t.strip() for t in header.split(",")]
    return "*" in tags or any(t.removeprefix("W/") == etag for t in tags)


@cache
def _files() -> dict[str, _File]:
    """The files, read once; index.html links the others with their versions."""
    here = resources.files(__name__)
    out: dict[str, _File] = {}
    for name, ctype in ASSETS.items():
        out[name] = _file(here.joinpath(name).read_bytes(), ctype)
    index = here.joinpath("index.html").read_text(encoding="utf-8")
    for name, f in out.items():
        index = index.replace(f"{PREFIX}{name}\"", f"{PREFIX}{name}?v={f.version}\"")
    out["index.html"] = _file(index.encode(), _INDEX_TYPE)
    return out


def _file(body: bytes, ctype: str) -> _File:
    version = hashlib.sha256(body).hexdigest()[:16]
    return _File(body, ctype, f'"{version}"', version)
