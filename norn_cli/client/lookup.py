"""What shell completion asks a hub: recent apps, configured apps, recent run ids; quick, and [] on any failure."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from norn_cli.client.connect import ApiClient, open_connection
from norn_cli.client.endpoint import Endpoint
from norn_cli.core.events import loads

__all__ = ["configured_apps", "recent_apps", "recent_run_ids"]

# Completion runs while someone waits at a prompt: a second at most, then whatever arrived.
BUDGET = 1.0
IDLE = 0.25
LIMIT = 500


async def _recent(
    endpoint: Endpoint, pick: Callable[[dict[str, Any]], str | None], *, types: Sequence[str] = (),
    cafile: str | None = None, limit: int = LIMIT, budget: float = BUDGET, idle: float = IDLE,
) -> list[str]:  # fmt: skip
    """`pick` of each of the hub's last `limit` events (of `types`), newest first, without repeats.

    Reads what `/ws?last=limit` replays, for at most `budget` seconds and
    until `idle` seconds pass without a frame.
    """
    found: dict[str, None] = {}

    async def collect() -> None:
        ws = await open_connection(endpoint.ws_url([("last", limit), *(("type", t) for t in types)]), endpoint, cafile=cafile, open_timeout=budget)
        try:
            for _ in range(limit):
                async with asyncio.timeout(idle):
                    raw = await ws.recv()
                env = loads(raw)
                value = pick(env) if isinstance(env, dict) else None
                if value:
                    found.pop(value, None)
                    found[value] = None  # the newest sighting last
        finally:
            await ws.close()

    try:
        async with asyncio.timeout(budget):
            await collect()
    except Exception:  # completion must never fail loudly
        pass
    return list(reversed(found))


def _app(env: dict[str, Any]) -> str | None:
    app = env.get("appId")
    return app if isinstance(app, str) else None


def _run_id(env: dict[str, Any]) -> str | None:
    payload = env.get("payload")
    run_id = payload.get("runId") if isinstance(payload, dict) else None
    return run_id if isinstance(run_id, str) else None


async def recent_apps(endpoint: Endpoint, *, cafile: str | None = None, **kw: Any) -> list[str]:
    """The apps among the hub's recent events, sorted."""
    return sorted(await _recent(endpoint, _app, cafile=cafile, **kw))


async def recent_run_ids(endpoint: Endpoint, *, cafile: str | None = None, **kw: Any) -> list[str]:
    """The run ids of the hub's recent runs (their `*.queued` events' runId), newest first."""
    return await _recent(endpoint, _run_id, types=("*.queued",), cafile=cafile, **kw)


async def configured_apps(
    endpoint: Endpoint, *, token: str | None = None, cafile: str | None = None, budget: float = BUDGET
) -> list[str]:
    """The apps the hub runs pipelines for (the `apps` op), sorted; the recent events' apps when it does not say."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        async with asyncio.timeout(budget):
            async with ApiClient(endpoint, token=token, cafile=cafile) as api:
                reply = await api.request({"op": "apps"})
        apps = reply.get("apps")
        if isinstance(apps, list):
            return sorted(a for a in apps if isinstance(a, str))
    except Exception:  # an older hub, one without pipelines, or no hub: fall back
        pass
    left = budget - (loop.time() - start)
    return await recent_apps(endpoint, cafile=cafile, budget=left) if left > 0 else []
