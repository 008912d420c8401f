"""The kill drills' shared half: `norn tail --json` subscribers, one `norn emit --stream` fed at a steady rate, and the verdict."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from dataclasses import dataclass, field

from conftest import TIMEOUT, norn_argv, norn_env

Proc = asyncio.subprocess.Process


async def lines(stream: asyncio.StreamReader, into: list[str]) -> None:
    """Collect a process's output lines until it closes the stream."""
    while raw := await stream.readline():
        into.append(raw.decode().rstrip("\n"))


@dataclass
class Piped:
    """A process and the lines it has written so far."""

    proc: Proc
    out: list[str] = field(default_factory=list)
    err: list[str] = field(default_factory=list)
    readers: list[asyncio.Future[None]] = field(default_factory=list)

    def read(self) -> None:
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.readers = [asyncio.ensure_future(lines(self.proc.stdout, self.out)),
                        asyncio.ensure_future(lines(self.proc.stderr, self.err))]  # fmt: skip


async def start_tails(url: str, n: int, count: int, procs: list[Proc]) -> list[Piped]:
    """n `norn -v tail --json --count COUNT --app drill`, each returned once it says it is subscribed."""
    tails = []
    for _ in range(n):
        p = await asyncio.create_subprocess_exec(
            *norn_argv("--url", url, "tail", "-v", "--json", "--count", str(count), "--app", "drill"),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=norn_env(),
        )  # fmt: skip
        procs.append(p)
        tail = Piped(p)
        assert p.stderr is not None
        async with asyncio.timeout(TIMEOUT):  # -v: it says when it is subscribed
            while "subscribed to" not in (line := (await p.stderr.readline()).decode()):
                assert line, "tail ended before it subscribed"
                tail.err.append(line.rstrip("\n"))
        tail.read()
        tails.append(tail)
    return tails


async def start_emit(url: str, procs: list[Proc]) -> Piped:
    """`norn emit --file - --stream --json`, its stdin open for `feed`."""
    p = await asyncio.create_subprocess_exec(
        *norn_argv("--url", url, "emit", "--file", "-", "--stream", "--json"),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=norn_env(),
    )  # fmt: skip
    procs.append(p)
    emit = Piped(p)
    emit.read()
    return emit


async def feed(emit: Piped, events: int, rate: int) -> None:
    """Write `events` drill.tick lines (payload n = 0..events-1) at `rate` a second, then close stdin."""
    stdin = emit.proc.stdin
    assert stdin is not None
    loop = asyncio.get_running_loop()
    start = loop.time()
    chunk = max(1, rate // 20)
    for first in range(0, events, chunk):
        text = "".join(
            json.dumps({"type": "drill.tick", "appId": "drill", "payload": {"n": n}}) + "\n"
            for n in range(first, min(first + chunk, events))
        )
        stdin.write(text.encode())
        await stdin.drain()
        await asyncio.sleep(max(0.0, start + (first + chunk) / rate - loop.time()))  # the steady rate
    stdin.close()


async def finish(emit: Piped, tails: list[Piped], work: Awaitable[object], events: int, rate: int) -> tuple[int, list[int]]:
    """Run `work` (the killer) beside the feeder; then every process's exit code (emit's first)."""
    async with asyncio.timeout(events / rate + TIMEOUT * 4):
        await asyncio.gather(work, feed(emit, events, rate))
        code = await emit.proc.wait()
        await asyncio.gather(*emit.readers)
        return code, [await t.proc.wait() for t in tails]


def verdict(emit: Piped, tails: list[Piped], codes: tuple[int, list[int]], events: int) -> str:
    """Assert emit printed `events` distinct ids and every tail exactly those events, once each, in
    that order; return the counts as one line (duplicates the keys absorbed, reconnects)."""
    code, tail_codes = codes
    assert code == 0, emit.err[-5:]
    replies = [json.loads(line) for line in emit.out]
    ids = [r["id"] for r in replies]
    assert len(ids) == events and len(set(ids)) == events
    for tail, tail_code in zip(tails, tail_codes):
        assert tail_code == 0, tail.err[-5:]
        envs = [json.loads(line) for line in tail.out]
        assert [e["id"] for e in envs] == ids  # exactly these events, each once, in one order
        assert [e["payload"]["n"] for e in envs] == list(range(events))
    duplicates = sum(1 for r in replies if r.get("duplicate"))
    reconnects = sum(1 for line in emit.err if "reconnected to" in line)
    tail_reconnects = [sum(1 for line in t.err if "reconnected to" in line) for t in tails]
    return (
        f"emit: exit {code}, {len(set(ids))} distinct ids, {duplicates} duplicates absorbed by keys, "
        f"{reconnects} reconnects; tails: {[len(t.out) for t in tails]} events each, identical order, "
        f"reconnects {tail_reconnects}"
    )
