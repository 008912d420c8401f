"""`norn bench`: load a running hub, or one it starts, and print the figures."""

from __future__ import annotations

import os

import click

from norn_cli.cli.common import Duration, NornCommand, Settings, run, stderr, with_global_options

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
@click.option("--dry-run", is_flag=True, help="Say what the bench would do (which hub, app, how many events) and exit 0, connecting to nothing.")
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
    dry_run: bool,
) -> None:
    """Measure a hub: publish rate, delivery rate, completeness, drops and latency.

    Without --url (here or before the command) it starts a hub of its own on a
    free port, in a subprocess, and stops it afterwards. Against a live hub it
    publishes under an app of its own (bench-<random>) and its subscribers
    follow only that app; it warns first when the hub has other traffic, since
    its events go into that hub's history.

    \b
    Examples:
      norn bench --subs 100 --events 50000
      norn bench --url ws://127.0.0.1:8800 --subs 10 --rate 2000 --stalled 2 --json
      norn bench --url ws://127.0.0.1:8800 --dry-run
    """
    import secrets

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
        app=f"bench-{secrets.token_hex(4)}" if bench_url else "bench",
    )  # fmt: skip
    total = events + 1  # and one warm-up event
    if dry_run:
        where = f"the live hub at {bench_url}" if bench_url else f"a hub of its own ({'in this process' if in_process else 'a subprocess'}, stopped afterwards)"
        click.echo(
            f"norn bench would publish {events:,} {cfg.type} events of about {size} B (plus a warm-up) as app {cfg.app} "
            f"into {where}, from {pubs} publisher{'s' if pubs != 1 else ''} to {subs} subscriber{'s' if subs != 1 else ''}"
            f"{f' and {stalled} stalled ones' if stalled else ''}; nothing was sent"
        )
        return
    if bench_url is not None:
        from norn_cli.client.bench import hub_traffic

        traffic = run(hub_traffic(bench_url, token=settings.token))
        if traffic["published"] or traffic["clients"]:
            stderr(
                f"norn: warning: the hub at {bench_url} has other traffic ({traffic['published']:,} events published, "
                f"{traffic['clients']:,} clients connected); the bench adds about {total:,} events as app {cfg.app} "
                "to its history, which may push out older events"
            )
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
