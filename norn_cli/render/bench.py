"""`norn bench` for people: a progress bar on an interactive stderr, and the summary table."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

__all__ = ["bench_progress", "print_summary", "summary_table"]


class BenchProgress(Protocol):
    """A snapshot of a running bench (the client's `BenchProgress`)."""

    published: int
    delivered: int
    expected: int


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


def summary_table(result: Mapping[str, Any]) -> Table:
    """The figures of one run (its `--json` object), one row each."""
    r = result
    rate = f"offered {r['rate']:,.0f} events/s" if r["rate"] else "as fast as acks allow"
    where = f" ({r['embedded']} hub)" if r["embedded"] else ""
    title = (
        f"{r['subs']} subscribers, {r['pubs']} publisher{'s' if r['pubs'] != 1 else ''}, "
        f"{r['events']:,} events of ~{r['size']} B\n{rate}; {r['url']}{where}, {r['loop']} loop"
    )
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("measure")
    table.add_column("value", justify="right")
    lat = r["latency_ms"]
    complete_style = "green" if r["completeness"] >= 1.0 else "red"
    rows: list[tuple[str, str]] = [
        ("published/s (acked)", _count(r["published_per_s"])),
        ("delivered/s", _count(r["delivered_per_s"])),
        (
            "completeness",
            f"[{complete_style}]{r['completeness']:.4f}[/] ({_count(r['delivered'])} of {_count(r['expected'])})",
        ),
        ("healthy subscribers dropped", _drops(r["dropped"], r["dropped_codes"])),
        ("latency p50", f"{lat['p50']:.3f} ms"),
        ("latency p99", f"{lat['p99']:.3f} ms"),
        ("latency max", f"{lat['max']:.3f} ms"),
    ]
    if r["stalled"]:
        closed = _drops(r["stalled_closed"], r["stalled_codes"], of=r["stalled"])
        if r["stalled_closed"] < r["stalled"]:
            closed += " (the rest fit in kernel buffers: send more bytes)"
        rows.append(("stalled subscribers closed", closed))
    if r["publish_errors"]:
        rows.append(("publish errors", f"[red]{r['publish_errors']:,}[/]"))
    if r["out_of_order"]:
        rows.append(("out of order", f"[red]{r['out_of_order']:,}[/]"))
    if r["hub_rss_kb"] is not None:
        rows.append(("hub memory (RSS)", f"{r['hub_rss_kb'] / 1024:,.1f} MiB"))
    if r["hub_cpu_s"] is not None:
        rows.append(("hub CPU", f"{r['hub_cpu_s']:.2f} s"))
    if r["timed_out"]:
        rows.append(("timed out", "[red]yes[/]"))
    for name, value in rows:
        table.add_row(name, value)
    return table


def _drops(n: int, codes: dict[str, int], of: int | None = None) -> str:
    text = f"{n}" if of is None else f"{n} of {of}"
    if codes:
        text += " (" + ", ".join(f"{code} ×{k}" for code, k in sorted(codes.items())) + ")"
    return text


def print_summary(result: Mapping[str, Any], console: Console) -> None:
    """Print the summary table."""
    console.print(summary_table(result))
