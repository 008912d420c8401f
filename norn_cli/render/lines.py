"""One readable line per event for `norn tail`: time, app, type coloured by family and status,
and the payload fields that matter."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime, tzinfo
from typing import Any

from rich.console import Console
from rich.text import Text

from norn_cli.core.events import dumps
from norn_cli.render.plain import escape_control, first_line, format_duration

__all__ = ["EventLines", "PipeConsole", "event_line", "status_style", "type_style"]

CLOCK_WIDTH = 12
APP_WIDTH = 14
TYPE_WIDTH = 18

FAMILY_STYLES = {
    "deploy": "blue",
    "forge": "magenta",
    "teardown": "cyan",
    "app": "bright_blue",
}
_GOOD = frozenset({"completed", "deployed", "healthy", "ok", "success", "succeeded", "passed", "up"})
_BAD = frozenset({"failed", "failure", "error", "unhealthy", "down", "crashed"})
_BUSY = frozenset({"running", "building", "testing", "queued", "pending", "starting", "deploying"})
_QUIET = frozenset({"skipped", "cancelled", "canceled"})


def status_style(status: str) -> str:
    """The colour for a step or app status; unknown statuses stay plain."""
    s = status.lower()
    if s in _BAD:
        return "bold red"
    if s in _GOOD:
        return "green"
    if s in _BUSY:
        return "yellow"
    if s in _QUIET:
        return "dim"
    return ""


def type_style(etype: str) -> str:
    """The colour for an event type: its outcome when it has one, else its family's."""
    family, _, rest = etype.partition(".")
    outcome = rest.rsplit(".", 1)[-1]
    if outcome == "failed":
        return "bold red"
    if outcome == "completed":
        return "bold green"
    return FAMILY_STYLES.get(family, "")


def _clock(ts: Any, tz: tzinfo | None) -> str:
    if not isinstance(ts, str):
        return "--:--:--.---"
    try:
        when = datetime.fromisoformat(ts.replace("Z", "+00:00")).astimezone(tz)
    except ValueError:
        return escape_control(ts)
    return when.strftime("%H:%M:%S.") + f"{when.microsecond // 1000:03d}"


def _duration(value: Any) -> str | None:
    """A payload's durationMs or responseMs: a number (or numeric text) formatted, other text as given."""
    if isinstance(value, str):
        text = value.strip()
        try:
            return format_duration(float(text))
        except ValueError:  # like "about 3s": shown as published, as the pipeline view does
            return escape_control(text) or None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return format_duration(float(value))
        except OverflowError:  # an integer beyond any float
            return format_duration(math.inf)
    return None


def _text(value: Any) -> str:
    return escape_control(value if isinstance(value, str) else dumps(value).decode())


def _payload_parts(payload: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The fields that matter, as (text, style) pairs, in reading order."""
    parts: list[tuple[str, str]] = []
    step = payload.get("step")
    if isinstance(step, str) and step:
        parts.append((escape_control(step), "bold"))
    status = payload.get("status")
    if isinstance(status, str) and status:
        parts.append((escape_control(status), status_style(status)))
    healthy = payload.get("healthy")
    if isinstance(healthy, bool):
        parts.append(("healthy", "green") if healthy else ("unhealthy", "bold red"))
    for key in ("durationMs", "responseMs"):
        if key in payload:
            shown = _duration(payload[key])
            if shown is not None:
                parts.append((shown, "dim"))
    for key in ("ref", "commitSha", "imageTag"):
        value = payload.get(key)
        if isinstance(value, str) and value:
            parts.append((f"{key}={escape_control(value)}", ""))
    error = payload.get("error")
    if error not in (None, ""):
        text = first_line(error) if isinstance(error, str) else _text(error)
        parts.append((f"error: {escape_control(text)}", "red"))
    output = payload.get("output")
    if isinstance(output, str) and output.strip():
        parts.append((escape_control(first_line(output), program_output=True), "dim"))
    if not parts and payload:
        parts.append((_text(dict(payload)), "dim"))
    return parts


def event_line(envelope: Mapping[str, Any], *, tz: tzinfo | None = None) -> Text:
    """`13:27:16.123 mail-agent     deploy.step        build building 1.2s`."""
    etype = _text(envelope.get("type", "?"))
    app = _text(envelope.get("appId", ""))
    line = Text(no_wrap=True)
    line.append(_clock(envelope.get("ts"), tz).ljust(CLOCK_WIDTH), "dim")
    line.append(" ")
    line.append(app.ljust(APP_WIDTH), "bold")
    line.append(" ")
    line.append(etype.ljust(TYPE_WIDTH), type_style(etype))
    payload = envelope.get("payload")
    parts = _payload_parts(payload) if isinstance(payload, Mapping) else (
        [(_text(payload), "dim")] if payload is not None else []
    )
    for text, style in parts:
        line.append(" ")
        line.append(text, style)
    line.rstrip()
    return line


class PipeConsole(Console):
    """A Console that leaves a closed stdout pipe to the command's bridge.

    rich's own handler exits with status 1; `norn tail | head -1` should end
    quietly with 0, as the bridge does for every command.
    """

    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise BrokenPipeError


class EventLines:
    """Prints events one line each to a console built by the command."""

    def __init__(self, console: Console, *, tz: tzinfo | None = None) -> None:
        self.console = console
        self.tz = tz

    def show(self, envelope: Mapping[str, Any]) -> None:
        self.console.print(event_line(envelope, tz=self.tz), soft_wrap=True)
        self.console.file.flush()
