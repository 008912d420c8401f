"""A pipeline step as a subprocess: its protocol (output and exit), its bounded output tail, and killing it."""

from __future__ import annotations

import asyncio
import codecs
import os
import signal
from collections import deque
from contextlib import suppress

__all__ = ["LINE_MAX", "OUTPUT_MAX_CHARS", "OutputTail", "StepProtocol", "exit_error", "killpg"]

OUTPUT_MAX_CHARS = 8192  # per output event; older lines are dropped, the tail kept
LINE_MAX = 1000  # characters kept of one output line


class StepProtocol(asyncio.SubprocessProtocol):
    """A step's process: output into a tail buffer, and when the shell exits.

    `exited` resolves when the shell itself exits, even while a background
    process it started still holds the output pipe open (asyncio's own
    `Process.wait()` would wait for the pipe too).
    """

    def __init__(self, tail: OutputTail, loop: asyncio.AbstractEventLoop) -> None:
        self.tail = tail
        self.exited: asyncio.Future[None] = loop.create_future()
        self.eof: asyncio.Future[None] = loop.create_future()

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        self.tail.feed(data if isinstance(data, bytes) else data.encode())

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd == 1 and not self.eof.done():
            self.eof.set_result(None)

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)


class OutputTail:
    """A step's output not yet published: whole lines, bounded, keeping the newest."""

    def __init__(self, max_chars: int = OUTPUT_MAX_CHARS) -> None:
        self.max_chars = max_chars
        self.ready = asyncio.Event()
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._partial = ""
        self._lines: deque[str] = deque()
        self._chars = 0
        self._skipped = 0

    def feed(self, data: bytes) -> None:
        *lines, partial = (self._partial + self._decoder.decode(data)).replace("\r\n", "\n").split("\n")
        cut = partial.rfind("\r", 0, len(partial) - 1)  # a final \r may be half of \r\n
        if cut >= 0:  # a progress bar redrawing its line: keep what a terminal shows
            partial = partial[cut + 1 :]
        if len(partial) > LINE_MAX:
            lines.append(partial)
            partial = ""
        self._partial = partial
        for line in lines:
            self._push(line)

    def _push(self, line: str) -> None:
        if "\r" in line:
            line = line.rstrip("\r").rsplit("\r", 1)[-1]
        if len(line) > LINE_MAX:
            line = line[:LINE_MAX] + "…"
        self._lines.append(line)
        self._chars += len(line) + 1
        while self._chars > self.max_chars and len(self._lines) > 1:
            self._chars -= len(self._lines.popleft()) + 1
            self._skipped += 1
        self.ready.set()

    def take(self, *, final: bool = False) -> list[str]:
        """The lines gathered since the last take (with the unfinished one when `final`)."""
        if final:
            rest = self._partial + self._decoder.decode(b"", final=True)
            self._partial = ""
            if rest:
                self._push(rest)
        lines = list(self._lines)
        if self._skipped:
            lines.insert(0, f"… {self._skipped} lines not shown")
        self._lines.clear()
        self._chars = self._skipped = 0
        self.ready.clear()
        return lines


def exit_error(rc: int | None) -> str | None:
    """Why a step failed, from its shell's exit status; None when it succeeded."""
    if rc == 0:
        return None
    if rc is None:
        return "ended without an exit status"
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit status {rc}"


def killpg(pgid: int | None, sig: signal.Signals) -> None:
    """Signal a step's process group; it may be gone already."""
    if pgid is None:
        return
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
