"""The SQLite broker keeps the event loop and its writer on one CPU; everything else gets every CPU back."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from test_serve_cli import Served

from websockets.asyncio.client import connect

from conftest import TIMEOUT, run_norn
from norn_cli.hub import cpus
from norn_cli.hub.writer import MIN_TARGETS

ALL = frozenset(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else frozenset()
pytestmark = pytest.mark.skipif(
    len(ALL) < 2 or not Path("/proc/thread-self/stat").exists(),
    reason="pinning needs Linux thread affinity and at least two CPUs allowed",
)

TOML = """
[apps.web]
[[apps.web.deploy]]
name = "where"
run = "grep Cpus_allowed_list /proc/self/status > where.txt"
"""


def cpu_list(text: str) -> frozenset[int]:
    """`0-3,6` -> {0, 1, 2, 3, 6}"""
    out: set[int] = set()
    for part in text.strip().split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return frozenset(out)


def thread_cpus(pid: int) -> dict[int, frozenset[int]]:
    """Each thread of a process (by id) and the CPUs it may run on."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                out[int(task.name)] = cpu_list(line.split(":", 1)[1])
    return out


async def test_sqlite_hub_pins_loop_and_writer_and_steps_get_every_cpu(tmp_path: Path) -> None:
    """The loop thread and the writer share one CPU; the fan-out helper has the others; the checkpointer, and a
    deploy step the hub starts, have them all."""
    (tmp_path / "norn.toml").write_text(TOML)
    hub = Served("serve", "--port", "0", "--broker", f"sqlite://{tmp_path}/events.db", "--config", str(tmp_path / "norn.toml"), cwd=tmp_path)
    try:
        threads = thread_cpus(hub.proc.pid)
        loop = threads.pop(hub.proc.pid)
        assert len(loop) == 1 and loop <= ALL
        assert loop in threads.values()  # the writer
        assert ALL in threads.values()  # the checkpointer
        # A group of MIN_TARGETS subscribers or more is written from a helper thread too: it starts then.
        async with contextlib.AsyncExitStack() as stack:
            subs = [await stack.enter_async_context(connect(hub.url + "/ws")) for _ in range(MIN_TARGETS)]
            async with connect(hub.url + "/api") as api:
                await api.send(json.dumps({"op": "publish", "event": {"type": "drill.tick", "appId": "web", "payload": {}}}))
                async with asyncio.timeout(TIMEOUT):
                    reply = json.loads(await api.recv())
                    assert reply["ok"] is True, reply
                    for sub in subs:
                        assert json.loads(await sub.recv())["type"] == "drill.tick"
        started = {tid: cpus for tid, cpus in thread_cpus(hub.proc.pid).items() if tid not in threads and tid != hub.proc.pid}
        assert list(started.values()) == [ALL - loop], (threads, started)
        result = run_norn("--url", hub.url, "deploy", "web", "--quiet")
        assert result.returncode == 0, result.stderr
        assert cpu_list((tmp_path / "where.txt").read_text().split(":", 1)[1]) == ALL
    finally:
        assert hub.stop(signal.SIGTERM)[0] == 0


@pytest.mark.parametrize("how", ["flag", "env", "file"])
def test_no_pin_cpu_leaves_every_thread_to_the_os(tmp_path: Path, how: str) -> None:
    """--no-pin-cpu, NORN_PIN_CPU=0 or `pin_cpu = false` in [serve]: no thread of the hub is pinned."""
    (tmp_path / "norn.toml").write_text("[serve]\npin_cpu = false\n")
    args = ["serve", "--port", "0", "--broker", f"sqlite://{tmp_path}/events.db"]
    env = {}
    if how == "flag":
        args.append("--no-pin-cpu")
    elif how == "env":
        env["NORN_PIN_CPU"] = "0"
    else:
        args += ["--config", str(tmp_path / "norn.toml")]
    hub = Served(*args, **env)
    try:
        assert set(thread_cpus(hub.proc.pid).values()) == {ALL}
    finally:
        assert hub.stop(signal.SIGTERM)[0] == 0


def test_pin_unpin_and_what_inherits() -> None:
    """A pinned thread's children (threads and processes) inherit its CPU unless they ask for every CPU; unpin restores it."""
    seen: dict[str, object] = {}

    def child_cpus() -> frozenset[int]:
        out = subprocess.run(
            [sys.executable, "-c", "import os; print(','.join(map(str, sorted(os.sched_getaffinity(0)))))"],
            capture_output=True, text=True, timeout=TIMEOUT, check=True,
        )  # fmt: skip
        return cpu_list(out.stdout)

    def body() -> None:
        had = cpus.pin_here()
        here = frozenset(os.sched_getaffinity(0))
        seen["had"], seen["here"] = had, here
        seen["process"] = child_cpus()
        with cpus.anywhere():
            seen["process anywhere"] = child_cpus()
        seen["after anywhere"] = frozenset(os.sched_getaffinity(0))
        got: dict[str, frozenset[int]] = {}

        def helper() -> None:
            got["before"] = frozenset(os.sched_getaffinity(0))
            cpus.run_elsewhere()
            got["elsewhere"] = frozenset(os.sched_getaffinity(0))
            cpus.run_anywhere()
            got["after"] = frozenset(os.sched_getaffinity(0))

        t = threading.Thread(target=helper)
        t.start()
        t.join()
        seen["thread"] = got
        cpus.unpin(had)
        seen["unpinned"] = frozenset(os.sched_getaffinity(0))

    t = threading.Thread(target=body)  # not pytest's own thread
    t.start()
    t.join()
    here = seen["here"]
    assert seen["had"] == ALL and isinstance(here, frozenset) and len(here) == 1
    assert seen["process"] == here
    assert seen["process anywhere"] == ALL
    assert seen["after anywhere"] == here
    assert seen["thread"] == {"before": here, "elsewhere": ALL - here, "after": ALL}
    assert seen["unpinned"] == ALL
    assert cpus._everywhere is None and cpus._pinned is None
    cpus.run_elsewhere()  # nothing pinned: nothing changes
    assert frozenset(os.sched_getaffinity(0)) == ALL
