"""What every command shares: resolved global settings, the one bridge from sync to async, and stderr."""

from __future__ import annotations

import os
import sys
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, NoReturn, TypeVar

import click

from norn_cli.core.errors import EXIT_CODE_HELP, ExitCode, NornError

if TYPE_CHECKING:  # asyncio and friends load only when a command needs them
    import asyncio

    from norn_cli.client.endpoint import Endpoint

__all__ = ["DEFAULT_URL", "Duration", "NornCommand", "Settings", "global_option_params", "peek_hub", "resolve_settings", "with_global_options", "hub_endpoint", "fail", "json_line", "notice", "run", "setup_logging", "stderr"]

T = TypeVar("T")
DEFAULT_URL = "ws://localhost:8800"


@dataclass
class Settings:
    """Global options, resolved: after the command > before it > environment > default."""

    url: str
    token: str | None
    cafile: str | None
    verbose: int
    no_color: bool
    url_given: bool = False
    """--url was on the command line (before or after the command), not from NORN_URL or the default."""


# ------------------------------------------------------------------ global options
#
# One definition of each global option. The group and every command carry it; a
# callback records what was typed, per level, in ctx.meta (shared by the group's
# context and the command's), and resolve_settings() decides once, at invoke.

_META = "norn.global_options"
# name -> (flags, Click option keywords, environment variable)
_GLOBAL_OPTIONS: dict[str, tuple[tuple[str, ...], dict[str, Any], str | None]] = {
    "url": (("--url",), {"metavar": "URL", "help": f"The hub: ws(s):// or http(s)://, with or without a path [env NORN_URL; default {DEFAULT_URL}]."}, "NORN_URL"),
    "token": (("--token",), {"metavar": "TOKEN", "help": "Bearer token for /api [env NORN_TOKEN]."}, "NORN_TOKEN"),
    "token_file": (
        ("--token-file",), {"metavar": "PATH", "type": click.Path(dir_okay=False), "help": "Read the bearer token from PATH, one trailing newline stripped [env NORN_TOKEN_FILE]."},
        "NORN_TOKEN_FILE",
    ),
    "cafile": (("--cafile",), {"metavar": "PATH", "type": click.Path(exists=True, dir_okay=False), "help": "CA bundle to trust for wss:// (a private CA)."}, None),
    "verbose": (("-v", "--verbose"), {"count": True, "help": "Log more to stderr (repeat for debug)."}, None),
    "no_color": (("--no-color",), {"is_flag": True, "help": "No colours (also when NO_COLOR is set and not empty)."}, None),
}  # fmt: skip
ALL_GLOBALS = tuple(_GLOBAL_OPTIONS)


class GlobalOption(click.Option):
    """An option of every command that the group takes too; help lists it apart."""


