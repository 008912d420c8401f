"""The live pipeline view: a rich rendering of a RunState, and the three ways to show a run.

- `LiveView` (an interactive terminal): header, one row per step with a
  spinner or ✓/✗ and its duration, the last output lines of the running
  step, an overall progress bar, then a green or red panel.
- `LinesView` (a pipe, CI logs): one plain line per step change.
- `JsonView` (`--json`): the run's envelopes as NDJSON, nothing else on stdout.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from norn_cli.core.events import dumps
from norn_cli.core.run_state import DONE, FAILED, PENDING, SKIPPED, RunState, StepState
from norn_cli.render.plain import escape_control, format_duration
from norn_cli.render.reconnect import ConnectionChange, StatusLine, describe_change

__all__ = [
    "JsonView",
    "LinesView",
    "LiveView",
    "PipelineRenderer",
    "fmt_clock",
    "make_consoles",
    "make_view",
]

OUTPUT_LINES = 4  # output lines shown under a running step
FAILURE_LINES = 10  # output lines of the failing step shown in the live view's final panel
DEFAULT_FAILURE_LINES = 20  # ...and in plain lines (CI logs), unless --lines N
GAP_NOTICE = "the hub no longer retains some events of this run; the view may be incomplete"


def fmt_clock(seconds: float) -> str:
    """0:04, 12:30, 1:02:03."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _step_duration(step: StepState) -> str:
    if step.duration_ms is not None:
        return format_duration(step.duration_ms)
    return escape_control(step.duration_text or "")


def _output(line: str) -> str:
    """A line a step printed for a terminal: its colours and tabs go, other control characters are escaped."""
    return escape_control(line, program_output=True)


def _title(state: RunState) -> str:
    kind = state.kind or "run"
    return f"{kind} of {state.app}" if state.app else kind


def _total(state: RunState, now: float) -> str:
    elapsed = state.elapsed(now)
    return format_duration(elapsed * 1000) if elapsed is not None else "?"


class PipelineRenderer:
    """Turns a RunState into rich renderables; keeps one spinner per step so it animates."""

    def __init__(self, spinner: str = "dots") -> None:
        self.spinner = spinner
        self._spinners: dict[str, Spinner] = {}

    def header(self, state: RunState) -> Text:
        text = Text()
        text.append(escape_control(state.kind or "run"), style="bold")
        text.append(" ")
        text.append(escape_control(state.app or "?"), style="bold cyan")
        if state.ref:
            text.append(f" @ {escape_control(state.ref)}")
        if state.image_tag and state.image_tag != state.ref:
            text.append(f" (image {escape_control(state.image_tag)})")
        if state.run_id:
            text.append(f"  run {escape_control(state.run_id)}", style="dim")
        return text

    def render(self, state: RunState, now: float) -> RenderableType:
        """The whole view at time `now` (epoch seconds, the hub's clock)."""
        width = max((len(escape_control(name)) for name in state.steps), default=0)
        lines: list[RenderableType] = [self.header(state)]
        for step in state.steps.values():
            lines.extend(self._step_lines(step, state, now, width))
        if not state.steps:
            lines.append(Text("· waiting for the first step…", style="dim"))
        lines.append(self._progress(state, now))
        return Group(*lines)

    def _step_lines(self, step: StepState, state: RunState, now: float, width: int) -> list[Text]:
        """One row per step, and the last output lines under a running one."""
        name = escape_control(step.name).ljust(width)
        if step.phase == PENDING:
            return [Text(f"· {name}  pending", style="dim")]
        if step.phase == SKIPPED:
            return [Text(f"- {name}  {escape_control(step.status)}", style="dim")]
        row = Text(no_wrap=True, overflow="ellipsis")
        if step.phase == DONE:
            row.append("✓ ", style="green").append(name).append(f"  {_step_duration(step)}", style="green")
            return [row]
        if step.phase == FAILED:
            row.append("✗ ", style="bold red").append(name, style="red")
            return [row.append(f"  {_step_duration(step)}", style="red")]
        frame = self._spinner(step.name).render(now) if not state.done else Text("?", style="yellow")
        row.append_text(frame if isinstance(frame, Text) else Text(str(frame)))
        row.append(" ").append(name, style="bold")
        info = "" if step.status.lower() == "running" else escape_control(step.status) + " "
        if step.started is not None:
            info += fmt_clock(max(0.0, now - step.started))
        row.append(f"  {info}", style="cyan")
        out = [row]
        for line in list(step.output)[-OUTPUT_LINES:]:
            out.append(Text(f"    │ {_output(line)}", style="dim", no_wrap=True, overflow="ellipsis"))
        return out

    def _spinner(self, name: str) -> Spinner:
        spinner = self._spinners.get(name)
        if spinner is None:
            spinner = self._spinners[name] = Spinner(self.spinner, style="cyan")
        return spinner

    def _progress(self, state: RunState, now: float) -> RenderableType:
        total = len(state.steps)
        finished = state.finished_steps
        style = "red" if state.outcome == "failed" else "green" if state.ok else "cyan"
        bar = ProgressBar(total=max(total, 1), completed=finished if total else 0, complete_style=style, finished_style=style)
        grid = Table.grid(padding=(0, 1), expand=True)
        grid.add_column(ratio=1)
        grid.add_column(justify="right", no_wrap=True)
        elapsed = state.elapsed(now)
        grid.add_row(bar, Text(f"{finished}/{total}  {fmt_clock(elapsed) if elapsed is not None else '-:--'}"))
        return grid

    def outcome(self, state: RunState, now: float) -> Panel | None:
        """The final panel: green with the total time, red with the failing step and error."""
        if state.outcome is None:
            return None
        if state.ok:
            lines = [Text(f"✓ {escape_control(_title(state))} completed in {_total(state, now)}", style="bold green")]
            if state.restarted:
                lines.append(Text("  the app was restarted", style="green"))
            return Panel(Group(*lines), border_style="green", expand=False)
        where = f" at {escape_control(state.failed_step)}" if state.failed_step else ""
        lines = [
            Text(f"✗ {escape_control(_title(state))} failed{where} after {_total(state, now)}", style="bold red"),
            Text(f"  {escape_control(state.error or 'failed')}", style="red"),
        ]
        step = state.steps.get(state.failed_step or "")
        if step is not None:
            for line in list(step.output)[-FAILURE_LINES:]:
                lines.append(Text(f"  │ {_output(line)}", style="dim", no_wrap=True, overflow="ellipsis"))
        return Panel(Group(*lines), border_style="red", expand=False)


