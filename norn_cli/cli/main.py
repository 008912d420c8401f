"""The `norn` command line: Click adapters that parse, call one library function and render."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from norn_cli import __version__
from norn_cli.core.errors import EXIT_CODE_HELP, ExitCode, NornError

if TYPE_CHECKING:  # asyncio and friends load only when a command needs them
    import asyncio

    from norn_cli.client.connect import Endpoint, Frame

__all__ = ["main", "norn"]

T = TypeVar("T")

_EXIT_CODES_HELP = "\b\nExit codes:\n" + "\n".join(
    f"  {int(code):<4} {text}" for code, text in EXIT_CODE_HELP.items()
)


@dataclass
class Settings:
    """Global options, resolved: flag > environment > default."""

    url: str
    token: str | None
    cafile: str | None
    verbose: int
    no_color: bool


def _stderr(message: str) -> None:
    click.echo(message, err=True)


def _fail(message: str, code: int) -> NoReturn:
    _stderr(f"norn: {message}")
    sys.exit(code)


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (NORN_LOOP=asyncio to opt out), else asyncio's own."""
    import asyncio

    if os.environ.get("NORN_LOOP", "").lower() != "asyncio":
        try:
            import uvloop

            return uvloop.new_event_loop()
        except ImportError:
            pass
    return asyncio.new_event_loop()


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """The one bridge from sync to async: errors to exit codes, Ctrl-C to 130,
    a closed stdout pipe to a quiet exit."""
    import asyncio

    try:
        with asyncio.Runner(loop_factory=_new_loop) as runner:
            return runner.run(coro)
    except NornError as exc:
        _fail(exc.message, int(exc.exit_code))
    except KeyboardInterrupt:
        _stderr("norn: interrupted")
        sys.exit(int(ExitCode.INTERRUPTED))
    except BrokenPipeError:
        # `norn tail --json | head -1`: the reader left; end quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(int(ExitCode.OK))


def _setup_logging(verbose: int) -> None:
    import logging

    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("norn")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=_EXIT_CODES_HELP,
)
@click.option(
    "--url", envvar="NORN_URL", default="ws://localhost:8800", show_default=True, metavar="URL",
    help="The hub: ws(s):// or http(s)://, with or without a path [env NORN_URL].",
)  # fmt: skip
@click.option("--token", envvar="NORN_TOKEN", default=None, help="Bearer token for /api [env NORN_TOKEN].")
@click.option(
    "--cafile", type=click.Path(exists=True, dir_okay=False), default=None,
    help="CA bundle to trust for wss:// (a private CA).",
)  # fmt: skip
@click.option("-v", "--verbose", count=True, help="Log more to stderr (repeat for debug).")
@click.option("--no-color", is_flag=True, help="No colours (also when NO_COLOR is set and not empty).")
@click.version_option(__version__, "--version", prog_name="norn")
@click.pass_context
def norn(ctx: click.Context, url: str, token: str | None, cafile: str | None, verbose: int, no_color: bool) -> None:
    """A real-time event hub and its clients.

    \b
    norn serve                                  run the hub on 127.0.0.1:8800
    norn tail --app mail-agent                  stream events
    norn emit deploy.step --app mail-agent -p step=build -p status=building
    """
    _setup_logging(verbose)
    # NO_COLOR is any non-empty value (no-color.org), not a Click boolean.
    no_color = no_color or bool(os.environ.get("NO_COLOR"))
    ctx.obj = Settings(url=url, token=token or None, cafile=cafile, verbose=verbose, no_color=no_color)


# ---------------------------------------------------------------- bench (issue 5)


