"""The `norn` group: global options, and every command registered from its own module."""

from __future__ import annotations

import os
import sys

import click

from norn_cli import __version__
from norn_cli.cli.bench import bench
from norn_cli.cli.common import Settings, setup_logging, stderr
from norn_cli.cli.events import emit, tail
from norn_cli.cli.runs import RUN_COMMANDS, demo, watch
from norn_cli.cli.serve import serve
from norn_cli.cli.streams import ensure_standard_fds, finish_output, output_error, silence
from norn_cli.core.errors import EXIT_CODE_HELP, ExitCode

__all__ = ["main", "norn"]

_EXIT_CODES_HELP = "\b\nExit codes:\n" + "\n".join(
    f"  {int(code):<4} {text}" for code, text in EXIT_CODE_HELP.items()
)


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
    setup_logging(verbose)
    # NO_COLOR is any non-empty value (no-color.org), not a Click boolean.
    no_color = no_color or bool(os.environ.get("NO_COLOR"))
    ctx.obj = Settings(url=url, token=token or None, cafile=cafile, verbose=verbose, no_color=no_color)


for command in (bench, serve, *RUN_COMMANDS, watch, demo, emit, tail):
    norn.add_command(command)


def main() -> None:
    """Console-script entry point: standard fds first, and output failures as one line (exit 1)."""
    ensure_standard_fds()  # before any socket can be given fd 0, 1 or 2
    code: int | str | None = 0
    try:
        code = norn.main(prog_name="norn", standalone_mode=False)
    except SystemExit as exc:
        code = exc.code
    except click.ClickException as exc:  # shown here, so an unwritable stderr keeps its exit code
        try:
            exc.show()
        except (OSError, ValueError):
            pass
        code = exc.exit_code
    except click.Abort:
        stderr("Aborted!")
        code = int(ExitCode.FAILED)
    except BrokenPipeError:  # the reader of stdout left (`| head -1`): end quietly
        silence(1)
        code = 0
    except OSError as exc:  # stdout on /dev/full and the like, mid-command
        silence(1)
        stderr(f"norn: {output_error(exc)}")
        code = int(ExitCode.FAILED)
    problem = finish_output()
    if problem is not None and code in (0, None):
        stderr(f"norn: {problem}")
        code = int(ExitCode.FAILED)
    sys.exit(code)
