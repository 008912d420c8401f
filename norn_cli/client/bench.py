"""`norn bench`: a load generator for a running or embedded hub, and its figures; no Click, no rich.

S subscribers on `/ws` and P publishers on `/api` (pipelined, at most
`window` requests in flight each, optionally paced to an offered rate)
exchange M events whose payload carries the send time, so latency is
publish-send to subscriber-receipt on one clock. Optional stalled
subscribers never read: the hub should close them with 1013 while every
healthy subscriber still gets every event.

The embedded hub runs in a subprocess (`python -m norn_cli serve --port 0`)
by default: a Python load generator in the hub's own process and loop would
compete with it for the CPU and understate it. `in_process` takes a factory
of a hub in the bench's own loop instead (the CLI wires one; handy for
tests, not for figures).
"""

from __future__ import annotations

import asyncio
import secrets
import os
import re
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from norn_cli.client.endpoint import Endpoint
from norn_cli.client.connect import open_connection
from norn_cli.core.errors import ConfigError, HubUnreachable, OperationFailed
from norn_cli.core.events import loads

__all__ = [
    "hub_traffic",
    "BenchConfig",
    "BenchProgress",
    "BenchResult",
    "EmbeddedHub",
    "LatencyHistogram",
    "run_bench",
]

_TICK = 0.1  # seconds between progress reports and drain checks
_DIAL_CONCURRENCY = 50
_STALLED_RCVBUF = 4096  # a tiny kernel buffer, so a stalled reader backs up quickly
_STALLED_DRAIN = 3.0  # seconds to read what the hub left a stalled subscriber
_PAYLOAD_FIXED = 48  # bytes of {"t":..,"p":..,"k":..,"pad":""} before padding
_RUN = secrets.token_hex(6)  # this run's key prefix: keys of two runs never meet
_WARM = '{"op":"publish","event":{"type":"bench.warm","appId":"%s","payload":{"t":%d,"p":0,"k":-1}}}'


@dataclass
class BenchConfig:
    """What to run: S subscribers, P publishers, M events of about B bytes of payload."""

    subs: int = 10
    pubs: int = 1
    events: int = 10_000
    size: int = 128
    rate: float | None = None  # offered events/s over all publishers; None: as fast as acks allow
    window: int = 64  # unacknowledged publish requests per publisher
    batch: int = 1  # events per publish request
    keys: bool = False  # give every event an idempotency key (what `norn emit` does)
    stalled: int = 0
    timeout: float = 60.0  # the measured phase, at most
    drain: float = 3.0  # after the last ack: stop when deliveries make no progress this long
    app: str = "bench"
    type: str = "bench.tick"

    def check(self) -> None:
        """Raise ConfigError for settings that cannot run."""
        if self.subs < 0 or self.stalled < 0:
            raise ConfigError("subscribers must be zero or more")
        if self.pubs < 1 or self.events < 1:
            raise ConfigError("a bench needs at least one publisher and one event")
        if self.window < 1 or self.batch < 1 or self.size < 0:
            raise ConfigError("window and batch must be at least 1, size zero or more")
        if self.rate is not None and self.rate <= 0:
            raise ConfigError("rate must be positive (leave it out for as fast as possible)")


@dataclass
class BenchProgress:
    """A snapshot while the bench runs, for a progress bar."""

    published: int
    delivered: int
    expected: int  # deliveries if every event reaches every healthy subscriber
    elapsed: float


class LatencyHistogram:
    """Log-linear histogram of nanosecond values (about 3% bucket width)."""

    _SUB = 5  # 2**5 sub-buckets per power of two

    __slots__ = ("counts", "n", "max")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.n = 0
        self.max = 0

    def clear(self) -> None:
        self.counts.clear()
        self.n = 0
        self.max = 0

    def add(self, ns: int) -> None:
        if ns < 0:
            ns = 0
        shift = ns.bit_length() - self._SUB - 1
        b = ns if shift <= 0 else (shift << self._SUB) + (ns >> shift)
        self.counts[b] = self.counts.get(b, 0) + 1
        self.n += 1
        if ns > self.max:
            self.max = ns

    def _value(self, b: int) -> int:
        if b < 2 << self._SUB:
            return b
        shift = (b >> self._SUB) - 1
        mant = b - (shift << self._SUB)
        return (mant << shift) + (1 << shift) // 2

    def quantile(self, q: float) -> int:
        """The value at quantile q (0..1), 0 when empty."""
        if not self.n:
            return 0
        target = max(1, int(q * self.n + 0.999999))
        seen = 0
        for b in sorted(self.counts):
            seen += self.counts[b]
            if seen >= target:
                return min(self._value(b), self.max)
        return self.max


