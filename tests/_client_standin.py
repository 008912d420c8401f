"""A minimal stand-in for `norn_cli.client`, for these tests only, until the real one lands on main.

It follows the planned API (Endpoint.parse, ApiClient.request, subscribe)
without the real one's reconnects. `install()` uses it only when
`norn_cli.client` cannot be imported, so once the real client is merged
the tests run against it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlencode, urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from norn_cli.errors import HubUnreachable, OperationFailed, Unauthorized


class Endpoint:
    def __init__(self, base: str) -> None:
        self.base = base

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        parts = urlsplit(url)
        scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
        return cls(f"{scheme}://{parts.netloc}")

    def ws_url(self, query: dict[str, Any] | list[tuple[str, Any]] | None = None) -> str:
        return f"{self.base}/ws" + (f"?{urlencode(query, doseq=True)}" if query else "")

    @property
    def api_url(self) -> str:
        return f"{self.base}/api"


async def _connect(url: str, headers: dict[str, str] | None = None) -> ClientConnection:
    try:
        return await connect(url, additional_headers=headers, open_timeout=5)
    except InvalidStatus as exc:
        if exc.response.status_code == 401:
            raise Unauthorized("the hub refused the token") from None
        raise HubUnreachable(f"the hub refused the connection: {exc}") from None
    except (OSError, TimeoutError) as exc:
        raise HubUnreachable(f"cannot reach the hub at {url}: {exc}") from None


class ApiClient:
    def __init__(self, endpoint: Endpoint, token: str | None = None, cafile: str | None = None) -> None:
        self.endpoint = endpoint
        self.token = token
        self.ws: ClientConnection | None = None

    async def __aenter__(self) -> ApiClient:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        self.ws = await _connect(self.endpoint.api_url, headers)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.ws is not None
        await self.ws.close()

    async def request(self, req: dict[str, Any]) -> dict[str, Any]:
        assert self.ws is not None
        try:
            await self.ws.send(json.dumps(req))
            reply: dict[str, Any] = json.loads(await self.ws.recv())
        except ConnectionClosed:
            raise HubUnreachable("the hub closed the connection") from None
        if not reply.get("ok"):
            error = reply.get("error", {})
            raise OperationFailed(error.get("message", "refused"), code=error.get("code", "internal"))
        return reply


async def subscribe(
    endpoint: Endpoint,
    *,
    apps: Any = (),
    types: Any = (),
    since: str | None = None,
    last: int | None = None,
    reconnect: bool = True,
    cafile: str | None = None,
    on_notice: Callable[[str], None] | None = None,
) -> AsyncIterator[dict[str, Any]]:
    query: list[tuple[str, Any]] = [("app", a) for a in apps] + [("type", t) for t in types]
    if since:
        query.append(("since", since))
    if last is not None:
        query.append(("last", last))
    ws = await _connect(endpoint.ws_url(query))
    try:
        async for message in ws:
            yield json.loads(message)
    except ConnectionClosed:
        pass
    finally:
        await ws.close()
    raise HubUnreachable("hub lost")


def install() -> None:
    """Make `import norn_cli.client` find this module when the real one is missing."""
    try:
        import norn_cli.client  # noqa: F401
    except ImportError:
        import norn_cli

        sys.modules["norn_cli.client"] = sys.modules[__name__]
        norn_cli.client = sys.modules[__name__]  # type: ignore[attr-defined]
