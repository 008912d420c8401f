"""Health checks: one GET per check, app.status on every change and as a heartbeat."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pipeline_support import runner_on, subscribed

from norn_cli.hub.pipeline.health import check_health
from norn_cli.hub.pipeline.runner import HEALTH_HEARTBEAT
from norn_cli.hub.server import HubServer


class FakeApp:
    """An HTTP server answering every GET with `code` (or `raw` bytes), counting requests."""

    def __init__(self) -> None:
        self.code = 200
        self.raw: bytes | None = None
        self.requests = 0
        self.server: asyncio.Server | None = None
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        self.requests += 1
        for n, fut in self._waiters:
            if self.requests >= n and not fut.done():
                fut.set_result(None)
        writer.write(self.raw or f"HTTP/1.1 {self.code} X\r\nContent-Length: 0\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    async def reached(self, n: int) -> None:
        """Return once `n` requests have come in (counted as they arrive)."""
        if self.requests < n:
            fut = asyncio.get_running_loop().create_future()
            self._waiters.append((n, fut))
            await fut

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/healthz"


@pytest.fixture
async def fake_app() -> AsyncIterator[FakeApp]:
    app = FakeApp()
    app.server = await asyncio.start_server(app._handle, "127.0.0.1", 0)
    try:
        yield app
    finally:
        app.server.close()
        await app.server.wait_closed()


async def test_check_health(fake_app: FakeApp) -> None:
    """2xx is healthy; 5xx is not; a garbled answer or a closed port is an error."""
    ok = await check_health(fake_app.url, timeout=5)
    assert (ok["healthy"], ok["statusCode"], ok["error"]) == (True, 200, None)
    assert isinstance(ok["responseMs"], float) and ok["checkedAt"].endswith("Z")
    fake_app.code = 503
    bad = await check_health(fake_app.url, timeout=5)
    assert (bad["healthy"], bad["statusCode"], bad["error"]) == (False, 503, "HTTP 503")
    fake_app.raw = b"SSH-2.0-OpenSSH\r\n"
    garbled = await check_health(fake_app.url, timeout=5)
    assert garbled["healthy"] is False and garbled["error"].startswith("not an HTTP response")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        down = await check_health(f"http://127.0.0.1:{port}/", timeout=5)
    assert (down["healthy"], down["statusCode"], down["responseMs"]) == (False, None, None)
    assert down["error"]


async def test_app_status_on_change_and_heartbeat(hub: HubServer, fake_app: FakeApp, tmp_path: Path) -> None:
    """The hub publishes app.status first, on every change, and every few unchanged checks."""
    toml = f'[apps.web]\nhealth = "{fake_app.url}"\nhealth_interval = 0.01\n'
    async with subscribed(hub, "?type=app.status") as events:
        runner_on(hub, toml, tmp_path)
        (first,) = await events.until(lambda e: True)
        assert first["appId"] == "web" and first["payload"]["healthy"] is True
        (beat,) = await events.until(lambda e: True)
        assert beat["payload"]["healthy"] is True and fake_app.requests >= HEALTH_HEARTBEAT + 1
        fake_app.code = 500
        changed = await events.until(lambda e: e["payload"]["healthy"] is False)
        assert changed[-1]["payload"]["statusCode"] == 500
        fake_app.code = 204
        back = await events.until(lambda e: e["payload"]["healthy"] is True)
        assert back[-1]["payload"]["statusCode"] == 204
