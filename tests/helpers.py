"""Small real-socket helpers for tests: raw HTTP, WebSocket clients, waiting for frames."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from conftest import TIMEOUT


async def http_get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One plain HTTP/1.1 GET; returns (status, headers, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        async with asyncio.timeout(TIMEOUT):
            raw = await reader.read()  # the hub closes after a plain HTTP answer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    hdrs = {}
    for line in header_lines:
        k, _, v = line.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    return int(status_line.split()[1]), hdrs, body


def ws(port: int, path: str = "/ws", **kwargs: Any) -> Any:
    """A websockets client connection to the hub (use with `async with`)."""
    kwargs.setdefault("open_timeout", TIMEOUT)
    return connect(f"ws://127.0.0.1:{port}{path}", **kwargs)


async def recv_json(conn: ClientConnection) -> Any:
    async with asyncio.timeout(TIMEOUT):
        return json.loads(await conn.recv())


async def recv_n(conn: ClientConnection, n: int) -> list[Any]:
    """Exactly the next n frames, decoded."""
    out = []
    async with asyncio.timeout(TIMEOUT):
        for _ in range(n):
            out.append(json.loads(await conn.recv()))
    return out


async def request(api: ClientConnection, req: Any) -> Any:
    await api.send(req if isinstance(req, (str, bytes)) else json.dumps(req))
    return await recv_json(api)


def event(etype: str = "backup.completed", app: str = "mail-agent", **payload: Any) -> dict[str, Any]:
    return {"type": etype, "appId": app, "payload": payload}


async def publish(api: ClientConnection, *events: dict[str, Any]) -> list[str]:
    """Publish events one request each and return their ids."""
    ids = []
    for ev in events:
        reply = await request(api, {"op": "publish", "event": ev})
        assert reply["ok"] is True, reply
        ids.append(reply["id"])
    return ids


async def wait_members(hub_server: Any, n: int) -> None:
    """Wait until the hub has n live subscribers (asks the hub, never sleeps blindly)."""
    async with asyncio.timeout(TIMEOUT):
        while hub_server.hub.members != n:
            await asyncio.sleep(0)  # yield to the loop that runs the handshakes
