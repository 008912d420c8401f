"""Where events are ordered, numbered and retained: one interface (base), memory and Redis behind it.

`open_broker` imports an implementation only when its URL scheme is used,
so a hub on the memory broker never loads the redis package.
"""

from __future__ import annotations

from norn_cli.hub.brokers.base import DEDUPE_WINDOW, Broker

__all__ = ["open_broker"]


def open_broker(url: str | None, *, history: int, stream: str = "norn:events", dedupe_window: float = DEDUPE_WINDOW) -> Broker:
    """The broker for a `--broker` URL: memory when empty, Redis for redis(s)://."""
    broker = _open(url, history=history, stream=stream)
    broker.dedupe_window = dedupe_window
    return broker


def _open(url: str | None, *, history: int, stream: str) -> Broker:
    if not url or url == "memory":
        from norn_cli.hub.brokers.memory import MemoryBroker

        return MemoryBroker(history)
    if url.startswith(("redis://", "rediss://", "unix://")):
        try:
            from norn_cli.hub.brokers.redis import RedisBroker
        except ModuleNotFoundError as exc:
            if (exc.name or "").partition(".")[0] != "redis":
                raise
            raise ValueError("a redis:// broker needs the redis package (pip install 'norn-cli[redis]')") from None

        return RedisBroker(url, history=history, stream=stream)
    raise ValueError(f"unknown broker URL {url!r} (use memory or redis://HOST:PORT/DB)")