@dataclass
class BenchResult:
    """The figures of one run; `to_dict()` is the `--json` line."""

    url: str
    embedded: str  # "subprocess", "in-process" or "" for a hub given by URL
    config: BenchConfig
    loop: str
    published: int = 0
    publish_errors: int = 0
    delivered: int = 0
    expected: int = 0
    dropped: int = 0  # healthy subscribers the hub closed
    dropped_codes: dict[str, int] = field(default_factory=dict)
    out_of_order: int = 0
    stalled_closed: int = 0
    stalled_codes: dict[str, int] = field(default_factory=dict)
    publish_s: float = 0.0  # first send to last ack
    deliver_s: float = 0.0  # first send to last receipt
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    timed_out: bool = False
    hub_rss_kb: int | None = None
    hub_cpu_s: float | None = None

    @property
    def completeness(self) -> float:
        return self.delivered / self.expected if self.expected else 1.0

    @property
    def published_per_s(self) -> float:
        return self.published / self.publish_s if self.publish_s > 0 else 0.0

    @property
    def delivered_per_s(self) -> float:
        return self.delivered / self.deliver_s if self.deliver_s > 0 else 0.0

    def latency_ms(self) -> dict[str, float]:
        h = self.latency
        return {
            "p50": round(h.quantile(0.5) / 1e6, 3),
            "p99": round(h.quantile(0.99) / 1e6, 3),
            "max": round(h.max / 1e6, 3),
        }

    def to_dict(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "url": self.url,
            "embedded": self.embedded,
            "loop": self.loop,
            "subs": cfg.subs,
            "pubs": cfg.pubs,
            "events": cfg.events,
            "size": cfg.size,
            "rate": cfg.rate,
            "batch": cfg.batch,
            "keys": cfg.keys,
            "window": cfg.window,
            "stalled": cfg.stalled,
            "published": self.published,
            "publish_errors": self.publish_errors,
            "delivered": self.delivered,
            "expected": self.expected,
            "completeness": round(self.completeness, 6),
            "dropped": self.dropped,
            "dropped_codes": dict(self.dropped_codes),
            "out_of_order": self.out_of_order,
            "stalled_closed": self.stalled_closed,
            "stalled_codes": dict(self.stalled_codes),
            "published_per_s": round(self.published_per_s),
            "delivered_per_s": round(self.delivered_per_s),
            "latency_ms": self.latency_ms(),
            "elapsed_s": round(max(self.publish_s, self.deliver_s), 3),
            "timed_out": self.timed_out,
            "hub_rss_kb": self.hub_rss_kb,
            "hub_cpu_s": self.hub_cpu_s,
        }


# ---------------------------------------------------------------- embedded hub


_READY = re.compile(r"listening on (wss?://\S+)")


