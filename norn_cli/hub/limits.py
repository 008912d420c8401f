"""Limits before the upgrade: the handshake deadline, the connection caps, and what they count.

A connection has `handshake_timeout` seconds from its accept to complete
its HTTP request and WebSocket upgrade (or to be answered and gone, for
plain HTTP); one `loop.call_later` per connection, cancelled at the upgrade,
closes it otherwise. Idle TCP connections that never send a byte count too.

The hub first raises its soft RLIMIT_NOFILE to the hard limit (as Go's
runtime does), then derives its caps from it. Upgrades beyond
`max_connections` WebSocket connections (or beyond
`max_per_ip` from one address, when set) are answered `503` with
`Retry-After`; plain HTTP (`/healthz`, `/metrics`) is still answered. A TCP
connection beyond the *hard* ceiling (the cap plus the headroom kept for
handshakes, see `default_max_connections`) is closed at once without a
word, so the hub never runs itself out of file descriptors.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections import Counter

__all__ = [
    "HEADROOM_MIN", "RETRY_AFTER", "Limits", "default_max_connections", "fd_limit", "headroom", "raise_fd_limit",
]  # fmt: skip

log = logging.getLogger("norn.server")

RETRY_AFTER = 5  # seconds a refused client is told to wait
HEADROOM_MIN = 64  # descriptors kept for the hub itself: modules, the listener, the loop, broker, runner pipes


def fd_limit() -> int:
    """The soft RLIMIT_NOFILE of this process (a large number when unlimited)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1 << 20 if soft == resource.RLIM_INFINITY else int(soft)


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (as Go's runtime does); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
    return fd_limit()


def headroom(nofile: int) -> int:
    """Descriptors not given to WebSocket connections: max(64, nofile / 8).

    Half of it is the hub's own (loaded files, the listening socket, the
    event loop's, a Redis or SQLite broker's, a running pipeline step's
    three pipes, health checks); the other half is for connections still in
    their handshake, so a client over the cap can still be told `503` and
    `/healthz` still answers.
    """
    return max(HEADROOM_MIN, nofile // 8)


def default_max_connections(nofile: int | None = None) -> int:
    """The default `--max-connections`: RLIMIT_NOFILE minus `headroom` (at least 1)."""
    n = fd_limit() if nofile is None else nofile
    return max(1, n - headroom(n))


class Limits:
    """The hub's connection limits and their counters (one per server)."""

    def __init__(
        self,
        *,
        handshake_timeout: float = 10.0,
        max_connections: int | None = None,
        max_per_ip: int = 0,
    ) -> None:
        nofile = raise_fd_limit()
        ceiling = default_max_connections(nofile)
        self.handshake_timeout = handshake_timeout
        self.max_connections = ceiling if max_connections is None else max_connections
        if self.max_connections > ceiling:
            # Above it the hub would run out of descriptors at accept (EMFILE), where asyncio's
            # loop spins logging the error up to `backlog` times per wakeup (CPython 3.11).
            log.warning(
                "max connections %d is more than the file-descriptor limit (%d) allows; using %d "
                "(raise the limit with ulimit -n)", self.max_connections, nofile, ceiling,
            )  # fmt: skip
            self.max_connections = ceiling
        self.max_per_ip = max_per_ip
        # TCP connections beyond this are closed at accept: the cap plus room for handshakes.
        self.hard_limit = self.max_connections + headroom(nofile) // 2
        # The listen backlog is also how many connections asyncio's loop accepts in one go, before
        # any of them is counted: no more than the room for handshakes, so a burst cannot reach EMFILE.
        self.backlog = min(4096, max(16, headroom(nofile) // 2))
        self.upgraded = 0  # WebSocket connections counted against max_connections
        self.per_ip: Counter[str] = Counter()
        self.handshake_timeouts = 0
        self.refused: Counter[str] = Counter()  # reason -> connections refused ("cap", "per_ip", "overload")
        self._unlogged = 0
        self._log_armed = False

    # ------------------------------------------------------------ the caps

    def refusal(self, peer_host: str) -> str | None:
        """Why an upgrade from `peer_host` must wait (a one-line reason), or None to admit it."""
        if self.upgraded >= self.max_connections:
            self.refused["cap"] += 1
            return f"the hub is at its connection limit ({self.max_connections}); retry in {RETRY_AFTER} s"
        if self.max_per_ip and self.per_ip[peer_host] >= self.max_per_ip:
            self.refused["per_ip"] += 1
            return f"too many connections from {peer_host} (limit {self.max_per_ip}); retry in {RETRY_AFTER} s"
        return None

    def admit(self, peer_host: str) -> None:
        """Count an upgraded connection (call `release` with the same host when it ends)."""
        self.upgraded += 1
        if self.max_per_ip:
            self.per_ip[peer_host] += 1

    def release(self, peer_host: str) -> None:
        self.upgraded -= 1
        if self.max_per_ip:
            left = self.per_ip[peer_host] - 1
            if left > 0:
                self.per_ip[peer_host] = left
            else:
                del self.per_ip[peer_host]

    def overloaded(self, open_connections: int) -> bool:
        """Whether a just-accepted TCP connection goes over the hard ceiling (close it unanswered)."""
        if open_connections > self.hard_limit:
            self.refused["overload"] += 1
            return True
        return False

    # ------------------------------------------------------------ the handshake deadline

    def timed_out(self, loop: asyncio.AbstractEventLoop) -> None:
        """Count a connection closed for not completing its handshake; log in aggregate."""
        self.handshake_timeouts += 1
        self._unlogged += 1
        if not self._log_armed:
            self._log_armed = True
            loop.call_later(1.0, self._flush_log)

    def flush_log(self) -> None:
        """Log what is not logged yet (the server calls this at shutdown)."""
        self._flush_log()

    def _flush_log(self) -> None:
        self._log_armed = False
        n, self._unlogged = self._unlogged, 0
        if n:
            log.info(
                "closed %d connection%s that did not complete the handshake within %g s "
                "(%d in all; connections over the hard limit closed at accept: %d)",
                n, "" if n == 1 else "s", self.handshake_timeout, self.handshake_timeouts, self.refused["overload"],
            )  # fmt: skip
