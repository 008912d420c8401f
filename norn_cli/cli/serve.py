"""`norn serve`: options in (flag > environment > `[serve]` in norn.toml > default), the hub out."""

from __future__ import annotations

from typing import Any

import click

from norn_cli.cli.common import Duration, NornCommand, Settings, fail, run, stderr, with_global_options
from norn_cli.core.errors import NornError

__all__ = ["serve"]


class _Origins(click.ParamType):
    """An allowed origin; NORN_ALLOWED_ORIGINS separates several with commas."""

    name = "origin"
    envvar_list_splitter = ","

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        return str(value).strip()


def _load_config(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Read norn.toml first (an eager option), so its `[serve]` table becomes the
    defaults of every other option: Click then resolves flag > environment > file > default."""
    from pathlib import Path

    from norn_cli.core.config import find_config, load_config

    try:
        config = load_config(find_config(value, Path.cwd()))
    except NornError as exc:
        fail(exc.message, int(exc.exit_code))
    ctx.meta["norn.config"] = config
    table = dict(config.serve)
    if "token" in table:
        table["serve_token"] = table.pop("token")
    ctx.default_map = {**(ctx.default_map or {}), **table}
    return value


@with_global_options("verbose", "no_color")
@click.command(cls=NornCommand, exit_codes={
    0: "stopped by Ctrl-C or SIGTERM, connections closed", 1: "could not start (address in use, bad TLS files)",
    2: "bad option or norn.toml",
})  # fmt: skip
@click.option(
    "--config", "config_path", envvar="NORN_CONFIG", type=click.Path(dir_okay=False), default=None,
    is_eager=True, expose_value=False, callback=_load_config,
    help="[serve] settings and the apps' pipelines (default: ./norn.toml when present) [env NORN_CONFIG].",
)  # fmt: skip
@click.option("--host", envvar="NORN_HOST", default="127.0.0.1", show_default=True, help="Address to bind [env NORN_HOST].")
@click.option("--port", envvar="NORN_PORT", type=click.IntRange(0, 65535), default=8800, show_default=True, help="Port (0: any free port) [env NORN_PORT].")
@click.option("--token", "serve_token", envvar="NORN_TOKEN", default=None, help="Require this bearer token on /api [env NORN_TOKEN].")
@click.option(
    "--token-file", type=click.Path(dir_okay=False), envvar="NORN_TOKEN_FILE", default=None, metavar="PATH",
    help="Read the /api token from this file's first line, so it stays out of `ps` [env NORN_TOKEN_FILE].",
)  # fmt: skip
@click.option(
    "--allowed-origin", "allowed_origins", multiple=True, metavar="ORIGIN", type=_Origins(), envvar="NORN_ALLOWED_ORIGINS",
    help="A browser origin allowed besides localhost (repeatable) [env NORN_ALLOWED_ORIGINS, comma-separated].",
)  # fmt: skip
@click.option("--history", type=click.IntRange(0), default=10_000, show_default=True, envvar="NORN_HISTORY", help="Events retained for since/last replay [env NORN_HISTORY].")
@click.option("--queue-size", type=click.IntRange(1), default=64, show_default=True, envvar="NORN_QUEUE_SIZE", help="Per-subscriber send queue, in events [env NORN_QUEUE_SIZE].")
@click.option(
    "--fanout-threads", type=click.IntRange(0, 16), default=None, envvar="NORN_FANOUT_THREADS", metavar="N",
    help="Threads besides the event loop writing events to subscribers (default: 1 with two or more CPUs, else 0) [env NORN_FANOUT_THREADS].",
)  # fmt: skip
@click.option("--broker", envvar="NORN_BROKER", default=None, metavar="URL", help="memory (default), sqlite:///PATH (kept on disk) or redis://HOST:PORT/DB [env NORN_BROKER].")
@click.option(
    "--retention", type=Duration(), default=None, envvar="NORN_RETENTION", metavar="AGE",
    help="SQLite: also drop events older than AGE, e.g. 7d, 12h, 30m [env NORN_RETENTION].",
)  # fmt: skip
@click.option(
    "--fsync", type=click.Choice(["normal", "always"]), default="normal", show_default=True, envvar="NORN_FSYNC",
    help="SQLite: 'always' syncs every commit to disk, to survive power loss (slower) [env NORN_FSYNC].",
)  # fmt: skip
@click.option(
    "--pin-cpu/--no-pin-cpu", default=True, show_default=True, envvar="NORN_PIN_CPU",
    help="SQLite: keep the event loop and the writer thread on one CPU, the fastest for their hand-offs [env NORN_PIN_CPU].",
)  # fmt: skip
@click.option("--redis-stream", envvar="NORN_REDIS_STREAM", default="norn:events", show_default=True, metavar="KEY", help="The Redis stream hubs share [env NORN_REDIS_STREAM].")
@click.option(
    "--dedupe-window", type=click.IntRange(1), default=600, show_default=True, envvar="NORN_DEDUPE_WINDOW", metavar="SECONDS",
    help="How long a publish key is remembered: a repeat within it publishes nothing [env NORN_DEDUPE_WINDOW].",
)  # fmt: skip
@click.option(
    "--handshake-timeout", type=Duration(positive=False), default="10s", show_default=True, envvar="NORN_HANDSHAKE_TIMEOUT",
    help="Close a connection that has not completed its request and upgrade by then (0: never) [env NORN_HANDSHAKE_TIMEOUT].",
)  # fmt: skip
@click.option(
    "--max-connections", type=click.IntRange(1), default=None, envvar="NORN_MAX_CONNECTIONS", metavar="N",
    help="WebSocket connections before new upgrades get 503 (default: the file-descriptor limit minus max(64, limit/8)) [env NORN_MAX_CONNECTIONS].",
)  # fmt: skip
@click.option(
    "--max-connections-per-ip", type=click.IntRange(0), default=0, envvar="NORN_MAX_CONNECTIONS_PER_IP", metavar="N",
    help="WebSocket connections per client address, loopback included (0: no limit) [env NORN_MAX_CONNECTIONS_PER_IP].",
)  # fmt: skip
@click.option("--ui/--no-ui", default=True, show_default=True, envvar="NORN_UI", help="The live dashboard at GET / [env NORN_UI].")
@click.option("--certfile", type=click.Path(exists=True, dir_okay=False), default=None, help="TLS certificate (serves wss://).")
@click.option("--keyfile", type=click.Path(exists=True, dir_okay=False), default=None, help="TLS private key.")
@click.pass_context
def serve(
    ctx: click.Context,
    host: str,
    port: int,
    serve_token: str | None,
    token_file: str | None,
    allowed_origins: tuple[str, ...],
    history: int,
    queue_size: int,
    fanout_threads: int | None,
    broker: str | None,
    retention: float | None,
    fsync: str,
    pin_cpu: bool,
    redis_stream: str,
    dedupe_window: int,
    certfile: str | None,
    keyfile: str | None,
    handshake_timeout: float,
    max_connections: int | None,
    max_connections_per_ip: int,
    ui: bool,
) -> None:
    """Run the hub: /ws to subscribe, /api to publish, /healthz, /metrics, a dashboard at /.

    Every option can also come from the environment or from the [serve]
    table of norn.toml (a flag wins over the environment, which wins over
    the file).

    \b
    Example:
      norn serve --port 8800 --allowed-origin https://norn.example.com
      norn serve --config deploy/norn.toml      # apps norn deploy/forge/teardown can run
      norn serve --broker sqlite:///var/lib/norn/events.db --history 1000000 --retention 7d
      norn serve --broker redis://10.0.0.5:6379/0 --host 0.0.0.0 --token "$TOKEN"
    """
    from norn_cli.core.config import Config
    from norn_cli.core.origin import parse_origins
    from norn_cli.hub import server
    from norn_cli.hub.brokers import open_broker
    from norn_cli.hub.pipeline.runner import attach_runner

    settings: Settings = ctx.obj
    config: Config = ctx.meta.get("norn.config") or Config()
    if keyfile and not certfile:
        raise click.UsageError("--keyfile needs --certfile")
    token = serve_token or settings.token
    if token_file:
        if token:
            raise click.UsageError("give --token (or NORN_TOKEN) or --token-file, not both")
        from norn_cli.core.secrets import read_token_file

        try:
            token, warning = read_token_file(token_file)
        except NornError as exc:
            fail(exc.message, int(exc.exit_code))
        if warning:
            stderr(f"norn: warning: {warning}")
    try:
        the_broker = open_broker(
            broker, history=history, stream=redis_stream, dedupe_window=dedupe_window, retention=retention,
            fsync=fsync, pin_cpu=pin_cpu,
        )  # fmt: skip
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--broker") from None

    async def serve_until_signalled() -> None:
        ssl_context = server.tls_context(certfile, keyfile) if certfile else None
        srv = server.HubServer(
            host=host, port=port, broker=the_broker, token=token, handshake_timeout=handshake_timeout,
            max_connections=max_connections, max_connections_per_ip=max_connections_per_ip,
            allowed_origins=parse_origins(allowed_origins), queue_size=queue_size, history=history,
            ssl_context=ssl_context, fanout_threads=fanout_threads, ui=ui,
        )  # fmt: skip
        runner = attach_runner(srv, config)

        def started(srv: server.HubServer) -> None:
            runner.start()
            stderr(
                f"norn hub listening on {srv.url} (subscribe: {srv.url}/ws, publish: {srv.url}/api, "
                f"broker: {srv.broker.name}); Ctrl-C to stop"
            )
            if srv.broker.problem is not None:
                stderr(f"norn: warning: {srv.broker.problem}; serving anyway, /healthz answers 503 until it does")
            if config.apps:
                stderr(f"pipelines of {', '.join(sorted(config.apps))} from {config.path}")
            if srv.ui:
                stderr(f"dashboard: {srv.url.replace('ws', 'http', 1)}/")

        await server.run_until_signalled(srv, started)

    run(serve_until_signalled())