class EmbeddedHub:
    """`norn serve --port 0` in a subprocess: `async with EmbeddedHub() as hub: hub.url`."""

    def __init__(self, *, extra_args: tuple[str, ...] = (), env: Mapping[str, str] | None = None) -> None:
        self.extra_args = extra_args
        self.env = env
        self.url = ""
        self.pid = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._drain: asyncio.Task[None] | None = None

    async def __aenter__(self) -> EmbeddedHub:
        env = dict(os.environ if self.env is None else self.env)
        # This package first on the path, so the hub runs the same code as the bench.
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "norn_cli", "serve", "--host", "127.0.0.1", "--port", "0",
            *self.extra_args,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        self.pid = self._proc.pid
        assert self._proc.stderr is not None
        lines: list[str] = []
        try:
            async with asyncio.timeout(20):
                while True:
                    raw = await self._proc.stderr.readline()
                    if not raw:
                        break
                    line = raw.decode(errors="replace").strip()
                    lines.append(line)
                    m = _READY.search(line)
                    if m:
                        self.url = m.group(1)
                        break
        except TimeoutError:
            pass
        if not self.url:
            await self._stop()
            detail = lines[-1] if lines else "no output"
            raise HubUnreachable(f"the embedded hub did not start: {detail}")
        self._drain = asyncio.ensure_future(self._drain_stderr())
        return self

    async def _drain_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        while await self._proc.stderr.readline():
            pass

    async def _stop(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            proc.terminate()
            try:
                async with asyncio.timeout(10):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._drain is not None:
            self._drain.cancel()

    async def __aexit__(self, *exc: object) -> None:
        await self._stop()


def _proc_rss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _proc_cpu_s(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


# ---------------------------------------------------------------- the run


class _Sub:
    """One healthy subscriber's tallies."""

    __slots__ = ("ws", "count", "last_k", "closed_code", "warm")

    def __init__(self, ws: ClientConnection, pubs: int) -> None:
        self.ws = ws
        self.count = 0
        self.last_k = [-1] * pubs
        self.closed_code: int | None = None  # set when the hub closed it during the run
        self.warm = False


class _Run:
    """State shared by the tasks of one run."""

    def __init__(self, cfg: BenchConfig, endpoint: Endpoint, token: str | None) -> None:
        self.cfg = cfg
        self.endpoint = endpoint
        self.token = token
        self.loop = asyncio.get_running_loop()
        self.subs: list[_Sub] = []
        self.stalled: list[ClientConnection] = []
        self.hist = LatencyHistogram()
        self.delivered = 0
        self.out_of_order = 0
        self.published = 0
        self.errors = 0
        self.first_send = 0
        self.last_ack = 0
        self.last_recv = 0
        self.target = -1  # events every subscriber should get, once publishing ended
        self.all_in = asyncio.Event()
        self.warm = asyncio.Event()
        self.stopping = False
        self.pad = "x" * max(0, cfg.size - _PAYLOAD_FIXED)

    # -------------------------------------------------- subscribers

    async def read(self, s: _Sub) -> None:
        hist = self.hist
        clock = time.perf_counter_ns
        try:
            while True:
                data = await s.ws.recv(decode=False)
                now = clock()
                try:
                    payload = loads(data)["payload"]
                    k = payload["k"]
                    p = payload["p"]
                    t = payload["t"]
                except (ValueError, KeyError, TypeError):
                    continue
                if k < 0:
                    if not s.warm:
                        s.warm = True
                        if all(x.warm or x.closed_code is not None for x in self.subs):
                            self.warm.set()
                    continue
                hist.add(now - t)
                if k <= s.last_k[p]:
                    self.out_of_order += 1
                else:
                    s.last_k[p] = k
                s.count += 1
                self.delivered += 1
                self.last_recv = now
                if s.count == self.target:
                    self._check_all_in()
        except ConnectionClosed as exc:
            if not self.stopping:
                s.closed_code = exc.rcvd.code if exc.rcvd is not None else 1006
                self._check_all_in()
                if not self.warm.is_set() and all(x.warm or x.closed_code is not None for x in self.subs):
                    self.warm.set()

    def _check_all_in(self) -> None:
        if self.target >= 0 and all(s.count >= self.target or s.closed_code is not None for s in self.subs):
            self.all_in.set()

    async def connect_subs(self) -> None:
        gate = asyncio.Semaphore(_DIAL_CONCURRENCY)
        url = self.endpoint.ws_url([("app", self.cfg.app)])  # a live hub's other traffic is not ours to count

        async def one() -> _Sub:
            async with gate:
                ws = await open_connection(url, self.endpoint)
            return _Sub(ws, self.cfg.pubs)

        self.subs = list(await asyncio.gather(*(one() for _ in range(self.cfg.subs))))

    async def connect_stalled(self) -> None:
        """Subscribers that never read, on sockets with a tiny receive buffer."""
        host, port = _host_port(self.endpoint)
        for _ in range(self.cfg.stalled):
            infos = await self.loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            family, _, _, _, addr = infos[0]
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _STALLED_RCVBUF)
            sock.setblocking(False)
            try:
                await self.loop.sock_connect(sock, addr)
                ws = await connect(
                    self.endpoint.ws_url([("app", self.cfg.app)]), sock=sock, max_queue=1, ping_interval=None,
                    compression=None, proxy=None, user_agent_header="norn-bench",
                    server_hostname=host if self.endpoint.secure else None,
                )  # fmt: skip
            except (OSError, TimeoutError) as exc:
                sock.close()
                raise HubUnreachable(f"cannot reach the hub at {self.endpoint}: {exc}") from None
            self.stalled.append(ws)

    async def drain_stalled(self) -> dict[str, int]:
        """Read what the hub left each stalled subscriber; the close codes of those it closed."""
        codes: dict[str, int] = {}

        async def one(ws: ClientConnection) -> None:
            try:
                async with asyncio.timeout(_STALLED_DRAIN):
                    while True:
                        await ws.recv(decode=False)
            except ConnectionClosed as exc:
                code = str(exc.rcvd.code if exc.rcvd is not None else 1006)
                codes[code] = codes.get(code, 0) + 1
            except TimeoutError:
                pass  # still open: the hub is holding its backlog

        await asyncio.gather(*(one(ws) for ws in self.stalled))
        return codes

    # -------------------------------------------------- publishers

    def request(self, idx: int, k: int, t: int, pad: str, typ: str) -> str:
        cfg = self.cfg
        key = f',"key":"{_RUN}:{idx}:{{}}"' if cfg.keys else ""
        events = [
            f'{{"type":"{typ}","appId":"{cfg.app}","payload":{{"t":{t},"p":{idx},"k":{j},"pad":"{pad}"}}{key.format(j)}}}'
            for j in range(k, k + cfg.batch)
        ]
        if len(events) == 1:
            return f'{{"op":"publish","event":{events[0]}}}'
        return '{"op":"publish","events":[' + ",".join(events) + "]}"

    async def warm_up(self, api: ClientConnection) -> None:
        """Publish marker events until every subscriber has seen one (10 s at most)."""
        if not self.subs:
            return
        try:
            async with asyncio.timeout(10):
                while not self.warm.is_set():
                    await api.send(_WARM % (self.cfg.app, time.perf_counter_ns()))
                    reply = loads(await api.recv(decode=False))
                    if not reply.get("ok"):
                        raise OperationFailed(f"the hub refused a publish: {reply.get('error')}")
                    try:
                        async with asyncio.timeout(0.5):
                            await self.warm.wait()
                    except TimeoutError:
                        continue
        except TimeoutError:
            pass  # report what we get; cold subscribers lower completeness

    async def publish(self, idx: int, api: ClientConnection, n_events: int) -> None:
        cfg = self.cfg
        clock = time.perf_counter_ns
        n_req = -(-n_events // cfg.batch)
        room = asyncio.Semaphore(cfg.window)
        interval = 0.0
        if cfg.rate:
            interval = cfg.batch * cfg.pubs / cfg.rate
        start = self.loop.time()
        pad = self.pad

        async def sender() -> None:
            for r in range(n_req):
                if interval:
                    delay = start + r * interval - self.loop.time()
                    if delay > 0.001:
                        await asyncio.sleep(delay)
                await room.acquire()
                t = clock()
                if not self.first_send:
                    self.first_send = t
                await api.send(self.request(idx, r * cfg.batch, t, pad, cfg.type))

        task = asyncio.ensure_future(sender())
        try:
            for _ in range(n_req):
                raw = await api.recv(decode=False)
                room.release()
                reply = loads(raw)
                if reply.get("ok"):
                    self.published += len(reply["ids"]) if "ids" in reply else 1
                else:
                    self.errors += 1
                self.last_ack = clock()
            await task
        finally:
            task.cancel()


def _host_port(endpoint: Endpoint) -> tuple[str, int]:
    netloc = endpoint.netloc.rpartition("@")[2]
    if netloc.startswith("["):
        host, _, rest = netloc[1:].partition("]")
        port = rest.lstrip(":")
    else:
        host, _, port = netloc.partition(":")
    return host, int(port) if port else (443 if endpoint.secure else 80)


async def _drive(cfg: BenchConfig, run: _Run, on_progress: Callable[[BenchProgress], None] | None) -> bool:
    """Publish, wait for the deliveries, report progress; True when the run hit its timeout."""
    loop = run.loop
    apis = [
        await open_connection(run.endpoint.api_url, run.endpoint, token=run.token)
        for _ in range(cfg.pubs)
    ]
    readers = [asyncio.ensure_future(run.read(s)) for s in run.subs]
    try:
        await run.warm_up(apis[0])
        run.delivered = 0
        for s in run.subs:
            s.count = 0
        run.hist.clear()
        shares = [cfg.events // cfg.pubs + (1 if i < cfg.events % cfg.pubs else 0) for i in range(cfg.pubs)]
        t0 = loop.time()
        pubs = asyncio.ensure_future(
            asyncio.gather(*(run.publish(i, api, n) for i, (api, n) in enumerate(zip(apis, shares))))
        )
        expected_all = cfg.events * len(run.subs)
        last_total, last_change = -1, t0
        timed_out = False
        while True:
            done = pubs.done()
            if done:
                pubs.result()  # raise what a publisher raised
                if run.target < 0:
                    run.target = run.published
                    run._check_all_in()
            now = loop.time()
            if on_progress is not None:
                on_progress(BenchProgress(run.published, run.delivered, expected_all, now - t0))
            if run.delivered != last_total:
                last_total, last_change = run.delivered, now
            if done and (run.all_in.is_set() or not run.subs or now - last_change > cfg.drain):
                break
            if now - t0 > cfg.timeout:
                timed_out = True
                break
            waiter = asyncio.ensure_future(run.all_in.wait())
            pending: list[asyncio.Future[Any]] = [pubs, waiter]
            await asyncio.wait(pending, timeout=_TICK, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
        if not pubs.done():
            pubs.cancel()
        if on_progress is not None:
            on_progress(BenchProgress(run.published, run.delivered, expected_all, loop.time() - t0))
        return timed_out
    finally:
        run.stopping = True
        for r in readers:
            r.cancel()
        for api in apis:
            await api.close()


async def hub_traffic(url: str, *, token: str | None = None) -> dict[str, int]:
    """A live hub's `status` counts that say it has other users: `published` events and `clients` now."""
    from norn_cli.client.connect import ApiClient

    async with ApiClient(Endpoint.parse(url), token=token) as api:
        status = await api.request({"op": "status"})
    return {name: int(status.get(name) or 0) for name in ("published", "clients")}


async def run_bench(
    cfg: BenchConfig,
    *,
    url: str | None = None,
    token: str | None = None,
    in_process: Callable[[], AbstractAsyncContextManager[str]] | None = None,
    hub_env: Mapping[str, str] | None = None,
    on_progress: Callable[[BenchProgress], None] | None = None,
) -> BenchResult:
    """Run one bench against `url`, or against a hub it starts and stops."""
    cfg.check()
    async with _hub(url, in_process, hub_env) as (hub_url, embedded, pid):
        endpoint = Endpoint.parse(hub_url)
        run = _Run(cfg, endpoint, token)
        loop_name = type(run.loop).__module__.partition(".")[0]
        result = BenchResult(url=endpoint.base, embedded=embedded, config=cfg, loop=loop_name)
        cpu0 = _proc_cpu_s(pid) if pid else None
        try:
            await run.connect_subs()
            await run.connect_stalled()
            result.timed_out = await _drive(cfg, run, on_progress)
            if run.stalled:
                result.stalled_codes = await run.drain_stalled()
                result.stalled_closed = sum(result.stalled_codes.values())
        finally:
            run.stopping = True
            await asyncio.gather(*(s.ws.close() for s in run.subs), *(ws.close() for ws in run.stalled))
        result.published = run.published
        result.publish_errors = run.errors
        result.delivered = run.delivered
        result.expected = run.published * len(run.subs)
        result.out_of_order = run.out_of_order
        for s in run.subs:
            if s.closed_code is not None:
                result.dropped += 1
                code = str(s.closed_code)
                result.dropped_codes[code] = result.dropped_codes.get(code, 0) + 1
        if run.first_send:
            result.publish_s = max(0, run.last_ack - run.first_send) / 1e9
            result.deliver_s = max(0, run.last_recv - run.first_send) / 1e9
        result.latency = run.hist
        if pid:
            result.hub_rss_kb = _proc_rss_kb(pid)
            cpu1 = _proc_cpu_s(pid)
            if cpu0 is not None and cpu1 is not None:
                result.hub_cpu_s = round(cpu1 - cpu0, 2)
        return result


@asynccontextmanager
async def _hub(
    url: str | None, in_process: Callable[[], AbstractAsyncContextManager[str]] | None, env: Mapping[str, str] | None
) -> AsyncIterator[tuple[str, str, int]]:
    """(url, how it is embedded, hub pid for /proc figures or 0)."""
    if url:
        yield url, "", 0
    elif in_process is not None:
        async with in_process() as hub_url:
            yield hub_url, "in-process", 0
    else:
        async with EmbeddedHub(env=env) as hub:
            yield hub.url, "subprocess", hub.pid