class LiveView:
    """An interactive terminal: the run redrawn in place, then the final panel."""

    live = True

    def __init__(self, out: Console, err: Console, *, clock: Callable[[], float] = time.time) -> None:
        self.out = out
        self.err = err
        self.clock = clock
        self.state = RunState()
        self.renderer = PipelineRenderer()
        self._live: Live | None = None
        self._away: str | None = None  # while the hub is away: the status line under the run

    def _frame(self) -> RenderableType:
        frame = self.renderer.render(self.state, self.clock())
        return frame if self._away is None else Group(frame, Text(self._away, style="yellow"))

    def connection(self, change: ConnectionChange) -> None:
        """The hub away: one line in the view, redrawn per attempt; back: that line goes, one notice says so."""
        if change.kind == "back":
            self._away = None
            self.notice(describe_change(change))
        else:
            self._away = describe_change(change)
        self.refresh()

    def start(self) -> None:
        self._live = Live(self._frame(), console=self.out, auto_refresh=False, transient=False)
        self._live.start()

    def apply(self, env: dict[str, Any]) -> None:
        if self.state.apply(env, self.clock()):
            if env.get("type") == "hub.gap":
                self.notice(GAP_NOTICE)
            self.refresh()

    def refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._frame(), refresh=True)

    def notice(self, text: str) -> None:
        self.err.print(Text(escape_control(text), style="yellow"))

    def stop(self) -> None:
        live, self._live = self._live, None
        if live is None:
            return
        live.update(self._frame(), refresh=True)
        live.stop()
        panel = self.renderer.outcome(self.state, self.clock())
        if panel is not None:
            self.out.print(panel)

    def detached(self, hint: str | None) -> None:
        if hint:
            self.err.print(Text(hint))


class _AppendOnly:
    """Views that only ever append: nothing to start, redraw or stop; notices to stderr."""

    live = False
    err: Console
    _status: StatusLine | None = None

    def start(self) -> None:
        pass

    def refresh(self) -> None:
        pass

    def stop(self) -> None:
        self._end_status()

    def connection(self, change: ConnectionChange) -> None:
        """On a terminal stderr one status line redrawn in place; else a line when lost and one when back."""
        if self._status is None:
            self._status = StatusLine(self.err, prefix="")
        self._status.show(change)

    def _end_status(self) -> None:
        if self._status is not None:
            self._status.end()

    def notice(self, text: str) -> None:
        self._end_status()
        self.err.print(Text(escape_control(text)), soft_wrap=True, highlight=False)

    def detached(self, hint: str | None) -> None:
        if hint:
            self.notice(hint)


HEARTBEAT = 30.0  # seconds of silence from a running step before a `still running` line


def _seconds(elapsed: float) -> str:
    """`30s` under a minute (a heartbeat's steady beat), else as format_duration says it."""
    return f"{int(elapsed)}s" if elapsed < 60 else format_duration(elapsed * 1000)


