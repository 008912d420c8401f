"""Limits before the upgrade, in one process: the handshake deadline, the caps with 503, and their metrics."""

from __future__ import annotations

import asyncio

import pytest
from websockets.exceptions import InvalidStatus

from conftest import TIMEOUT
from helpers import event, http_get, publish, recv_json, wait_members, ws
from norn_cli.hub.limits import HEADROOM_MIN, Limits, default_max_connections
from norn_cli.hub.server import HubServer


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")


async def closed_by_hub(reader: asyncio.StreamReader) -> bytes:
    """Everything the hub sent until it closed the connection."""
    async with asyncio.timeout(TIMEOUT):
        try:
            return await reader.read()
        except ConnectionResetError:
            return b""


def test_default_cap_leaves_headroom() -> None:
    """The default cap is RLIMIT_NOFILE minus max(64, limit/8)."""
    assert default_max_connections(256) == 256 - HEADROOM_MIN
    assert default_max_connections(20_000) == 20_000 - 2_500
    assert default_max_connections(10) == 1
    assert Limits(max_connections=5).max_connections == 5


async def test_idle_and_half_sent_handshakes_are_closed_and_counted() -> None:
    """A connection that sends nothing, or half a request line, is closed at the deadline; an upgraded one stays."""
    async with HubServer(port=0, handshake_timeout=0.5) as srv:
        async with ws(srv.port, "/ws") as sub, ws(srv.port, "/api") as api:
            await wait_members(srv, 1)
            idle = await asyncio.open_connection("127.0.0.1", srv.port)
            half = await asyncio.open_connection("127.0.0.1", srv.port)
            half[1].write(b"GET /ws HTTP/1.1\r\nHost: x")
            assert await closed_by_hub(idle[0]) == b""
            assert await closed_by_hub(half[0]) == b""
            for _, writer in (idle, half):
                writer.close()
            # Past the deadline, the upgraded connections still work.
            [eid] = await publish(api, event())
            assert (await recv_json(sub))["id"] == eid
            _, _, body = await http_get(srv.port, "/metrics")
            assert metric(body.decode(), "norn_handshake_timeouts_total") == 2


async def test_cap_answers_503_with_retry_after_and_recovers() -> None:
    """Beyond --max-connections an upgrade gets 503 and Retry-After; /healthz answers; a freed slot is reused."""
    async with HubServer(port=0, max_connections=2) as srv:
        async with ws(srv.port) as first, ws(srv.port, "/api"):
            with pytest.raises(InvalidStatus) as refused:
                async with ws(srv.port):
                    pass
            resp = refused.value.response
            assert resp.status_code == 503
            assert resp.headers["Retry-After"] == "5"
            assert b"connection limit (2)" in resp.body
            status, _, _ = await http_get(srv.port, "/healthz")
            assert status == 200
            await first.close()
        async with ws(srv.port) as again:
            await wait_members(srv, 1)
            assert again.response.status_code == 101
        _, _, body = await http_get(srv.port, "/metrics")
        text = body.decode()
        assert 'norn_connections_refused_total{reason="cap"} 1' in text
        assert metric(text, "norn_max_connections") == 2


async def test_per_ip_cap_counts_loopback() -> None:
    """With --max-connections-per-ip 1, a second connection from 127.0.0.1 gets 503."""
    async with HubServer(port=0, max_connections_per_ip=1) as srv:
        async with ws(srv.port):
            with pytest.raises(InvalidStatus) as refused:
                async with ws(srv.port, "/api"):
                    pass
            assert refused.value.response.status_code == 503
            assert b"too many connections from 127.0.0.1" in refused.value.response.body
        async with ws(srv.port, "/api"):
            pass
        _, _, body = await http_get(srv.port, "/metrics")
        assert 'norn_connections_refused_total{reason="per_ip"} 1' in body.decode()


def test_the_hub_raises_its_soft_fd_limit_to_the_hard_one() -> None:
    """A hub started with a soft RLIMIT_NOFILE of 256 (hard higher) derives its cap from the hard limit."""
    import resource
    import subprocess
    import sys

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard <= 256:
        pytest.skip("needs a finite hard limit above 256")
    code = "from norn_cli.hub.limits import Limits; import resource; l = Limits(); print(resource.getrlimit(resource.RLIMIT_NOFILE)[0], l.max_connections)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard)),
    )  # fmt: skip
    soft, cap = map(int, out.stdout.split())
    assert soft == hard and cap == default_max_connections(hard), out.stderr
