"""Who may connect, as pure functions: the seed's origin rule (plus same-origin pages) for `/ws` and `/api`, and the token rule for `/api`."""

from __future__ import annotations

import hmac
import ipaddress
import re
from collections.abc import Collection
from urllib.parse import urlsplit

__all__ = ["LOOPBACK_HOSTS", "api_refusal", "is_authority", "is_loopback_host", "origin_allowed", "parse_origins"]

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})

# host[:port] as a Host header or an origin carries it: a name or IPv4 address,
# or a bracketed IPv6 address. Stricter than urlsplit, which lets spaces through.
_AUTHORITY_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~-]+)(?::([0-9]{1,5}))?$")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_allowed(origin: str | None, allowed: Collection[str], *, host: str | None = None, tls: bool = False) -> bool:
    """Tell whether a request with this `Origin` header may connect.

    Absent or empty: allowed (CLI, curl, scripts; the seed's Go cannot tell
    an empty header from none). Exactly one of the configured origins:
    allowed. A well-formed origin whose host is loopback: allowed. A
    well-formed origin equal to the request's own `host` (its Host header)
    under the hub's scheme (`https` when it serves TLS, else `http`), default
    ports elided: allowed, it is a page this hub served. Anything else,
    malformed and `null` included: refused.
    """
    if not origin:
        return True
    if origin in allowed:
        return True
    try:
        parts = urlsplit(origin)
        hostname = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False
    if parts.path not in ("", "/") or parts.query or parts.fragment or "@" in parts.netloc:
        return False
    if hostname in LOOPBACK_HOSTS:
        return True
    own_scheme = "https" if tls else "http"
    if host is None or parts.scheme != own_scheme:
        return False
    own = _authority(host, own_scheme)
    return own is not None and own == _authority(parts.netloc, own_scheme)


def is_authority(text: str) -> bool:
    """Whether `text` is a well-formed host[:port] (a Host header's value), IPv6 in brackets."""
    return _AUTHORITY_RE.match(text) is not None


def _authority(netloc: str, scheme: str) -> tuple[str, int] | None:
    """(host in lower case, port with the scheme's default filled in), or None when malformed."""
    m = _AUTHORITY_RE.match(netloc)
    if m is None:
        return None
    name = m.group(1).lower()
    if name.startswith("["):
        try:  # one spelling per address: [2001:DB8:0::1] is [2001:db8::1]
            name = f"[{ipaddress.IPv6Address(name[1:-1]).compressed}]"
        except ValueError:
            return None
    port = int(m.group(2)) if m.group(2) else _DEFAULT_PORTS[scheme]
    return (name, port) if 0 < port <= 65535 else None


def parse_origins(values: Collection[str]) -> frozenset[str]:
    """Merge repeatable flags and comma-separated lists into one set of origins."""
    out: set[str] = set()
    for value in values:
        for item in value.split(","):
            item = item.strip().rstrip("/")
            if item:
                out.add(item)
    return frozenset(out)


def is_loopback_host(host: str) -> bool:
    """True for localhost and loopback addresses (IPv4, IPv6, IPv4-mapped)."""
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        ip = ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def api_refusal(authorization: str, *, has_origin: bool, peer_host: str, token: str | None) -> tuple[int, str] | None:
    """Why `/api` is refused (HTTP status, one sentence), or None when allowed.

    With a token, only `Authorization: Bearer <token>` gets in. Without one,
    `/api` is for local clients that are not web pages.
    """
    if token is not None:
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return 401, "this hub needs a bearer token for /api (Authorization: Bearer <token>)"
        if not hmac.compare_digest(given.strip().encode(), token.encode()):
            return 401, "the hub refused this token (Authorization: Bearer <token>)"
        return None
    if has_origin:
        return 403, "publishing from a web page needs a token; this hub has none"
    if not is_loopback_host(peer_host):
        return 403, "without a token, /api is only for clients on this machine"
    return None