def _record(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    if value is None or value is False or value == 0:
        return
    level = "group" if ctx.parent is None else "command"
    assert param.name is not None
    ctx.meta.setdefault(_META, {}).setdefault(level, {})[param.name] = value


def global_option_params(names: tuple[str, ...] = ALL_GLOBALS, help: dict[str, str] | None = None) -> list[click.Parameter]:
    """The global options `names`, as parameters that record what was typed (never passed to the callback)."""
    params: list[click.Parameter] = []
    for name in names:
        flags, kwargs, _env = _GLOBAL_OPTIONS[name]
        kwargs = {**kwargs, **({"help": help[name]} if help and name in help else {})}
        params.append(GlobalOption([*flags, name], expose_value=False, callback=_record, **kwargs))
    return params


def with_global_options(*names: str, help: dict[str, str] | None = None) -> Callable[[click.Command], click.Command]:
    """Give a command the global options `names` (default: all), resolved into ctx.obj before it runs."""

    def apply(cmd: click.Command) -> click.Command:
        cmd.params.extend(global_option_params(names or ALL_GLOBALS, help))
        inner = cmd.callback
        assert inner is not None

        def callback(*args: Any, **kwargs: Any) -> Any:
            ctx = click.get_current_context()
            ctx.obj = resolve_settings(ctx)
            return inner(*args, **kwargs)

        cmd.callback = callback
        return cmd

    return apply


def _given(ctx: click.Context, name: str) -> tuple[Any, int]:
    """What was typed for `name` and how strongly: 3 after the command, 2 before it, 1 the environment, 0 nothing."""
    levels = ctx.meta.get(_META, {})
    for rank, level in ((3, "command"), (2, "group")):
        value = levels.get(level, {}).get(name)
        if value is not None:
            return value, rank
    env = _GLOBAL_OPTIONS[name][2]
    if env and os.environ.get(env):
        return os.environ[env], 1
    return None, 0


def peek_hub(ctx: click.Context) -> tuple[str, str | None, str | None]:
    """The hub URL, token and CA file as typed so far, without side effects or messages (for shell completion)."""
    token = _given(ctx, "token")[0]
    token_file = _given(ctx, "token_file")[0]
    if token is None and token_file is not None:
        from norn_cli.core.secrets import read_token_file

        try:
            token = read_token_file(str(token_file))[0]
        except NornError:
            token = None
    return _given(ctx, "url")[0] or DEFAULT_URL, token, _given(ctx, "cafile")[0]


def resolve_settings(ctx: click.Context) -> Settings:
    """The global options as this invocation meant them; sets up logging and reads --token-file."""
    levels = ctx.meta.get(_META, {})
    url, url_rank = _given(ctx, "url")
    token, token_rank = _given(ctx, "token")
    token_file, file_rank = _given(ctx, "token_file")
    if token_file is not None and file_rank >= token_rank:
        if token is not None and file_rank == token_rank:
            where = "the environment" if file_rank == 1 else "the command line"
            raise click.UsageError(f"--token and --token-file (or NORN_TOKEN and NORN_TOKEN_FILE) are alternatives; {where} gives both")
        from norn_cli.core.secrets import read_token_file

        try:
            token, warning = read_token_file(str(token_file))
        except NornError as exc:
            fail(exc.message, int(exc.exit_code))
        if warning:
            stderr(f"norn: warning: {warning}")
    verbose = sum(int(levels.get(level, {}).get("verbose", 0)) for level in ("group", "command"))
    setup_logging(verbose)
    no_color = any(levels.get(level, {}).get("no_color") for level in ("group", "command"))
    # NO_COLOR is any non-empty value (no-color.org), not a Click boolean.
    no_color = no_color or bool(os.environ.get("NO_COLOR"))
    return Settings(
        url=url or DEFAULT_URL, token=token or None, cafile=_given(ctx, "cafile")[0], verbose=verbose,
        no_color=no_color, url_given=url_rank >= 2,
    )  # fmt: skip


class NornCommand(click.Command):
    """A command whose help lists its own options, then the global ones, then its exit codes."""

    def __init__(self, *args: Any, exit_codes: dict[int, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.exit_codes = exit_codes

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        own = [r for p in self.get_params(ctx) if not isinstance(p, GlobalOption) and (r := p.get_help_record(ctx))]
        common = [r for p in self.params if isinstance(p, GlobalOption) and (r := p.get_help_record(ctx))]
        if own:
            with formatter.section("Options"):
                formatter.write_dl(own)
        if common:
            with formatter.section("Global options (before or after the command: norn --url URL CMD or norn CMD --url URL)"):
                formatter.write_dl(common)

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_epilog(ctx, formatter)
        codes = self.exit_codes or {}
        if codes:
            with formatter.section("Exit codes"):
                formatter.write_dl([(str(code), text or EXIT_CODE_HELP[ExitCode(code)]) for code, text in codes.items()], col_max=4)


class Duration(click.ParamType):
    """A time span on the command line: `10s`, `2m`, `1h30m`, `250ms` or bare seconds; converts to float seconds.

    `positive=True` (the default) refuses 0, for timeouts and intervals where 0 means nothing useful.
    """

    name = "duration"

    def __init__(self, *, positive: bool = True) -> None:
        self.positive = positive

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        from norn_cli.core.durations import parse_duration

        if isinstance(value, (int, float)) and not isinstance(value, bool):
            seconds = float(value)
        else:
            try:
                seconds = parse_duration(str(value))
            except ValueError as exc:
                self.fail(str(exc), param, ctx)
        if self.positive and seconds <= 0:
            self.fail(f"{value!r} is not a duration: expected more than 0", param, ctx)
        return seconds


def stderr(message: str) -> None:
    """A line for people; when stderr cannot be written (closed, /dev/full) it is dropped."""
    try:
        click.echo(message, err=True)
    except (OSError, ValueError):
        pass


def fail(message: str, code: int) -> NoReturn:
    stderr(f"norn: {message}")
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


async def _until_stdout_closes(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro`, but end it at once (BrokenPipeError) when the reader of a stdout pipe goes away.

    A pipe's write end polled for reading reports only the hang-up of its reader
    (EPOLLERR), so a stream notices `| head -1` without waiting to write its next event.
    """
    import asyncio
    import stat

    task = asyncio.ensure_future(coro)
    try:
        fd = sys.stdout.fileno()
        piped = stat.S_ISFIFO(os.fstat(fd).st_mode)
    except (AttributeError, OSError, ValueError):
        piped = False
    if not piped:
        return await task
    loop = asyncio.get_running_loop()
    hung: list[bool] = []

    def on_hangup() -> None:
        hung.append(True)
        loop.remove_reader(fd)
        task.cancel()

    try:
        blocking = os.get_blocking(fd)
        loop.add_reader(fd, on_hangup)
        os.set_blocking(fd, blocking)  # uvloop makes a polled fd non-blocking; our writes expect it as it was
    except (OSError, ValueError, NotImplementedError):
        return await task
    try:
        return await task
    except asyncio.CancelledError:
        if hung:
            raise BrokenPipeError from None
        raise
    finally:
        if not hung:
            loop.remove_reader(fd)


def run(coro: Coroutine[Any, Any, T], *, interrupted: str | None = "norn: interrupted", stream: bool = False) -> T:
    """The one bridge from sync to async: errors to exit codes, Ctrl-C to 130 (saying `interrupted`
    unless the command already told the user what happened), a closed stdout pipe to a quiet exit;
    `stream=True` (tail, watch, deploy) notices that pipe closing at once, not at the next write."""
    import asyncio

    try:
        with asyncio.Runner(loop_factory=_new_loop) as runner:
            return runner.run(_until_stdout_closes(coro) if stream else coro)
    except NornError as exc:
        fail(exc.message, int(exc.exit_code))
    except KeyboardInterrupt:
        if interrupted:
            stderr(interrupted)
        sys.exit(int(ExitCode.INTERRUPTED))
    except BrokenPipeError:
        # `norn tail --json | head -1`: the reader left; end quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(int(ExitCode.OK))


def setup_logging(verbose: int) -> None:
    import logging

    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("norn")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def hub_endpoint(settings: Settings) -> Endpoint:
    """The hub named by --url, or a usage error naming the option."""
    from norn_cli.client.endpoint import Endpoint

    try:
        return Endpoint.parse(settings.url)
    except NornError as exc:
        raise click.BadParameter(exc.message, param_hint="'--url'") from None


def notice(message: str) -> None:
    """A line for people on stderr; hub-supplied text is escaped."""
    from norn_cli.render.plain import escape_control

    stderr(f"norn: {escape_control(message)}")


def json_line(obj: Any) -> str:
    from norn_cli.core.events import dumps

    return dumps(obj).decode()