class LinesView(_AppendOnly):
    """Not a terminal (CI): append-only lines: step changes, `step | output` lines, heartbeats of silent steps."""

    refresh_every = 1.0  # how often the caller calls refresh(), for heartbeats

    def __init__(
        self, out: Console, err: Console, *, clock: Callable[[], float] = time.time, quiet: bool = False,
        lines: int = DEFAULT_FAILURE_LINES, heartbeat: float = HEARTBEAT,
    ) -> None:  # fmt: skip
        self.out = out
        self.err = err
        self.clock = clock
        self.quiet = quiet
        self.lines = lines
        self.heartbeat = heartbeat
        self.state = RunState()
        self._said: dict[str, tuple[str, str]] = {}
        self._heard: dict[str, float] = {}  # step -> when we last printed something of it (our clock)
        self._header = False
        self._ended = False

    def refresh(self) -> None:
        """A `NAME: still running, 30s` line for each running step silent for a heartbeat."""
        if self._ended:
            return
        now = self.clock()
        for step in self.state.running():
            heard = self._heard.setdefault(step.name, now)
            if now - heard >= self.heartbeat:
                self._heard[step.name] = now
                since = step.started if step.started is not None else heard
                self._line(f"{escape_control(step.name)}: still running, {_seconds(now - since)}")

    def _line(self, text: str) -> None:
        self._end_status()
        self.out.print(Text(text), soft_wrap=True, highlight=False)

    def apply(self, env: dict[str, Any]) -> None:
        state = self.state
        if not state.apply(env, self.clock()):
            return
        if env.get("type") == "hub.gap":
            self.notice(GAP_NOTICE)
            return
        now = self.clock()
        if not self._header and state.kind is not None:
            self._header = True
            header = PipelineRenderer().header(state).plain
            if str(env.get("type", "")).endswith(".queued"):  # the plan is known
                header += ": " + (", ".join(escape_control(s) for s in state.steps) or "no steps")
            self._line(header)
        for step in state.steps.values():
            said = (step.phase, step.status)
            if step.phase == PENDING or self._said.get(step.name) == said:
                continue
            self._said[step.name] = said
            self._heard[step.name] = now
            self._line(self._describe(step))
        payload = env.get("payload")
        if isinstance(payload, dict) and isinstance(payload.get("output"), str) and isinstance(payload.get("step"), str):
            self._heard[payload["step"]] = now
            if not self.quiet:
                name = escape_control(payload["step"])
                for line in payload["output"].splitlines():
                    self._line(f"{name} | {_output(line)}")
        if state.done and not self._ended:
            self._ended = True
            self._end()

    @staticmethod
    def _describe(step: StepState) -> str:
        text = f"{escape_control(step.name)}: {escape_control(step.status)}"
        if step.phase in (DONE, FAILED) and (step.duration_ms is not None or step.duration_text):
            text += f" in {_step_duration(step)}"
        if step.phase == FAILED and step.error:
            text += f": {escape_control(step.error)}"
        return text

    def _end(self) -> None:
        state = self.state
        total = _total(state, self.clock())
        if state.ok:
            self._line(f"{escape_control(_title(state))} completed in {total}")
            return
        step = state.steps.get(state.failed_step or "")
        if step is not None and self.lines:
            shown = list(step.output)[-self.lines:]
            if shown:
                self._line(f"last {len(shown)} output line{'s' if len(shown) != 1 else ''} of {escape_control(step.name)}:")
            for line in shown:
                self._line(f"  | {_output(line)}")
        where = f" at {escape_control(state.failed_step)}" if state.failed_step else ""
        self._line(f"{escape_control(_title(state))} failed{where} after {total}: {escape_control(state.error or 'failed')}")
        if state.run_id:
            self._line(f"full output: norn watch {escape_control(state.run_id)} --json")


class JsonView(_AppendOnly):
    """`--json`: exactly the run's envelopes, one JSON object per line; notices on stderr."""

    def __init__(self, out: TextIO, err: Console) -> None:
        self.out = out
        self.err = err
        self.state = RunState()

    def apply(self, env: dict[str, Any]) -> None:
        self.out.write(dumps(env).decode() + "\n")
        self.out.flush()
        self.state.apply(env, time.time())


def make_consoles(no_color: bool) -> tuple[Console, Console]:
    """stdout and stderr consoles for one command (rich honours NO_COLOR, FORCE_COLOR, TTY_*)."""
    flag = True if no_color else None
    return Console(no_color=flag, highlight=False), Console(stderr=True, no_color=flag, highlight=False)


def make_view(
    *, json: bool, no_color: bool, stdout: TextIO, quiet: bool = False, lines: int = DEFAULT_FAILURE_LINES
) -> LiveView | LinesView | JsonView:
    """The view that fits where stdout goes: NDJSON, a live terminal view, or plain lines."""
    out, err = make_consoles(no_color)
    if json:
        return JsonView(stdout, err)
    if out.is_interactive:
        return LiveView(out, err)
    return LinesView(out, err, quiet=quiet, lines=lines)
