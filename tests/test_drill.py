"""The kill drill: hubs killed under a publisher and subscribers behind haproxy; nothing lost, nothing doubled.

Real processes only: redis-server, three `norn serve --broker redis://...`
hubs, haproxy in front (round-robin, health-checked on /healthz), one
`norn emit --stream --file -` fed at a steady rate and three
`norn tail --json`. Meanwhile a random hub is killed with SIGKILL every 2
seconds and started again, 10 times. The 2-second cadence and the feeder's
rate are the drill's schedule, not waits for anything to settle.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import socket
from pathlib import Path
from typing import IO

import pytest

from conftest import TIMEOUT, norn_argv, norn_env
from drill_support import finish, start_emit, start_tails, verdict
from test_redis_broker import RedisProcess, free_port

if shutil.which("haproxy") is None and os.environ.get("NORN_REQUIRE_HAPROXY") == "1":
    raise RuntimeError("NORN_REQUIRE_HAPROXY=1 but haproxy is not on PATH")
if shutil.which("redis-server") is None and os.environ.get("NORN_REQUIRE_REDIS") == "1":
    raise RuntimeError("NORN_REQUIRE_REDIS=1 but redis-server is not on PATH")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.redis,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not on PATH"),
    pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not on PATH (apt-get install haproxy)"),
    pytest.mark.timeout(300),
]

EVENTS = 20_000
KILLS = 10
EVERY = 2.0  # seconds between kills
RATE = 800  # events/s offered by the feeder: 25 s of input, longer than the 20 s of kills
SUBSCRIBERS = 3
STREAM = "norn:drill"

HAPROXY_CFG = """\
global
    maxconn 2000
defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    timeout tunnel 1h
    retries 3
    option redispatch
frontend norn
    bind fd@{fd}
    default_backend hubs
backend hubs
    balance roundrobin
    option httpchk GET /healthz
    default-server inter 100ms fastinter 100ms downinter 100ms fall 1 rise 1
{servers}
"""


class Hub:
    """One `norn serve` process on a fixed port, killed and started again in place."""

    def __init__(self, n: int, redis_url: str, logs: Path) -> None:
        self.n = n
        self.port = free_port()
        self.redis_url = redis_url
        self.logs = logs
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0

    async def start(self) -> None:
        self.starts += 1
        log = (self.logs / f"hub{self.n}.{self.starts}.log").open("wb")
        self.proc = await asyncio.create_subprocess_exec(
            *norn_argv("serve", "--port", str(self.port), "--broker", self.redis_url, "--redis-stream", STREAM),
            stdout=log, stderr=asyncio.subprocess.PIPE, env=norn_env(),
        )  # fmt: skip
        assert self.proc.stderr is not None
        async with asyncio.timeout(TIMEOUT):
            while b"norn hub listening" not in (line := await self.proc.stderr.readline()):
                assert line, f"hub {self.n} exited before listening"
        asyncio.get_running_loop().create_task(_copy(self.proc.stderr, log))

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        async with asyncio.timeout(TIMEOUT):
            await self.proc.wait()


async def _copy(src: asyncio.StreamReader, dst: IO[bytes]) -> None:
    while data := await src.read(65536):
        dst.write(data)
    dst.close()


async def _start_haproxy(tmp_path: Path, hubs: list[Hub]) -> tuple[asyncio.subprocess.Process, int]:
    # haproxy listens on a socket bound here and handed over (`bind fd@N`): it
    # takes connections from the moment it starts, nobody waits for it to bind.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        port = listener.getsockname()[1]
        servers = "\n".join(f"    server hub{h.n} 127.0.0.1:{h.port} check" for h in hubs)
        cfg = tmp_path / "haproxy.cfg"
        cfg.write_text(HAPROXY_CFG.format(fd=listener.fileno(), servers=servers))
        with (tmp_path / "haproxy.log").open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                "haproxy", "-db", "-f", str(cfg), stdout=asyncio.subprocess.DEVNULL, stderr=log,
                pass_fds=(listener.fileno(),),
            )  # fmt: skip
    try:
        return proc, await _haproxy_ready(port)
    except BaseException:
        proc.kill()
        await proc.wait()
        raise


async def _haproxy_ready(port: int) -> int:
    """The port once a request through haproxy reaches a healthy hub."""
    async with asyncio.timeout(TIMEOUT):
        while True:  # each try is a real request through haproxy to a hub
            reader, writer = await asyncio.open_connection("127.0.0.1", port)  # haproxy's socket listens already
            try:  # haproxy keeps a client connection alive unless asked not to: read the head only
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: drill\r\nConnection: close\r\n\r\n")
                head = await reader.readuntil(b"\r\n\r\n")
            except (OSError, asyncio.IncompleteReadError):
                head = b""  # haproxy closed it: no hub is up yet
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
            if head.startswith(b"HTTP/1.1 200"):
                return port


async def test_kill_a_hub_every_2s_behind_haproxy_nothing_lost_nothing_doubled(tmp_path: Path) -> None:
    """20,000 events through haproxy while hubs are killed: emit gets 20,000 distinct ids, every tail the same 20,000 in one order."""
    redis = await RedisProcess(free_port(), tmp_path).start()
    hubs = [Hub(n, redis.url, tmp_path) for n in range(3)]
    procs: list[asyncio.subprocess.Process] = []
    try:
        for h in hubs:
            await h.start()
        haproxy, lb_port = await _start_haproxy(tmp_path, hubs)
        procs.append(haproxy)
        url = f"ws://127.0.0.1:{lb_port}"

        tails = await start_tails(url, SUBSCRIBERS, EVENTS, procs)
        emit = await start_emit(url, procs)

        async def killer() -> list[int]:
            killed = []
            rng = random.Random()
            for _ in range(KILLS):
                await asyncio.sleep(EVERY)  # the drill's cadence
                h = rng.choice(hubs)
                await h.kill()
                await h.start()
                killed.append(h.n)
            return killed

        killed: list[int] = []

        async def kill_all() -> None:
            killed.extend(await killer())

        codes = await finish(emit, tails, kill_all(), EVENTS, RATE)
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()
        for h in hubs:
            if h.proc is not None and h.proc.returncode is None:
                await h.kill()
        await redis.stop()

    counts = verdict(emit, tails, codes, EVENTS)
    print(f"\ndrill: {EVENTS} events, hubs killed {len(killed)} times ({killed}); {counts}")
    assert len(killed) == KILLS
