"""`norn replay` for people: a progress bar on an interactive stderr, nothing otherwise."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = ["replay_progress"]


@contextmanager
def replay_progress(console: Console, total: int) -> Iterator[Callable[[int, int], None] | None]:
    """A callback `(done, total)` drawing a bar while the replay runs; None when the console is not interactive."""
    if not console.is_interactive:
        yield None
        return
    with Progress(
        TextColumn("[bold]replay[/]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task("replay", total=total)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update
