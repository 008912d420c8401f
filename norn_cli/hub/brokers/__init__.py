"""Where events are ordered, numbered and retained: one interface (base), memory, SQLite and Redis behind it.

`open_broker` imports an implementation only when its URL scheme is used,
so a hub on the memory broker never loads the redis package.
"""

from __future__ import annotations

from norn_cli.hub.brokers.base import DEDUPE_WINDOW, Broker

__all__ = ["open_broker"]


def open_broker(
    url: str | None,
    *,
    history: int,
    stream: str = "norn:events",
    dedupe_window: float = DEDUPE_WINDOW,
    retention: float | None = None,
    fsync: str = "normal",
    pin_cpu: bool = True,
) -> Broker:
    """The broker for a `--broker` URL: memory when empty, SQLite for sqlite://PATH, Redis for redis(s)://.

    `retention` (seconds), `fsync` and `pin_cpu` apply to SQLite only;
    ValueError when they are given for another broker, or the URL is
    malformed.
    """
    broker = _open(url, history=history, stream=stream, retention=retention, fsync=fsync, pin_cpu=pin_cpu)
    broker.dedupe_window = dedupe_window
    return broker


def _open(url: str | None, *, history: int, stream: str, retention: float | None, fsync: str, pin_cpu: bool) -> Broker:
    is_sqlite = url is not None and url.startswith("sqlite://")
    if not is_sqlite and (retention is not None or fsync != "normal" or not pin_cpu):
        raise ValueError("--retention, --fsync and --no-pin-cpu apply to the SQLite broker only (--broker sqlite:///PATH)")
    if not url or url == "memory":
        from norn_cli.hub.brokers.memory import MemoryBroker

        return MemoryBroker(history)
    if is_sqlite:
        from norn_cli.hub.brokers.sqlite import SqliteBroker

        return SqliteBroker.from_url(url, history=history, retention=retention, fsync=fsync, pin_cpu=pin_cpu)
    if url.startswith(("redis://", "rediss://", "unix://")):
        try:
            from norn_cli.hub.brokers.redis import RedisBroker
        except ModuleNotFoundError as exc:
            if (exc.name or "").partition(".")[0] != "redis":
                raise
            raise ValueError("a redis:// broker needs the redis package (pip install 'norn-cli[redis]')") from None

        return RedisBroker(url, history=history, stream=stream)
    raise ValueError(f"unknown broker URL {url!r} (use memory, sqlite:///PATH or redis://HOST:PORT/DB)")
