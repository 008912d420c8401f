"""What the hub says about itself over plain HTTP: `/healthz` and the Prometheus text of `/metrics`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from norn_cli.core.events import dumps
from norn_cli.hub.brokers.base import Broker
from norn_cli.hub.fanout import Hub
from norn_cli.hub.limits import Limits
from norn_cli.hub.writer import FanoutWriter

__all__ = ["health", "limits_text", "metrics_text"]


def health(hub: Hub, broker: Broker) -> tuple[int, bytes]:
    """`/healthz`: 200 while the broker can order events, else 503 with the reason."""
    problem = broker.problem
    body: dict[str, Any] = {"ok": problem is None, "clients": hub.members, "broker": broker.name}
    if problem is not None:
        body["error"] = problem
    return (200 if problem is None else 503), dumps(body) + b"\n"


def _metric(lines: list[str], name: str, kind: str, help_text: str, value: object) -> None:
    lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value}"]


def metrics_text(
    hub: Hub, broker: Broker, writer: FanoutWriter[Any], *, api_conns: int, op_counts: Mapping[str, int]
) -> str:
    """`/metrics` in the Prometheus text format."""
    lines: list[str] = []
    _metric(lines, "norn_connections", "gauge", "Subscribers connected to /ws.", hub.members)
    _metric(lines, "norn_api_connections", "gauge", "Connections to /api.", api_conns)
    _metric(lines, "norn_events_in_total", "counter", "Events published.", hub.published)
    _metric(lines, "norn_events_out_total", "counter", "Event frames handed to subscribers.", hub.delivered)
    _metric(lines, "norn_dropped_clients_total", "counter", "Subscribers closed as slow consumers.", hub.dropped)
    _metric(lines, "norn_fanout_threads", "gauge", "Threads besides the event loop writing to subscribers.", writer.threads)
    _metric(
        lines, "norn_fanout_short_writes_total", "counter",
        "Direct writes a subscriber's socket took only part of (the rest was queued).", writer.short_writes,
    )  # fmt: skip
    _metric(lines, "norn_retained_events", "gauge", "Events retained for replay.", broker.retained)
    lines += [
        "# HELP norn_broker_up 1 while the broker can order events.",
        "# TYPE norn_broker_up gauge",
        f'norn_broker_up{{broker="{broker.name}"}} {int(broker.healthy)}',
        "# HELP norn_api_requests_total /api requests by op.",
        "# TYPE norn_api_requests_total counter",
    ]
    for op, n in sorted(op_counts.items()):
        lines.append(f'norn_api_requests_total{{op="{op}"}} {n}')
    for name, value in broker.metrics().items():
        lines.append(f"{name} {value}")
    return "\n".join(lines) + "\n"


def limits_text(limits: Limits, tcp_connections: int) -> str:
    """The connection limits' part of `/metrics`."""
    lines: list[str] = []
    _metric(lines, "norn_tcp_connections", "gauge", "Open TCP connections, handshakes included.", tcp_connections)
    _metric(lines, "norn_max_connections", "gauge", "WebSocket connections allowed before upgrades get 503.", limits.max_connections)
    _metric(lines, "norn_max_connections_per_ip", "gauge", "WebSocket connections allowed per address (0: no limit).", limits.max_per_ip)
    _metric(
        lines, "norn_handshake_timeouts_total", "counter",
        "Connections closed for not completing the handshake in time.", limits.handshake_timeouts,
    )  # fmt: skip
    lines += ["# HELP norn_connections_refused_total Connections refused by a limit, by reason.",
              "# TYPE norn_connections_refused_total counter"]  # fmt: skip
    for reason in ("cap", "per_ip", "overload"):
        lines.append(f'norn_connections_refused_total{{reason="{reason}"}} {limits.refused[reason]}')
    return "\n".join(lines) + "\n"
