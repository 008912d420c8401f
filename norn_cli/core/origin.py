"""Who may connect, as pure functions: the seed's origin rule for `/ws` and `/api`, and the token rule for `/api`."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Collection
from urllib.parse import urlsplit

__all__ = ["LOOPBACK_HOSTS", "api_refusal", "is_loopback_host", "origin_allowed", "parse_origins"]

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def origin_allowed(origin: str | None, allowed: Collection[str]) -> bool:
    """Tell whether a request with this `Origin` header may connect.

    Absent: allowed (CLI, curl, scripts). Exactly one of the configured
    origins: allowed. A well-formed origin whose host is loopback: allowed.
    Anything else, malformed and `null` included: refused.
    """
    if origin is None:
        return True
    if origin in allowed:
        return True
    try:
        parts = urlsplit(origin)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False
    if parts.path not in ("", "/") or parts.query or parts.fragment or "@" in parts.netloc:
        return False
    return host in LOOPBACK_HOSTS


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
