"""The `norn` command line: Click adapters that parse, call one library function and render."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import click

from norn_cli import __version__
from norn_cli.errors import EXIT_CODE_HELP, ExitCode, NornError

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
@click.option("--no-color", is_flag=True, envvar="NO_COLOR", help="No colours (also NO_COLOR).")
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
    ctx.obj = Settings(url=url, token=token or None, cafile=cafile, verbose=verbose, no_color=no_color)


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
@click.option("--broker", envvar="NORN_BROKER", default=None, metavar="URL", help="memory (default) or redis://HOST:PORT/DB [env NORN_BROKER].")
@click.option("--redis-stream", envvar="NORN_REDIS_STREAM", default="norn:events", show_default=True, metavar="KEY", help="The Redis stream hubs share [env NORN_REDIS_STREAM].")
@click.option("--certfile", type=click.Path(exists=True, dir_okay=False), default=None, help="TLS certificate (serves wss://).")
@click.option("--keyfile", type=click.Path(exists=True, dir_okay=False), default=None, help="TLS private key.")
@click.option(
    "--config", "config_path", envvar="NORN_CONFIG", type=click.Path(dir_okay=False), default=None,
    help="Apps and their pipelines (default: ./norn.toml when present) [env NORN_CONFIG].",
)  # fmt: skip
@click.pass_obj
def serve(
    settings: Settings,
    host: str,
    port: int,
    serve_token: str | None,
    allowed_origins: tuple[str, ...],
    history: int,
    queue_size: int,
    broker: str | None,
    redis_stream: str,
    certfile: str | None,
    keyfile: str | None,
    config_path: str | None,
) -> None:
    """Run the hub: /ws to subscribe, /api to publish, /healthz, /metrics.

    \b
    Example:
      norn serve --port 8800 --allowed-origin https://norn.example.com
      norn serve --config deploy/norn.toml      # apps norn deploy/forge/teardown can run
      norn serve --broker redis://10.0.0.5:6379/0 --host 0.0.0.0 --token "$TOKEN"
    """
    from pathlib import Path

    from norn_cli import server
    from norn_cli.broker import open_broker
    from norn_cli.config import find_config, load_config
    from norn_cli.origin import parse_origins
    from norn_cli.pipeline import attach_runner

    origins = parse_origins([*allowed_origins, os.environ.get("NORN_ALLOWED_ORIGINS", "")])
    if keyfile and not certfile:
        raise click.UsageError("--keyfile needs --certfile")
    try:
        the_broker = open_broker(broker, history=history, stream=redis_stream)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--broker") from None

    async def run() -> None:
        config = load_config(find_config(config_path, Path.cwd()))  # pipelines: a bad file stops us here
        ssl_context = server.tls_context(certfile, keyfile) if certfile else None
        srv = server.HubServer(
            host=host, port=port, broker=the_broker, token=serve_token or settings.token,
            allowed_origins=origins, queue_size=queue_size, history=history, ssl_context=ssl_context,
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

        await server.run_until_signalled(srv, started)

    _run(run())


# ---------------------------------------------------------------- pipelines


def _run_options(f: Any) -> Any:
    """--attach and --json, spelled the same on every pipeline command."""
    f = click.option("--json", "as_json", is_flag=True, help="The run's events as NDJSON on stdout, nothing else.")(f)
    return click.option("--attach", is_flag=True, help="Watch the app's latest run of this kind instead of starting one.")(f)


def _show_run(settings: Settings, request: dict[str, Any] | None, as_json: bool, *,
              attach: bool = False, run_id: str | None = None) -> NoReturn:  # fmt: skip
    """Start (or find) a run, show it live, exit 0 when it completed and 1 when it failed."""
    from norn_cli import watch
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
    from norn_cli.demo import run_demo
    from norn_cli.render.pipeline_view import make_view

    state = _run(run_demo(make_view(json=as_json, no_color=settings.no_color, stdout=sys.stdout)))
    _stderr("that was an embedded hub running a sample norn.toml; write your own: docs/pipelines.md")
    sys.exit(int(ExitCode.OK if state.ok else ExitCode.FAILED))


def main() -> None:
    """Console-script entry point."""
    norn(prog_name="norn")
