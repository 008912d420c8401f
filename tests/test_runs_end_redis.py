"""Runs always end, drilled for real: Redis is killed while a step runs, so the run's end cannot be published
until Redis is back; the watcher still gets exactly one terminal event, with the reason."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path

import pytest
from pipeline_support import runner_on
from websockets.asyncio.client import connect

from conftest import TIMEOUT
from norn_cli.hub.brokers.redis import RedisBroker
from norn_cli.hub.server import HubServer
from test_redis_broker import RedisProcess, free_port, needs_redis, ready, request, wait_health

pytestmark = [pytest.mark.redis, needs_redis]


async def test_a_run_ends_once_for_its_watcher_across_a_redis_outage(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis dies mid-step; the step's end and the run's end cannot be published; Redis returns; the watcher
    gets one deploy.failed saying the hub failed, and the hub logged its retries."""
    caplog.set_level(logging.WARNING, logger="norn")
    monkeypatch.setattr(logging.getLogger("norn"), "propagate", True)
    retrying = asyncio.Event()

    class Retrying(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "cannot publish deploy.failed yet" in record.getMessage():
                retrying.set()

    handler = Retrying()
    logging.getLogger("norn").addHandler(handler)
    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    apps = f'[apps.web]\n[[apps.web.deploy]]\nname = "wait"\nrun = "read line < {fifo}; echo $line"\n'
    redis = await RedisProcess(free_port(), tmp_path, persist=True).start()
    srv = HubServer(port=0, broker=RedisBroker(redis.url, history=1000, stream="norn:drill"))
    await srv.start()
    try:
        await ready(srv)
        runner_on(srv, apps, tmp_path)
        async with asyncio.timeout(TIMEOUT * 2):
            async with connect(f"{srv.url}/ws?app=web") as sub, connect(f"{srv.url}/api") as api:
                reply = await request(api, {"op": "deploy", "app": "web"})
                assert reply["ok"] is True, reply
                seen = [json.loads(await sub.recv())]
                while not (seen[-1]["type"] == "deploy.step" and seen[-1]["payload"]["status"] == "running"):
                    seen.append(json.loads(await sub.recv()))
                await redis.stop()  # SIGKILL: an outage
                await wait_health(srv, 503)
                with open(fifo, "w") as f:  # the step ends now; its events have nowhere to go
                    f.write("finished\n")
                await retrying.wait()  # the hub's own log line: it tried and will try again
                await redis.start()
                terminal = []
                while not terminal:
                    env = json.loads(await sub.recv())
                    if env["type"] in ("deploy.completed", "deploy.failed"):
                        terminal.append(env)
                # Exactly one: a marker published now is the next frame for this app.
                marker = await request(api, {"op": "publish", "event": {"type": "drill.marker", "appId": "web", "payload": {}}})
                while (env := json.loads(await sub.recv()))["id"] != marker["id"]:
                    assert env["type"] not in ("deploy.completed", "deploy.failed"), env
        [end] = terminal
        assert end["type"] == "deploy.failed" and end["payload"]["runId"] == reply["runId"]
        assert end["payload"]["error"].startswith("the hub failed: "), end
        retries = [r.getMessage() for r in caplog.records if "deploy.failed" in r.getMessage()]
        assert any("published deploy.failed after" in m for m in retries), retries
        print(f"\nrun {reply['runId']} ended across a Redis outage: {end['payload']['error']!r}; hub log: {retries[-1]!r}")
    finally:
        logging.getLogger("norn").removeHandler(handler)
        await srv.close()
        await redis.stop()
