"""What every command shares: resolved global settings, the one bridge from sync to async, and stderr."""

from __future__ import annotations

import os
import sys
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from norn_cli.core.errors import ExitCode, NornError

if TYPE_CHECKING:  # asyncio and friends load only when a command needs them
    import asyncio

    from norn_cli.client.endpoint import Endpoint

__all__ = ["Duration", "Settings", "hub_endpoint", "fail", "json_line", "notice", "run", "setup_logging", "stderr"]

T = TypeVar("T")


@dataclass
class Settings:
    """Global options, resolved: flag > environment > default."""

    url: str
    token: str | None
    cafile: str | None
    verbose: int
    no_color: bool


class Duration(click.ParamType):
    """A duration option: `10s`, `2m`, `1h30m`, `250ms` or a number of seconds; the value is seconds."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        from norn_cli.core.durations import parse_duration

        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


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


def run(coro: Coroutine[Any, Any, T]) -> T:
    """The one bridge from sync to async: errors to exit codes, Ctrl-C to 130,
    a closed stdout pipe to a quiet exit."""
    import asyncio

    try:
        with asyncio.Runner(loop_factory=_new_loop) as runner:
            return runner.run(coro)
    except NornError as exc:
        fail(exc.message, int(exc.exit_code))
    except KeyboardInterrupt:
        stderr("norn: interrupted")
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
