"""Calm reconnects: one status line redrawn in place on a terminal, one line per change in a pipe."""

from __future__ import annotations

import asyncio
import fcntl
import io
import json
import os
import pty
import re
import struct
import termios
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import TIMEOUT, norn_argv, norn_env
from rich.console import Console
from websockets.asyncio.client import connect
from test_run_state import T0, env
from test_tail_e2e import Norn, procs, publish, step, tail  # noqa: F401 (procs is a fixture)

from norn_cli.client.connect import ConnectionState
from norn_cli.core.events import loads
from norn_cli.hub.brokers.memory import MemoryBroker
from norn_cli.hub.server import HubServer
from norn_cli.render.pipeline_view import LinesView, LiveView
from norn_cli.render.reconnect import StatusLine

HUB = "ws://h:8800"
AWAY = [
    ConnectionState("lost", HUB, "it is shutting down"),
    ConnectionState("retrying", HUB, "connection refused", 1, 0.21),
    ConnectionState("retrying", HUB, "connection refused", 2, 0.43),
    ConnectionState("retrying", HUB, "connection refused", 3, 1.2),
    ConnectionState("back", HUB, attempt=4, resume_after="17-0"),
]
LOST = "lost the hub at ws://h:8800 (it is shutting down); reconnecting"
BACK = "reconnected to ws://h:8800 after 4 attempts, resuming after 17-0"
CLEAR = "\r\x1b[K"


def stderr_console(file: io.StringIO, terminal: bool, width: int = 100) -> Console:
    return Console(file=file, width=width, force_terminal=terminal, force_interactive=terminal, color_system=None)


# ------------------------------------------------------------------ the status line


def test_pipe_gets_one_line_when_lost_and_one_when_back() -> None:
    """Not a terminal: failed attempts print nothing; lost and back are a line each."""
    err = io.StringIO()
    status = StatusLine(stderr_console(err, False))
    for state in AWAY:
        status.show(state)
    status.end()
    assert err.getvalue() == f"norn: {LOST}\nnorn: {BACK}\n"


def test_terminal_redraws_one_line_then_says_back() -> None:
    """A terminal: each change redraws the same line (\\r, clear to end of line); back is one line of its own."""
    err = io.StringIO()
    status = StatusLine(stderr_console(err, True))
    for state in AWAY:
        status.show(state)
    status.end()  # nothing left open: adds nothing
    assert err.getvalue() == (
        f"{CLEAR}norn: {LOST}"
        f"{CLEAR}norn: reconnecting to ws://h:8800 (attempt 1, next in 0.2s): connection refused"
        f"{CLEAR}norn: reconnecting to ws://h:8800 (attempt 2, next in 0.4s): connection refused"
        f"{CLEAR}norn: reconnecting to ws://h:8800 (attempt 3, next in 1.2s): connection refused"
        f"{CLEAR}norn: {BACK}\n"
    )


def test_terminal_status_line_is_cut_to_the_width_and_ended_on_exit() -> None:
    """A status line never wraps (\\r could not redraw it), and one left open ends with a newline."""
    err = io.StringIO()
    status = StatusLine(stderr_console(err, True, width=40))
    status.show(AWAY[3])
    status.end()
    status.end()
    assert err.getvalue() == f"{CLEAR}norn: reconnecting to ws://h:8800 (att…\n"


def test_a_hub_supplied_reason_is_escaped() -> None:
    """The close reason comes from the hub: its control characters cannot move the cursor."""
    err = io.StringIO()
    StatusLine(stderr_console(err, False)).show(ConnectionState("lost", HUB, "it closed the connection (4000 \x1b[2Jhi)"))
    assert err.getvalue() == "norn: lost the hub at ws://h:8800 (it closed the connection (4000 \\e[2Jhi)); reconnecting\n"


# ------------------------------------------------------------------ the run views


def test_lines_view_in_a_pipe_says_lost_and_back_once() -> None:
    """`norn deploy` in CI: the same two lines as tail (without the `norn: ` of a command's own notices)."""
    out, err = io.StringIO(), io.StringIO()
    view = LinesView(stderr_console(out, False), stderr_console(err, False))
    for state in AWAY:
        view.connection(state)
    view.stop()
    assert (out.getvalue(), err.getvalue()) == ("", f"{LOST}\n{BACK}\n")


def test_lines_view_with_stderr_on_a_terminal_redraws_in_place() -> None:
    """stdout piped, stderr a terminal: the status line is redrawn, and ended before anything else prints."""
    out, err = io.StringIO(), io.StringIO()
    view = LinesView(stderr_console(out, False), stderr_console(err, True))
    for state in AWAY[:2]:
        view.connection(state)
    view.notice("nothing for 60 s; still waiting")
    assert err.getvalue() == (
        f"{CLEAR}{LOST}{CLEAR}reconnecting to ws://h:8800 (attempt 1, next in 0.2s): connection refused\n"
        "nothing for 60 s; still waiting\n"
    )


