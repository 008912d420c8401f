"""Shared fixtures: a real hub on a free port, in the test's loop or in a thread."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from norn_cli.hub.server import HubServer

ROOT = Path(__file__).resolve().parent.parent
# Slow machines (CI) get more time; no test asserts a duration.
TIMEOUT = float(os.environ.get("NORN_TEST_TIMEOUT", "10"))


def norn_argv(*args: str) -> list[str]:
    """argv running this checkout's `norn` (not whatever is installed)."""
    return [sys.executable, "-m", "norn_cli", *args]


def norn_env(**extra: str) -> dict[str, str]:
    """The environment for a `norn` subprocess: this checkout first on the path, no colours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NORN_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("NO_COLOR", "1")
    env.update(extra)
    return env


def run_norn(*args: str, input: str | None = None, timeout: float = TIMEOUT * 3, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `norn ARGS` to completion and return its exit code and output."""
    return subprocess.run(
        norn_argv(*args), input=input, capture_output=True, text=True, timeout=timeout, env=norn_env(**env)
    )


@pytest.fixture
async def hub() -> AsyncIterator[HubServer]:
    """A hub on 127.0.0.1 and a free port, in the test's event loop."""
    srv = HubServer(host="127.0.0.1", port=0, history=1000)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.close()


class ThreadHub:
    """A hub running in its own thread and loop, for sync tests (CliRunner, subprocesses)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("host", "127.0.0.1")
        kwargs.setdefault("port", 0)
        self.kwargs = kwargs
        self.loop = asyncio.new_event_loop()
        self.server: HubServer | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._serve())
        finally:
            self.loop.close()  # else its self-pipe leaks: ResourceWarning, an error here

    async def _serve(self) -> None:
        try:
            self.server = HubServer(**self.kwargs)
            await self.server.start()
            self._stop = asyncio.Event()
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        await self._stop.wait()
        await self.server.close()

    def start(self) -> ThreadHub:
        self._thread.start()
        if not self._ready.wait(TIMEOUT):
            raise TimeoutError("hub thread did not start")
        if self._error is not None:
            raise self._error
        return self

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    def call(self, coro: Any) -> Any:
        """Run a coroutine in the hub's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(TIMEOUT)

    def stop(self) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(TIMEOUT)
        if not self._thread.is_alive():
            self.loop.close()


@pytest.fixture
def thread_hub() -> Iterator[ThreadHub]:
    """A hub in a background thread, for CliRunner and subprocess tests."""
    th = ThreadHub(history=1000).start()
    try:
        yield th
    finally:
        th.stop()
