"""A hub embedded in the command's own loop, for `norn bench --in-process` (the one place a client meets the hub)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from norn_cli.hub.server import HubServer

__all__ = ["embedded_hub"]


@asynccontextmanager
async def embedded_hub() -> AsyncIterator[str]:
    """A hub on 127.0.0.1 and a free port for the block's duration; yields its URL."""
    async with HubServer(host="127.0.0.1", port=0) as srv:
        yield srv.url