def test_live_view_shows_the_status_in_the_frame_then_one_notice() -> None:
    """The live view: the status is a line of the view, redrawn per attempt; back, it goes and one notice says so."""
    out, err = io.StringIO(), io.StringIO()
    view = LiveView(stderr_console(out, True), stderr_console(err, False), clock=lambda: T0 + 1)
    view.start()
    view.apply(env("deploy.step", {"step": "build", "status": "running", "runId": "r1"}, T0))
    for state in AWAY[:4]:
        view.connection(state)
    frame = view._frame()
    shown = stderr_console(io.StringIO(), False)
    with shown.capture() as cap:
        shown.print(frame)
    assert cap.get().splitlines()[-1] == "reconnecting to ws://h:8800 (attempt 3, next in 1.2s): connection refused"
    view.connection(AWAY[4])
    with shown.capture() as cap:
        shown.print(view._frame())
    assert "reconnect" not in cap.get()
    view.stop()
    assert err.getvalue() == f"{BACK}\n"


# ------------------------------------------------------------------ norn tail against a hub that restarts


@pytest.fixture
async def restartable() -> AsyncIterator[list[HubServer]]:
    """Hubs a test starts (on one port, sharing one broker), closed when it ends."""
    hubs: list[HubServer] = []
    yield hubs
    for h in hubs:
        await h.close()


async def start_hub(hubs: list[HubServer], broker: MemoryBroker, port: int = 0) -> HubServer:
    h = HubServer(host="127.0.0.1", port=port, broker=broker)
    await h.start()
    hubs.append(h)
    return h


async def test_tail_in_a_pipe_prints_one_line_per_state_change(restartable: list[HubServer], procs: list[Norn]) -> None:
    """stderr a pipe: the hub stopped and restarted on its port gives exactly two lines, lost and back."""
    broker = MemoryBroker(100)
    hub1 = await start_hub(restartable, broker)
    t = await tail(procs, hub1.url, "--json", "--count", "2")
    [first] = await publish(hub1.url, step("a", "one"))
    assert loads(await t.line())["id"] == first
    await hub1.close()
    lost = await t.stderr_until("lost the hub")
    hub2 = await start_hub(restartable, broker, hub1.port)
    back = await t.stderr_until("reconnected")
    [second] = await publish(hub2.url, step("a", "two"))
    assert loads(await t.line())["id"] == second
    code, rest, err = await t.finish()
    assert (code, rest) == (0, "")
    assert t.errors == [
        f"norn: subscribed to {hub1.url}/ws",
        f"norn: lost the hub at {hub1.url} (it is shutting down); reconnecting",
        back,
        f"norn: subscribed to {hub1.url}/ws?since={first}",
    ]
    assert re.fullmatch(rf"norn: reconnected to {re.escape(hub1.url)} after \d+ attempts?, resuming after {first}", back)


class PtyOutput:
    """What a subprocess writes to a pseudo-terminal, awaited under a timeout."""

    def __init__(self, master: int) -> None:
        self.master = master
        self.data = b""
        self.closed = False
        self.changed = asyncio.Event()
        os.set_blocking(master, False)
        asyncio.get_running_loop().add_reader(master, self._read)

    def _read(self) -> None:
        try:
            chunk = os.read(self.master, 65536)
        except BlockingIOError:
            return
        except OSError:  # EIO: every slave end closed
            chunk = b""
        if not chunk:
            self.closed = True
            asyncio.get_running_loop().remove_reader(self.master)
        self.data += chunk
        self.changed.set()

    @property
    def text(self) -> str:
        return self.data.decode()

    async def until(self, pattern: str) -> None:
        """Wait until the output so far matches `pattern` (a regex, searched)."""
        async with asyncio.timeout(TIMEOUT):
            while not re.search(pattern, self.text):
                assert not self.closed, f"the terminal closed before {pattern!r}; it shows {self.text!r}"
                self.changed.clear()
                await self.changed.wait()

    async def to_end(self) -> None:
        async with asyncio.timeout(TIMEOUT):
            while not self.closed:
                self.changed.clear()
                await self.changed.wait()


