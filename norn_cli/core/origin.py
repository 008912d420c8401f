"""The seed's origin policy for `/ws` and `/api`, as a pure function."""

from __future__ import annotations

from collections.abc import Collection
from urllib.parse import urlsplit

__all__ = ["LOOPBACK_HOSTS", "origin_allowed", "parse_origins"]

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