@norn.command()
@click.option("--url", "bench_url", default=None, metavar="URL", help="Bench this running hub (default: start one in a subprocess).")
@click.option("-s", "--subs", type=click.IntRange(0), default=10, show_default=True, help="Subscribers on /ws.")
@click.option("-p", "--pubs", type=click.IntRange(1), default=1, show_default=True, help="Publishers on /api.")
@click.option("-n", "--events", type=click.IntRange(1), default=10_000, show_default=True, help="Events to publish in all.")
@click.option("-b", "--size", type=click.IntRange(0), default=128, show_default=True, help="Payload bytes per event (about).")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=None, help="Offered events/s over all publishers [default: as fast as acks allow].")
@click.option("--stalled", type=click.IntRange(0), default=0, show_default=True, help="Extra subscribers that never read (the hub should close them, 1013).")
@click.option("--window", type=click.IntRange(1), default=64, show_default=True, help="Unacknowledged requests per publisher.")
@click.option("--batch", type=click.IntRange(1), default=1, show_default=True, help="Events per publish request.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=60.0, show_default=True, help="Give up the measured phase after this many seconds.")
@click.option("--in-process", is_flag=True, help="Embed the hub in this process (competes with the load for the CPU).")
@click.option("--json", "as_json", is_flag=True, help="One JSON line on stdout instead of the table.")
@click.pass_context
def bench(
    ctx: click.Context,
    bench_url: str | None,
    subs: int,
    pubs: int,
    events: int,
    size: int,
    rate: float | None,
    stalled: int,
    window: int,
    batch: int,
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
    parent = ctx.parent
    if bench_url is None and parent is not None:
        if parent.get_parameter_source("url") is click.core.ParameterSource.COMMANDLINE:
            bench_url = settings.url
    cfg = BenchConfig(
        subs=subs, pubs=pubs, events=events, size=size, rate=rate, stalled=stalled,
        window=window, batch=batch, timeout=timeout,
    )  # fmt: skip
    # The embedded hub must not pick up this shell's hub settings (token, broker, port).
    hub_env = {k: v for k, v in os.environ.items() if not k.startswith("NORN_") or k == "NORN_LOOP"}
    err = Console(stderr=True, no_color=settings.no_color)
    with bench_progress(err) as progress:
        result = _run(
            run_bench(
                cfg, url=bench_url, token=settings.token, in_process=embedded_hub if in_process else None,
                hub_env=hub_env, on_progress=progress,
            )
        )
    if as_json:
        click.echo(dumps(result.to_dict()).decode())
    else:
        print_summary(result.to_dict(), Console(no_color=settings.no_color))


@norn.command()
@click.option("--host", envvar="NORN_HOST", default="127.0.0.1", show_default=True, help="Address to bind [env NORN_HOST].")
@click.option("--port", envvar="NORN_PORT", type=click.IntRange(0, 65535), default=8800, show_default=True, help="Port (0: any free port) [env NORN_PORT].")
@click.option("--token", "serve_token", envvar="NORN_TOKEN", default=None, help="Require this bearer token on /api [env NORN_TOKEN].")
@click.option(
    "--allowed-origin", "allowed_origins", multiple=True, metavar="ORIGIN",
    help="A browser origin allowed besides localhost (repeatable) [env NORN_ALLOWED_ORIGINS, comma-separated].",
)  # fmt: skip
@click.option("--history", type=click.IntRange(0), default=10_000, show_default=True, envvar="NORN_HISTORY", help="Events retained for since/last replay.")
@click.option("--queue-size", type=click.IntRange(1), default=64, show_default=True, envvar="NORN_QUEUE_SIZE", help="Per-subscriber send queue, in events.")
@click.option(
    "--fanout-threads", type=click.IntRange(0, 16), default=None, envvar="NORN_FANOUT_THREADS", metavar="N",
    help="Threads besides the event loop writing events to subscribers (default: 1 with two or more CPUs, else 0).",
)  # fmt: skip
@click.option("--broker", envvar="NORN_BROKER", default=None, metavar="URL", help="memory (default) or redis://HOST:PORT/DB [env NORN_BROKER].")
@click.option("--redis-stream", envvar="NORN_REDIS_STREAM", default="norn:events", show_default=True, metavar="KEY", help="The Redis stream hubs share [env NORN_REDIS_STREAM].")
@click.option("--certfile", type=click.Path(exists=True, dir_okay=False), default=None, help="TLS certificate (serves wss://).")
@click.option("--keyfile", type=click.Path(exists=True, dir_okay=False), default=None, help="TLS private key.")
@click.option(
    "--config", "config_path", envvar="NORN_CONFIG", type=click.Path(dir_okay=False), default=None,
    help="[serve] settings and the apps' pipelines (default: ./norn.toml when present) [env NORN_CONFIG].",
)  # fmt: skip
@click.option("--ui/--no-ui", default=True, show_default=True, envvar="NORN_UI", help="The live dashboard at GET / [env NORN_UI].")
@click.pass_obj
def serve(
    settings: Settings,
    host: str,
    port: int,
    serve_token: str | None,
    allowed_origins: tuple[str, ...],
    history: int,
    queue_size: int,
    fanout_threads: int | None,
    broker: str | None,
    redis_stream: str,
    certfile: str | None,
    keyfile: str | None,
    config_path: str | None,
    ui: bool,
) -> None:
    """Run the hub: /ws to subscribe, /api to publish, /healthz, /metrics, a dashboard at /.

    \b
    Example:
      norn serve --port 8800 --allowed-origin https://norn.example.com
      norn serve --config deploy/norn.toml      # apps norn deploy/forge/teardown can run
      norn serve --broker redis://10.0.0.5:6379/0 --host 0.0.0.0 --token "$TOKEN"
    """
    from pathlib import Path

    from norn_cli.hub import server
    from norn_cli.hub.brokers import open_broker
    from norn_cli.core.config import find_config, load_config
    from norn_cli.core.origin import parse_origins
    from norn_cli.hub.pipeline.runner import attach_runner

    try:  # a bad file stops us here, before anything listens
        config = load_config(find_config(config_path, Path.cwd()))
    except NornError as exc:
        _fail(exc.message, int(exc.exit_code))
    o = _serve_settings(click.get_current_context(), config.serve)
    env_origins = os.environ.get("NORN_ALLOWED_ORIGINS", "")
    origins = parse_origins([*allowed_origins, env_origins] if allowed_origins or env_origins else o["allowed_origins"])
    if o["keyfile"] and not o["certfile"]:
        raise click.UsageError("--keyfile needs --certfile")
    try:
        the_broker = open_broker(o["broker"], history=o["history"], stream=o["redis_stream"])
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--broker") from None

    async def run() -> None:
        ssl_context = server.tls_context(o["certfile"], o["keyfile"]) if o["certfile"] else None
        srv = server.HubServer(
            host=o["host"], port=o["port"], broker=the_broker, token=o["serve_token"] or settings.token,
            allowed_origins=origins, queue_size=o["queue_size"], history=o["history"], ssl_context=ssl_context,
            fanout_threads=o["fanout_threads"], ui=o["ui"],
        )  # fmt: skip
        runner = attach_runner(srv, config)

        def started(srv: server.HubServer) -> None:
            runner.start()
            _stderr(
                f"norn hub listening on {srv.url} (subscribe: {srv.url}/ws, publish: {srv.url}/api, "
                f"broker: {srv.broker.name}); Ctrl-C to stop"
            )
            if srv.broker.problem is not None:
                _stderr(f"norn: warning: {srv.broker.problem}; serving anyway, /healthz answers 503 until it does")
            if config.apps:
                _stderr(f"pipelines of {', '.join(sorted(config.apps))} from {config.path}")
            if srv.ui:
                _stderr(f"dashboard: {srv.url.replace('ws', 'http', 1)}/")

        await server.run_until_signalled(srv, started)

    _run(run())


def _serve_settings(ctx: click.Context, from_file: Mapping[str, Any]) -> dict[str, Any]:
    """serve's options, with `[serve]` from norn.toml filling those no flag or NORN_* variable set."""
    from click.core import ParameterSource

    out = dict(ctx.params)
    for key, value in from_file.items():
        name = "serve_token" if key == "token" else key
        if ctx.get_parameter_source(name) is ParameterSource.DEFAULT:
            out[name] = value
    return out


# ---------------------------------------------------------------- pipelines


def _run_options(f: Any) -> Any:
    """--attach and --json, spelled the same on every pipeline command."""
    f = click.option("--json", "as_json", is_flag=True, help="The run's events as NDJSON on stdout, nothing else.")(f)
    return click.option("--attach", is_flag=True, help="Watch the app's latest run of this kind instead of starting one.")(f)


def _show_run(settings: Settings, request: dict[str, Any] | None, as_json: bool, *,
              attach: bool = False, run_id: str | None = None) -> NoReturn:  # fmt: skip
    """Start (or find) a run, show it live, exit 0 when it completed and 1 when it failed."""
    from norn_cli.client import watch
    from norn_cli.render.pipeline_view import make_view

    view = make_view(json=as_json, no_color=settings.no_color, stdout=sys.stdout)
    token, cafile = settings.token, settings.cafile
    if request is None:
        assert run_id is not None
        state = _run(watch.watch(settings.url, run_id, view, token=token, cafile=cafile))
    else:
        request = {k: v for k, v in request.items() if v is not None}
        state = _run(watch.follow(settings.url, request, view, attach=attach, token=token, cafile=cafile))
    sys.exit(int(ExitCode.OK if state.ok else ExitCode.FAILED))


@norn.command()
@click.argument("app")
@click.argument("ref", required=False)
@_run_options
@click.pass_obj
def deploy(settings: Settings, app: str, ref: str | None, attach: bool, as_json: bool) -> None:
    """Deploy APP at REF (default: the app's configured ref, else HEAD) and watch it live.

    \b
    Example:
      norn deploy mail-agent 3f2a9c1
    """
    _show_run(settings, {"op": "deploy", "app": app, "ref": ref}, as_json, attach=attach)


@norn.command()
@click.argument("app")
@click.argument("ref", required=False)
@_run_options
@click.pass_obj
def forge(settings: Settings, app: str, ref: str | None, attach: bool, as_json: bool) -> None:
    """Run APP's forge steps (set it up) and watch them live.

    \b
    Example:
      norn forge mail-agent
    """
    _show_run(settings, {"op": "forge", "app": app, "ref": ref}, as_json, attach=attach)


@norn.command()
@click.argument("app")
@_run_options
@click.pass_obj
def teardown(settings: Settings, app: str, attach: bool, as_json: bool) -> None:
    """Run APP's teardown steps and watch them live.

    \b
    Example:
      norn teardown mail-agent
    """
    _show_run(settings, {"op": "teardown", "app": app}, as_json, attach=attach)


@norn.command()
@click.argument("app")
@_run_options
@click.pass_obj
def restart(settings: Settings, app: str, attach: bool, as_json: bool) -> None:
    """Restart APP (its restart steps, if any) and announce app.restarted.

    \b
    Example:
      norn restart mail-agent
    """
    _show_run(settings, {"op": "restart", "app": app}, as_json, attach=attach)


@norn.command()
@click.argument("app")
@click.argument("tag", required=False)
@_run_options
@click.pass_obj
def rollback(settings: Settings, app: str, tag: str | None, attach: bool, as_json: bool) -> None:
    """Roll APP back to image TAG (its rollback steps, if any) and watch it live.

    \b
    Example:
      norn rollback mail-agent 2026-11-26.3
    """
    if tag is None and not attach:
        raise click.UsageError("rollback needs a TAG (or --attach)")
    _show_run(settings, {"op": "rollback", "app": app, "tag": tag}, as_json, attach=attach)


@norn.command()
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="The run's events as NDJSON on stdout, nothing else.")
@click.pass_obj
def watch(settings: Settings, run_id: str, as_json: bool) -> None:
    """Attach to a run in progress or finished: replay it, then follow it live.

    \b
    Example:
      norn watch 3fa9c2e1b7d4
    """
    _show_run(settings, None, as_json, run_id=run_id)


@norn.command()
@click.option("--json", "as_json", is_flag=True, help="The run's events as NDJSON on stdout, nothing else.")
@click.pass_obj
def demo(settings: Settings, as_json: bool) -> None:
    """A first look: an embedded hub deploys a sample app, shown live.

    \b
    Example:
      norn demo
    """
    from norn_cli.cli.demo import run_demo
    from norn_cli.render.pipeline_view import make_view

    state = _run(run_demo(make_view(json=as_json, no_color=settings.no_color, stdout=sys.stdout)))
    _stderr("that was an embedded hub running a sample norn.toml; write your own: docs/pipelines.md")
    sys.exit(int(ExitCode.OK if state.ok else ExitCode.FAILED))


# ---------------------------------------------------------------- emit and tail (issue 3)


def _endpoint(settings: Settings) -> Endpoint:
    from norn_cli.client.connect import Endpoint

    try:
        return Endpoint.parse(settings.url)
    except NornError as exc:
        raise click.BadParameter(exc.message, param_hint="'--url'") from None


def _notice(message: str) -> None:
    """A line for people on stderr; hub-supplied text is escaped."""
    from norn_cli.render.plain import escape_control

    _stderr(f"norn: {escape_control(message)}")


def _complete_apps(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """Apps among the hub's recent events; nothing when the hub does not answer quickly."""
    from norn_cli.client.connect import Endpoint
    from norn_cli.client.tail import recent_apps

    root = ctx.find_root().params
    try:
        endpoint = Endpoint.parse(root.get("url") or "ws://localhost:8800")
    except NornError:
        return []
    apps = _run(recent_apps(endpoint, cafile=root.get("cafile")))
    return [app for app in apps if app.startswith(incomplete)]


def _check_since(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    from norn_cli.core.events import parse_id

    if value is not None:
        try:
            parse_id(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


@norn.command()
@click.argument("event_type", metavar="[TYPE]", required=False)
@click.option("--app", metavar="APP", shell_complete=_complete_apps, help="The app the event is about (its appId); with --file, the default for lines without one.")
@click.option("--data", metavar="JSON", help="The payload, a JSON object.")
@click.option(
    "-p", "--payload", "pairs", multiple=True, metavar="KEY=VALUE",
    help="A payload field (repeatable): VALUE is JSON when it parses as JSON, else a string; dotted keys nest (a.b=1).",
)  # fmt: skip
@click.option("--file", "file", type=click.Path(dir_okay=False, allow_dash=True), metavar="PATH", help="NDJSON events, one per line ('-': stdin); TYPE and --app fill in missing fields.")
@click.option("--json", "as_json", is_flag=True, help="Print the hub's reply as JSON (with --file: one reply per event).")
@click.pass_obj
def emit(
    settings: Settings,
    event_type: str | None,
    app: str | None,
    data: str | None,
    pairs: tuple[str, ...],
    file: str | None,
    as_json: bool,
) -> None:
    """Publish an event (or many, from NDJSON) and print the id the hub assigned.

    Everything is checked against the hub's rules before anything is sent:
    a file or stdin is read to its end and checked whole, then published
    over one connection, batched and pipelined.

    \b
    Examples:
      norn emit deploy.step --app mail-agent -p step=build -p status=building
      norn emit backup.completed --app db --data '{"sizeMb": 120}' --json
      norn emit --file events.ndjson
      norn --url ws://old:8800 tail --json --last 100 --count 100 | norn emit --file -
    """
    from norn_cli.client import emit as emitting

    if file is not None and (data is not None or pairs):
        raise click.UsageError("--file takes whole events; use --data and -p with TYPE instead")
    if file is None and (event_type is None or app is None):
        raise click.UsageError("give TYPE and --app (or --file PATH, '-' for stdin)")
    endpoint = _endpoint(settings)
    out = sys.stdout
    if file is None:
        assert event_type is not None and app is not None
        reply = _run(emitting.emit_from_flags(
            endpoint, event_type, app, data=data, pairs=pairs, token=settings.token, cafile=settings.cafile
        ))  # fmt: skip
        out.write((_json_line(reply) if as_json else str(reply.get("id", ""))) + "\n")
        return

    def on_id(event_id: str) -> None:
        out.write((_json_line({"ok": True, "id": event_id}) if as_json else event_id) + "\n")

    try:
        stream = click.open_file(file, "rb")
    except OSError as exc:
        raise click.BadParameter(f"cannot read {file}: {exc.strerror or exc}", param_hint="'--file'") from None
    with stream:
        count = _run(emitting.emit_ndjson(
            endpoint, stream, on_id=on_id, source="stdin" if file == "-" else file,
            default_type=event_type, default_app=app, token=settings.token, cafile=settings.cafile,
        ))  # fmt: skip
    out.flush()
    if settings.verbose:
        _notice(f"published {count} event{'' if count == 1 else 's'} to {endpoint}")


def _json_line(obj: Any) -> str:
    from norn_cli.core.events import dumps

    return dumps(obj).decode()


@norn.command()
@click.option("--app", "apps", multiple=True, metavar="APP", shell_complete=_complete_apps, help="Only this app's events (repeatable: any of them).")
@click.option("--type", "types", multiple=True, metavar="PATTERN", help="Only these types, '*' a wildcard, e.g. 'deploy.*' (repeatable).")
@click.option("--since", metavar="ID", callback=_check_since, help="First replay the retained events after this id.")
@click.option("--last", type=click.IntRange(0), metavar="N", help="First replay the last N retained events.")
@click.option("--count", type=click.IntRange(1), metavar="N", help="Exit 0 after N events.")
@click.option("--until", metavar="TYPE", help="Exit 0 at the first event of TYPE (a glob); for X.completed, exit 1 if X.failed comes first.")
@click.option(
    "--timeout", type=click.FloatRange(0, min_open=True), metavar="SECONDS",
    help="Give up after SECONDS with exit 5 unless --count/--until was met (without them: unless any event arrived).",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="NDJSON: each envelope exactly as received, one per line.")
@click.option("--format", "template", metavar="TEMPLATE", help="One line per event from a template: '{ts} {appId} {type} {payload[step]}'.")
@click.option("--no-reconnect", is_flag=True, help="Exit 3 when the connection is lost, instead of reconnecting and resuming.")
@click.pass_obj
def tail(
    settings: Settings,
    apps: tuple[str, ...],
    types: tuple[str, ...],
    since: str | None,
    last: int | None,
    count: int | None,
    until: str | None,
    timeout: float | None,
    as_json: bool,
    template: str | None,
    no_reconnect: bool,
) -> None:
    """Stream events as they happen, filtered by the hub.

    A lost connection is reported on stderr, retried with backoff and
    resumed after the last event printed, so nothing still retained is
    missed or repeated. In --format templates, a payload key an event lacks
    renders empty; a name other than type, appId, payload, id, ts is an error.

    \b
    Examples:
      norn tail --app mail-agent --type 'deploy.*'
      norn tail --app mail-agent --until deploy.completed --timeout 600
      norn tail --json --last 100 | jq -r .type
      norn tail --format '{ts} {appId} {type} {payload[step]}'
    """
    from norn_cli.client import tail as tailing

    if as_json and template is not None:
        raise click.UsageError("--json and --format are alternatives; pick one")
    endpoint = _endpoint(settings)
    on_frame = _frame_writer(settings, as_json, template)
    on_connect = (lambda url: _notice(f"subscribed to {url}")) if settings.verbose else None
    _run(tailing.tail(
        endpoint, on_frame, apps=apps, types=types, since=since, last=last,
        stop=tailing.Stop(count=count, until=until, timeout=timeout), reconnect=not no_reconnect,
        cafile=settings.cafile, hub_frames=as_json, on_gap=_warn_gap, on_notice=_notice, on_connect=on_connect,
    ))  # fmt: skip


def _warn_gap(since: str, oldest: str) -> None:
    where = f"its history now starts at {oldest}" if oldest else "it retains nothing older"
    _notice(f"warning: events after {since} may be missing; {where}")


def _frame_writer(settings: Settings, as_json: bool, template: str | None) -> Callable[[Frame], None]:
    """Where each event goes: NDJSON as received, a template's line, or a readable line."""
    out = sys.stdout
    if as_json:

        def write_raw(frame: Frame) -> None:
            out.write(frame.raw + "\n")
            out.flush()

        return write_raw
    if template is not None:
        from norn_cli.render.plain import Template, TemplateError

        try:
            tpl = Template(template)
        except TemplateError as exc:
            raise click.BadParameter(str(exc), param_hint="'--format'") from None

        def write_line(frame: Frame) -> None:
            out.write(tpl.render(frame.envelope) + "\n")
            out.flush()

        return write_line
    from norn_cli.render.lines import EventLines, PipeConsole

    console = PipeConsole(file=out, no_color=settings.no_color or None, highlight=False, soft_wrap=True)
    lines = EventLines(console)
    return lambda frame: lines.show(frame.envelope)


# ---------------------------------------------------------------- end of emit and tail


def main() -> None:
    """Console-script entry point."""
    norn(prog_name="norn")
