"""Runs always end: a run whose terminal event fails to publish once still ends, once, for its watcher."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pytest
from pipeline_support import api, runner_on, subscribed

from norn_cli.core.events import Event
from norn_cli.hub.brokers.base import Item, Unavailable
from norn_cli.hub.brokers.memory import MemoryBroker
from norn_cli.hub.server import HubServer

APPS = """
[apps.web]
[[apps.web.deploy]]
name = "build"
run = "echo built"
"""


class FailsTerminalOnce(MemoryBroker):
    """A memory broker whose first publish of a run's end fails (a failure a test cannot cause for real
    with the in-memory broker: it has no outage of its own)."""

    def __init__(self) -> None:
        super().__init__(1000)
        self.failures = 0

    async def publish(self, items: Sequence[Item]) -> list[Event]:
        if self.failures == 0 and any(t.endswith((".completed", ".failed")) for t, _, _ in items):
            self.failures += 1
            raise Unavailable("the broker is briefly unavailable")
        return await super().publish(items)


async def test_a_run_whose_end_fails_to_publish_once_still_ends_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watcher sees exactly one deploy.completed; the hub logs the retry."""
    caplog.set_level(logging.WARNING, logger="norn")
    monkeypatch.setattr(logging.getLogger("norn"), "propagate", True)
    broker = FailsTerminalOnce()
    async with HubServer(port=0, broker=broker) as srv:
        runner_on(srv, APPS, tmp_path)
        async with subscribed(srv, "?app=web") as events:
            reply = await api(srv, {"op": "deploy", "app": "web"})
            assert reply["ok"] is True, reply
            seen = await events.run_end()
            assert seen[-1]["type"] == "deploy.completed"
            assert seen[-1]["payload"]["runId"] == reply["runId"]
            # Nothing after it: a marker published now is the very next frame.
            await api(srv, {"op": "publish", "event": {"type": "test.marker", "appId": "web", "payload": {}}})
            after = await events.until(lambda e: e["type"] == "test.marker")
            assert [e["type"] for e in after] == ["test.marker"]
    assert broker.failures == 1
    assert any("cannot publish deploy.completed yet" in r.getMessage() for r in caplog.records)
    assert any("published deploy.completed after 1 failed tries" in r.getMessage() for r in caplog.records)
