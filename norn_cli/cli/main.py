"""The `norn` group: global options, and every command registered from its own module."""

from __future__ import annotations

import os
import sys

import click

from norn_cli import __version__
from norn_cli.cli.common import global_option_params, stderr
from norn_cli.cli.streams import ensure_standard_fds, finish_output, output_error, silence
from norn_cli.core.errors import EXIT_CODE_HELP, ExitCode
from norn_cli.core.kinds import RUN_KINDS

__all__ = ["main", "norn"]

_EXIT_CODES_HELP = "\b\nExit codes:\n" + "\n".join(
    f"  {int(code):<4} {text}" for code, text in EXIT_CODE_HELP.items()
)


# Where each command is defined: a module is imported only when its command runs (or for help),
# so `norn emit` does not pay for building serve's, bench's or the run commands' options.
COMMANDS: dict[str, str] = {
    "bench": "norn_cli.cli.bench:bench",
    "serve": "norn_cli.cli.serve:serve",
    **{kind.name: "norn_cli.cli.runs:RUN_COMMANDS" for kind in RUN_KINDS},
    "watch": "norn_cli.cli.runs:watch",
    "demo": "norn_cli.cli.runs:demo",
    "init": "norn_cli.cli.init:init",
    "emit": "norn_cli.cli.events:emit",
    "tail": "norn_cli.cli.events:tail",
    "replay": "norn_cli.cli.replay:replay",
    "completion": "norn_cli.cli.completion:completion",
}


class _Group(click.Group):
    """Commands loaded on first use (COMMANDS); the top-level list shows each command's whole
    first sentence, never cut with '...'."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            import importlib

            module, _, attr = COMMANDS[cmd_name].partition(":")
            found = getattr(importlib.import_module(module), attr)
            if isinstance(found, list):  # the run commands, one per pipeline kind
                found = next(c for c in found if c.name == cmd_name)
            self.add_command(found, cmd_name)
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, cmd.get_short_help_str(limit=1000)) for name in self.list_commands(ctx)
                if (cmd := self.get_command(ctx, name)) is not None and not cmd.hidden]  # fmt: skip
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(
    cls=_Group,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=_EXIT_CODES_HELP,
)
@click.version_option(__version__, "--version", prog_name="norn")
def norn() -> None:
    """A real-time event hub and its clients.

    \b
    norn serve                                  run the hub on 127.0.0.1:8800
    norn tail --app mail-agent                  stream events
    norn emit deploy.step --app mail-agent -p step=build -p status=building
    """
    # The global options are recorded by their callbacks; each command resolves them (see cli/common.py).


norn.params[:0] = global_option_params()


def main() -> None:
    """Console-script entry point: standard fds first, and output failures as one line (exit 1)."""
    ensure_standard_fds()  # before any socket can be given fd 0, 1 or 2
    if "_NORN_COMPLETE" in os.environ:  # the shell asks for completions (or the script): bash keeps `:` words whole
        from norn_cli.cli.bash_completion import register

        register()
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
