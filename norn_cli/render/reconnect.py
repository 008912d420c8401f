"""How a subscription's reconnects read on stderr: one status line redrawn in place on a terminal,
one line per change (lost, back) in a pipe, so a CI log gets two lines however long the hub is away."""

from __future__ import annotations

from typing import Protocol

from rich.cells import cell_len, set_cell_size
from rich.console import Console

from norn_cli.render.plain import escape_control

__all__ = ["ConnectionChange", "StatusLine", "describe_change"]

REDRAW = "\r\x1b[K"  # back to column 0, clear to the end of the line


class ConnectionChange(Protocol):
    """What `client.connect.ConnectionState` carries (render does not import the client)."""

    @property
    def kind(self) -> str: ...
    @property
    def hub(self) -> str: ...
    @property
    def reason(self) -> str: ...
    @property
    def attempt(self) -> int: ...
    @property
    def delay(self) -> float: ...
    @property
    def resume_after(self) -> str | None: ...


def describe_change(change: ConnectionChange) -> str:
    """One sentence for a change, control characters escaped (the reason may come from the hub)."""
    if change.kind == "lost":
        text = f"lost the hub at {change.hub} ({change.reason}); reconnecting"
    elif change.kind == "retrying":
        text = f"reconnecting to {change.hub} (attempt {change.attempt}, next in {change.delay:.1f}s): {change.reason}"
    else:
        attempts = f"{change.attempt} attempt{'' if change.attempt == 1 else 's'}"
        text = f"reconnected to {change.hub} after {attempts}"
        if change.resume_after:
            text += f", resuming after {change.resume_after}"
    return escape_control(text)


class StatusLine:
    """Connection changes on a stderr console.

    Interactive (rich's `is_interactive`: a TTY, honouring TTY_INTERACTIVE and
    TERM=dumb): `lost` and each `retrying` redraw one line in place, `back`
    replaces it with a line of its own. Otherwise one line for `lost` and one
    for `back`; failed attempts print nothing. Anything else written to the
    terminal meanwhile should call `end()` first, so it starts on a line of its own.
    """

    def __init__(self, console: Console, *, prefix: str = "norn: ") -> None:
        self.console = console
        self.prefix = prefix
        self.interactive = console.is_interactive
        self._open = False  # a status line is on screen without its newline

    def show(self, change: ConnectionChange) -> None:
        text = self.prefix + describe_change(change)
        if not self.interactive:
            if change.kind != "retrying":
                self._write(text + "\n")
            return
        if change.kind == "back":
            self._write(REDRAW + text + "\n")
            self._open = False
            return
        self._write(REDRAW + self._fit(text))
        self._open = True

    def end(self) -> None:
        """Finish a status line left on screen (the last state stays visible)."""
        if self._open:
            self._open = False
            self._write("\n")

    def _fit(self, text: str) -> str:
        """Cut to the width: a line that wrapped could not be redrawn with `\\r`."""
        width = self.console.width - 1
        if cell_len(text) <= width:
            return text
        return set_cell_size(text, max(width - 1, 0)) + "…"

    def _write(self, text: str) -> None:
        try:
            self.console.file.write(text)
            self.console.file.flush()
        except (OSError, ValueError):  # stderr gone: nowhere to say so
            pass