async def test_tail_on_a_terminal_redraws_one_status_line(restartable: list[HubServer]) -> None:
    """stderr a terminal: the attempts redraw one line in place (\\r, clear to end of line), then one `reconnected` line."""
    broker = MemoryBroker(100)
    hub1 = await start_hub(restartable, broker)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    proc = await asyncio.create_subprocess_exec(
        *norn_argv("-v", "--url", hub1.url, "tail", "--json", "--count", "2"),
        stdout=asyncio.subprocess.PIPE, stderr=slave, env=norn_env(TERM="xterm", COLUMNS="200"),
    )  # fmt: skip
    os.close(slave)
    screen = PtyOutput(master)
    t = Norn(proc)
    try:
        await screen.until("subscribed to ")
        [first] = await publish(hub1.url, step("a", "one"))
        assert loads(await t.line())["id"] == first
        await hub1.close()
        await screen.until(r"\(attempt 2, ")
        hub2 = await start_hub(restartable, broker, hub1.port)
        await screen.until(r"reconnected to [^\n]*\n[^\n]*subscribed to [^\n]*\n")
        [second] = await publish(hub2.url, step("a", "two"))
        assert loads(await t.line())["id"] == second
        async with asyncio.timeout(TIMEOUT):
            rest = (await proc.communicate())[0].decode()
        code = proc.returncode
        await screen.to_end()
    finally:
        t.stop()
        asyncio.get_running_loop().remove_reader(master)
        os.close(master)
    assert (code, rest) == (0, "")
    hub = re.escape(hub1.url)
    redraws = (
        rf"\r\x1b\[Knorn: lost the hub at {hub} \(it is shutting down\); reconnecting"
        rf"((?:\r\x1b\[Knorn: reconnecting to {hub} \(attempt \d+, next in \d+\.\ds\): connection refused)+)"
    )
    shown = re.fullmatch(
        rf"norn: subscribed to {hub}/ws\r\n"
        + redraws
        + rf"\r\x1b\[Knorn: reconnected to {hub} after (\d+) attempts, resuming after {first}\r\n"
        rf"norn: subscribed to {hub}/ws\?since={first}\r\n",
        screen.text,
    )
    assert shown is not None, screen.text
    attempts = [int(n) for n in re.findall(r"attempt (\d+),", shown[1])]
    assert attempts == list(range(1, len(attempts) + 1)) and len(attempts) >= 2
    assert int(shown[2]) == len(attempts) + 1
    assert screen.text.count("reconnected") == 1


# ------------------------------------------------------------------ publishers: emit and replay


async def finished_lost_then_back(p: Norn, hub: str, count: str) -> None:
    """The publisher exits 0 with nothing more on stdout, and its stderr is exactly: lost, back, `count`."""
    code, rest, _ = await p.finish()
    assert (code, rest) == (0, "")
    assert len(p.errors) == 3, p.errors
    assert p.errors[0] == f"norn: lost the hub at {hub} (it is shutting down); reconnecting"
    assert re.fullmatch(rf"norn: reconnected to {re.escape(hub)} after \d+ attempts?", p.errors[1])
    assert p.errors[2] == count


async def test_emit_in_a_pipe_prints_one_line_when_lost_and_one_when_back(
    restartable: list[HubServer], procs: list[Norn]  # noqa: F811 (procs is a fixture)
) -> None:
    """`norn emit --stream` with the hub stopped between two lines and restarted on its port: stderr gets exactly
    lost, back and the count, and each event is published once."""
    broker = MemoryBroker(100)
    hub1 = await start_hub(restartable, broker)
    proc = await asyncio.create_subprocess_exec(
        *norn_argv("--url", hub1.url, "emit", "--file", "-", "--stream"),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=norn_env(),
    )  # fmt: skip
    e = Norn(proc)
    procs.append(e)
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(step("a", "one")).encode() + b"\n")
    first = await e.line()
    await hub1.close()
    proc.stdin.write(json.dumps(step("a", "two")).encode() + b"\n")
    await e.stderr_until("lost the hub")
    hub2 = await start_hub(restartable, broker, hub1.port)
    second = await e.line()
    proc.stdin.close()
    await finished_lost_then_back(e, hub1.url, f"norn: published 2 events to {hub1.url} (0 already published, 1 reconnects)")
    assert (hub1.hub.published, hub2.hub.published) == (1, 1)
    assert hub2.status()["lastId"] == second != first


async def test_replay_in_a_pipe_prints_one_line_when_lost_and_one_when_back(
    restartable: list[HubServer], procs: list[Norn], tmp_path: Path  # noqa: F811 (procs is a fixture)
) -> None:
    """`norn replay` with the hub stopped in the 5 s the recording waits between its two events: stderr gets
    exactly lost, back and the count."""
    broker = MemoryBroker(100)
    hub1 = await start_hub(restartable, broker)
    recording = tmp_path / "session.ndjson"
    recording.write_text(
        json.dumps({**step("a", "one"), "id": "1-0", "ts": "2026-11-27T10:00:00.000Z"}) + "\n"
        + json.dumps({**step("a", "two"), "id": "2-0", "ts": "2026-11-27T10:00:05.000Z"}) + "\n"
    )  # fmt: skip
    async with connect(f"{hub1.url}/ws") as sub:
        r = await Norn.start("--url", hub1.url, "replay", str(recording))
        procs.append(r)
        async with asyncio.timeout(TIMEOUT):
            assert loads(await sub.recv())["payload"]["step"] == "one"
    await hub1.close()  # the replay waits 5 s before the second event
    await r.stderr_until("lost the hub")
    hub2 = await start_hub(restartable, broker, hub1.port)
    await finished_lost_then_back(r, hub1.url, f"norn: replayed 2 events from {recording} to {hub1.url}")
    assert (hub1.hub.published, hub2.hub.published) == (1, 1)
