"""A hub's address: one type for every client, parsed from whatever URL the user gives."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from norn_cli.core.errors import ConfigError

__all__ = ["Endpoint"]


class Endpoint:
    """A hub's address, from any of `ws(s)://`, `http(s)://`, with or without a path."""

    def __init__(self, scheme: str, netloc: str, prefix: str) -> None:
        self.scheme = scheme  # "ws" or "wss"
        self.netloc = netloc
        self.prefix = prefix  # path before /ws and /api, "" or "/something"

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        raw = url.strip()
        if "://" not in raw:
            raw = "ws://" + raw
        try:
            parts = urlsplit(raw)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as exc:
            raise ConfigError(f"bad hub URL {url!r}: {exc}") from None
        schemes = {"ws": "ws", "http": "ws", "wss": "wss", "https": "wss"}
        scheme = schemes.get(parts.scheme.lower())
        if scheme is None or not parts.hostname:
            raise ConfigError(f"bad hub URL {url!r}: use ws://HOST:PORT, wss://, http:// or https://")
        path = parts.path.rstrip("/")
        for tail in ("/ws", "/api", "/healthz", "/metrics"):
            if path.endswith(tail):
                path = path[: -len(tail)]
                break
        return cls(scheme, parts.netloc, path)

    @property
    def secure(self) -> bool:
        return self.scheme == "wss"

    def host_port(self) -> tuple[str, int]:
        """Where to open a socket: the host and the port (default 443 for wss, 80 for ws)."""
        parts = urlsplit(f"{self.scheme}://{self.netloc}")
        return parts.hostname or "", parts.port or (443 if self.secure else 80)

    @property
    def base(self) -> str:
        return f"{self.scheme}://{self.netloc}{self.prefix}"

    def ws_url(self, query: dict[str, Any] | Sequence[tuple[str, Any]] | None = None) -> str:
        q = urlencode(query, doseq=True) if query else ""
        return urlunsplit((self.scheme, self.netloc, self.prefix + "/ws", q, ""))

    @property
    def api_url(self) -> str:
        return urlunsplit((self.scheme, self.netloc, self.prefix + "/api", "", ""))

    def __str__(self) -> str:
        return self.base
