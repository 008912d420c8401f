"""`norn bench`: load a running hub, or one it starts, and print the figures."""

from __future__ import annotations

import os

import click

from norn_cli.cli.common import Duration, NornCommand, Settings, run, with_global_options

__all__ = ["bench"]


@with_global_options("url", "token", "token_file", "verbose", "no_color", help={
    "url": "Bench this running hub (default: start one in a subprocess) [not NORN_URL: only a typed --url benches a live hub].",
})  # fmt: skip
@click.command(cls=NornCommand, exit_codes={0: "measured", 1: "the measured phase failed", 2: "", 3: "", 5: "--timeout passed first"})
@click.option("-s", "--subs", type=click.IntRange(0), default=10, show_default=True, help="Subscribers on /ws.")
@click.option("-p", "--pubs", type=click.IntRange(1), default=1, show_default=True, help="Publishers on /api.")
@click.option("-n", "--events", type=click.IntRange(1), default=10_000, show_default=True, help="Events to publish in all.")
@click.option("-b", "--size", type=click.IntRange(0), default=128, show_default=True, help="Payload bytes per event (about).")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=None, help="Offered events/s over all publishers [default: as fast as acks allow].")
@click.option("--stalled", type=click.IntRange(0), default=0, show_default=True, help="Extra subscribers that never read (the hub should close them, 1013).")
@click.option("--window", type=click.IntRange(1), default=64, show_default=True, help="Unacknowledged requests per publisher.")
@click.option("--keys", is_flag=True, help="Give every event an idempotency key, as norn emit does.")
@click.option("--batch", type=click.IntRange(1), default=1, show_default=True, help="Events per publish request.")
@click.option("--timeout", type=Duration(), default="60s", show_default=True, metavar="DURATION", help="Give up the measured phase after DURATION (10s, 2m; bare number: seconds).")
@click.option("--in-process", is_flag=True, help="Embed the hub in this process (competes with the load for the CPU).")
@click.option("--json", "as_json", is_flag=True, help="One JSON line on stdout instead of the table.")
@click.pass_context
def bench(
    ctx: click.Context,
    subs: int,
    pubs: int,
    events: int,
    size: int,
    rate: float | None,
    stalled: int,
    window: int,
    batch: int,
    keys: bool,
    timeout: float,
    in_process: bool,
    as_json: bool,
) -> None:
    """Measure a hub: publish rate, delivery rate, completeness, drops and latency.

    Without --url (here or before the command) it starts a hub of its own on a
    free port, in a subprocess, and stops it afterwards.

    \b
    Examples:
      norn bench --subs 100 --events 50000
      norn bench --url ws://127.0.0.1:8800 --subs 10 --rate 2000 --stalled 2 --json
    """
    from rich.console import Console

    from norn_cli.cli.embed import embedded_hub
    from norn_cli.client.bench import BenchConfig, run_bench
    from norn_cli.core.events import dumps
    from norn_cli.render.bench import bench_progress, print_summary

    settings: Settings = ctx.obj
    bench_url = settings.url if settings.url_given else None
    cfg = BenchConfig(
        subs=subs, pubs=pubs, events=events, size=size, rate=rate, stalled=stalled,
        window=window, batch=batch, keys=keys, timeout=timeout,
    )  # fmt: skip
    # The embedded hub must not pick up this shell's hub settings (token, broker, port).
    hub_env = {k: v for k, v in os.environ.items() if not k.startswith("NORN_") or k == "NORN_LOOP"}
    err = Console(stderr=True, no_color=settings.no_color)
    with bench_progress(err) as progress:
        result = run(
            run_bench(
                cfg, url=bench_url, token=settings.token, in_process=embedded_hub if in_process else None,
                hub_env=hub_env, on_progress=progress,
            )
        )
    if as_json:
        click.echo(dumps(result.to_dict()).decode())
    else:
        print_summary(result.to_dict(), Console(no_color=settings.no_color))
