"""`norn bench` for people: a progress bar on an interactive stderr, and the summary table."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from norn_cli.bench import BenchProgress, BenchResult

__all__ = ["bench_progress", "print_summary", "summary_table"]


@contextmanager
def bench_progress(console: Console) -> Iterator[Callable[[BenchProgress], None] | None]:
    """A progress callback drawing a bar while the bench runs; None when not interactive."""
    if not console.is_interactive:
        yield None
        return
    with Progress(
        TextColumn("[bold]bench[/]"),
        BarColumn(),
        TextColumn("{task.fields[line]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("bench", total=None, line="connecting")

        def update(p: BenchProgress) -> None:
            line = f"published {p.published:,}  delivered {p.delivered:,}/{p.expected:,}"
            bar.update(task, total=max(p.expected, 1), completed=p.delivered, line=line)

        yield update


def _count(n: float) -> str:
    return f"{n:,.0f}"


def summary_table(result: BenchResult) -> Table:
    """The figures of one run, one row each."""
    cfg = result.config
    rate = f"offered {cfg.rate:,.0f} events/s" if cfg.rate else "as fast as acks allow"
    where = f" ({result.embedded} hub)" if result.embedded else ""
    title = (
        f"{cfg.subs} subscribers, {cfg.pubs} publisher{'s' if cfg.pubs != 1 else ''}, "
        f"{cfg.events:,} events of ~{cfg.size} B\n{rate}; {result.url}{where}, {result.loop} loop"
    )
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("measure")
    table.add_column("value", justify="right")
    lat = result.latency_ms()
    complete_style = "green" if result.completeness >= 1.0 else "red"
    rows: list[tuple[str, str]] = [
        ("published/s (acked)", _count(result.published_per_s)),
        ("delivered/s", _count(result.delivered_per_s)),
        (
            "completeness",
            f"[{complete_style}]{result.completeness:.4f}[/] "
            f"({_count(result.delivered)} of {_count(result.expected)})",
        ),
        ("healthy subscribers dropped", _drops(result.dropped, result.dropped_codes)),
        ("latency p50", f"{lat['p50']:.3f} ms"),
        ("latency p99", f"{lat['p99']:.3f} ms"),
        ("latency max", f"{lat['max']:.3f} ms"),
    ]
    if cfg.stalled:
        closed = _drops(result.stalled_closed, result.stalled_codes, of=cfg.stalled)
        if result.stalled_closed < cfg.stalled:
            closed += " (the rest fit in kernel buffers: send more bytes)"
        rows.append(("stalled subscribers closed", closed))
    if result.publish_errors:
        rows.append(("publish errors", f"[red]{result.publish_errors:,}[/]"))
    if result.out_of_order:
        rows.append(("out of order", f"[red]{result.out_of_order:,}[/]"))
    if result.hub_rss_kb is not None:
        rows.append(("hub memory (RSS)", f"{result.hub_rss_kb / 1024:,.1f} MiB"))
    if result.hub_cpu_s is not None:
        rows.append(("hub CPU", f"{result.hub_cpu_s:.2f} s"))
    if result.timed_out:
        rows.append(("timed out", "[red]yes[/]"))
    for name, value in rows:
        table.add_row(name, value)
    return table


def _drops(n: int, codes: dict[str, int], of: int | None = None) -> str:
    text = f"{n}" if of is None else f"{n} of {of}"
    if codes:
        text += " (" + ", ".join(f"{code} ×{k}" for code, k in sorted(codes.items())) + ")"
    return text


def print_summary(result: BenchResult, console: Console) -> None:
    """Print the summary table."""
    console.print(summary_table(result))
