"""What the Redis hop costs: one `norn serve`, one /api publisher, one /ws subscriber, memory vs redis.

For each broker it starts a hub (`python -m norn_cli serve`, this checkout)
and, with each run, publishes EVENTS events in batches from one /api
connection, at most WINDOW batches unacknowledged, to one /ws subscriber:
events/s from the first send to the last event received, and each event's
latency from its batch's send to its arrival. Then SINGLES events one at a
time (publish, wait for it at the subscriber), for the latency of one event
on an idle hub. Prints the median of RUNS runs of each figure.

    python benchmarks/redis_hop.py                      # starts its own redis-server
    python benchmarks/redis_hop.py --redis redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import socket
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def start_redis(workdir: str) -> tuple[asyncio.subprocess.Process, str]:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        "--dir", workdir, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert proc.stdout is not None
    async with asyncio.timeout(10):
        while b"Ready to accept connections" not in (line := await proc.stdout.readline()):
            if not line:
                raise SystemExit("redis-server did not start")
    return proc, f"redis://127.0.0.1:{port}/0"


async def start_hub(broker: str | None) -> tuple[asyncio.subprocess.Process, str]:
    argv = [sys.executable, "-m", "norn_cli", "serve", "--port", "0", "--history", "10000", "--queue-size", "1024"]
    if broker:
        argv += ["--broker", broker, "--redis-stream", f"bench:{uuid.uuid4().hex}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("NORN_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = await asyncio.create_subprocess_exec(*argv, stderr=asyncio.subprocess.PIPE, env=env)
    assert proc.stderr is not None
    async with asyncio.timeout(10):
        line = (await proc.stderr.readline()).decode()
    m = re.search(r"listening on (ws://\S+) ", line)
    if m is None:
        raise SystemExit(f"the hub did not start: {line}")
    return proc, m.group(1)


async def stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        await proc.wait()


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def batch_request(first: int, size: int) -> str:
    events = [{"type": "bench.tick", "appId": "bench", "payload": {"i": first + j}} for j in range(size)]
    return json.dumps({"op": "publish", "events": events})


async def loaded(url: str, events: int, batch: int, window: int) -> dict[str, float]:
    """Pipelined batches: throughput, and latency under that load."""
    async with connect(f"{url}/ws", max_queue=None) as sub, connect(f"{url}/api", max_queue=None) as api:
        batches = events // batch
        sent = [0.0] * batches
        got = [0.0] * events
        room = asyncio.Semaphore(window)

        async def receive() -> None:
            for _ in range(events):
                raw = await sub.recv()
                got[json.loads(raw)["payload"]["i"]] = time.perf_counter()

        async def acks() -> None:
            for _ in range(batches):
                reply = json.loads(await api.recv())
                if not reply.get("ok"):
                    raise SystemExit(f"publish refused: {reply}")
                room.release()

        tasks = [asyncio.create_task(receive()), asyncio.create_task(acks())]
        start = time.perf_counter()
        for b in range(batches):
            await room.acquire()
            request = batch_request(b * batch, batch)
            sent[b] = time.perf_counter()
            await api.send(request)
        async with asyncio.timeout(120):
            await asyncio.gather(*tasks)
    latencies = [got[i] - sent[i // batch] for i in range(batches * batch)]
    return {
        "eps": batches * batch / (max(got) - start),
        "p50": quantile(latencies, 0.50) * 1000,
        "p99": quantile(latencies, 0.99) * 1000,
    }


async def singles(url: str, count: int) -> dict[str, float]:
    """One event at a time on an idle hub: publish, wait for it to arrive."""
    latencies = []
    async with connect(f"{url}/ws") as sub, connect(f"{url}/api") as api:
        for i in range(count):
            request = batch_request(i, 1)
            t = time.perf_counter()
            await api.send(request)
            await sub.recv()
            latencies.append(time.perf_counter() - t)
            await api.recv()
    return {"one_p50": quantile(latencies, 0.50) * 1000, "one_p99": quantile(latencies, 0.99) * 1000}


async def measure(broker: str | None, args: argparse.Namespace) -> dict[str, float]:
    runs: list[dict[str, float]] = []
    for _ in range(args.runs):
        proc, url = await start_hub(broker)
        try:
            result = await loaded(url, args.events, args.batch, args.window)
            result.update(await singles(url, args.singles))
        finally:
            await stop(proc)
        runs.append(result)
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis", default=None, metavar="URL", help="use this Redis (default: start a redis-server)")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--window", type=int, default=8, help="batches sent and not yet acknowledged")
    parser.add_argument("--singles", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    redis_proc = None
    with tempfile.TemporaryDirectory() as workdir:
        redis_url = args.redis
        if redis_url is None:
            if shutil.which("redis-server") is None:
                raise SystemExit("redis-server is not on PATH; pass --redis URL")
            redis_proc, redis_url = await start_redis(workdir)
        try:
            results: dict[str, Any] = {
                "memory": await measure(None, args),
                "redis": await measure(redis_url, args),
            }
        finally:
            if redis_proc is not None:
                await stop(redis_proc)

    print(
        f"{args.events} events in batches of {args.batch} (window {args.window}), then {args.singles} "
        f"single events; median of {args.runs} runs; Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs"
    )
    print(f"{'broker':<8} {'events/s':>10} {'us/event':>9} {'p50 ms':>8} {'p99 ms':>8} {'single p50 ms':>14} {'single p99 ms':>14}")
    for name, r in results.items():
        print(
            f"{name:<8} {r['eps']:>10,.0f} {1e6 / r['eps']:>9.1f} {r['p50']:>8.2f} {r['p99']:>8.2f} "
            f"{r['one_p50']:>14.3f} {r['one_p99']:>14.3f}"
        )
    mem, red = results["memory"], results["redis"]
    print(
        f"redis hop: +{1e6 / red['eps'] - 1e6 / mem['eps']:.1f} us per event at full load (1/throughput, "
        f"end to end), +{red['one_p50'] - mem['one_p50']:.3f} ms for a single event (p50)"
    )


if __name__ == "__main__":
    asyncio.run(main())
