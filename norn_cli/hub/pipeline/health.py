"""One HTTP health check of an app: a minimal HTTP/1.1 GET on asyncio streams, no dependency."""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import Any
from urllib.parse import urlsplit

from norn_cli import __version__
from norn_cli.core.events import now_ts

__all__ = ["check_health"]

_MAX_STATUS_LINE = 8192


async def check_health(url: str, *, timeout: float) -> dict[str, Any]:
    """GET `url` once; the `app.status` payload: healthy (2xx/3xx), statusCode, responseMs, checkedAt, error."""
    started = time.monotonic()
    code: int | None = None
    error: str | None = None
    try:
        async with asyncio.timeout(timeout):
            code = await _get_status(url)
    except TimeoutError:
        error = f"no answer within {timeout:g}s"
    except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        error = str(exc) or type(exc).__name__
    elapsed = round((time.monotonic() - started) * 1000, 1)
    healthy = code is not None and 200 <= code < 400
    if code is not None and not healthy:
        error = f"HTTP {code}"
    return {
        "healthy": healthy,
        "statusCode": code,
        "responseMs": elapsed if code is not None else None,
        "checkedAt": now_ts(),
        "error": error,
        "url": url,
    }


async def _get_status(url: str) -> int:
    """The status code of `GET url` (the body is not read)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url}")
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host = parts.netloc.rpartition("@")[2]
    reader, writer = await asyncio.open_connection(
        parts.hostname, port, ssl=ssl.create_default_context() if tls else None, limit=_MAX_STATUS_LINE
    )
    try:
        writer.write(
            f"GET {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: norn/{__version__}\r\n"
            "Accept: */*\r\nConnection: close\r\n\r\n".encode("latin-1")
        )
        await writer.drain()
        line = await reader.readuntil(b"\r\n")
    finally:
        writer.close()
    version, _, rest = line.decode("latin-1").partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/") or not code.isdigit():
        raise ValueError(f"not an HTTP response: {line[:60]!r}")
    return int(code)
