"""The run commands: one per pipeline kind (deploy, forge, teardown, restart, rollback), `watch` and `demo`."""

from __future__ import annotations

import sys
from typing import Any, NoReturn

import click

from norn_cli.cli.completers import complete_configured_apps, complete_run_ids
from norn_cli.cli.common import Duration, NornCommand, Settings, hub_endpoint, run, stderr, with_global_options
from norn_cli.core.kinds import RUN_KINDS, Kind
from norn_cli.core.errors import ExitCode

__all__ = ["RUN_COMMANDS", "demo", "watch"]

_JSON_HELP = "The run's events as NDJSON on stdout, nothing else."
_TIMEOUT_HELP = "Give up waiting for the run's end after this long (10s, 2m, 1h30m): exit 5, the run goes on at the hub."
_QUIET_HELP = "Not on a terminal: leave out the steps' output lines (`STEP | line`)."
_LINES_HELP = "Not on a terminal: output lines of a failed step shown at the end."


def _ci_options() -> list[click.Parameter]:
    return [
        click.Option(["-q", "--quiet"], is_flag=True, help=_QUIET_HELP),
        click.Option(["--lines"], type=click.IntRange(0), default=20, show_default=True, metavar="N", help=_LINES_HELP),
        click.Option(["--timeout"], type=Duration(), default=None, metavar="DURATION", help=_TIMEOUT_HELP),
    ]


_RUN_EXIT_CODES = {
    0: "the run completed", 1: "a step failed (or the hub refused the run)", 2: "", 3: "", 4: "",
    5: "--timeout passed first (the run goes on in the hub; re-attach with norn watch RUN_ID)",
    130: "interrupted (the run goes on in the hub; re-attach with norn watch RUN_ID)",
}  # fmt: skip


def _show_run(settings: Settings, request: dict[str, Any] | None, as_json: bool, *,
              attach: bool = False, run_id: str | None = None, quiet: bool = False, lines: int = 20,
              timeout: float | None = None) -> NoReturn:  # fmt: skip
    """Start (or find) a run, show it live, exit 0 when it completed and 1 when it failed."""
    from norn_cli.client import watch as watching
    from norn_cli.render.pipeline_view import make_view

    view = make_view(json=as_json, no_color=settings.no_color, stdout=sys.stdout, quiet=quiet, lines=lines)
    hub, token, cafile = hub_endpoint(settings), settings.token, settings.cafile
    if request is None:
        assert run_id is not None
        # Ctrl-C: the view says how to re-attach; no second "interrupted" line after it.
        state = run(watching.watch(hub, run_id, view, token=token, cafile=cafile, timeout=timeout), interrupted=None, stream=True)
    else:
        request = {k: v for k, v in request.items() if v is not None}
        state = run(watching.follow(hub, request, view, attach=attach, token=token, cafile=cafile, timeout=timeout), interrupted=None, stream=True)
    sys.exit(int(ExitCode.OK if state.ok else ExitCode.FAILED))


def run_command(kind: Kind) -> click.Command:
    """The `norn KIND APP [REF|TAG]` command: one definition for every pipeline kind."""

    @click.pass_obj
    def callback(
        settings: Settings, app: str, attach: bool, as_json: bool, quiet: bool, lines: int, timeout: float | None,
        **arg: str | None,
    ) -> None:
        value = arg.get(kind.arg) if kind.arg else None
        if kind.arg_required and value is None and not attach:
            raise click.UsageError(f"{kind.name} needs a {kind.arg.upper() if kind.arg else 'value'} (or --attach)")
        request: dict[str, Any] = {"op": kind.name, "app": app}
        if kind.arg:
            request[kind.arg] = value
        _show_run(settings, request, as_json, attach=attach, quiet=quiet, lines=lines, timeout=timeout)

    params: list[click.Parameter] = [click.Argument(["app"], shell_complete=complete_configured_apps)]
    if kind.arg:
        params.append(click.Argument([kind.arg], required=False))
    params += [
        click.Option(["--attach"], is_flag=True, help="Watch the app's latest run of this kind instead of starting one."),
        click.Option(["--json", "as_json"], is_flag=True, help=_JSON_HELP),
        *_ci_options(),
    ]
    return with_global_options()(NornCommand(
        kind.name, callback=callback, params=params, exit_codes=_RUN_EXIT_CODES,
        help=f"{kind.summary}\n\n\b\nExample:\n  norn {kind.name} {kind.example}",
    ))  # fmt: skip


RUN_COMMANDS = [run_command(kind) for kind in RUN_KINDS]


@with_global_options()
@click.command(cls=NornCommand, exit_codes=_RUN_EXIT_CODES)
@click.argument("run_id", shell_complete=complete_run_ids)
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
@click.option("-q", "--quiet", is_flag=True, help=_QUIET_HELP)
@click.option("--lines", type=click.IntRange(0), default=20, show_default=True, metavar="N", help=_LINES_HELP)
@click.option("--timeout", type=Duration(), default=None, metavar="DURATION", help=_TIMEOUT_HELP)
@click.pass_obj
def watch(settings: Settings, run_id: str, as_json: bool, quiet: bool, lines: int, timeout: float | None) -> None:
    """Attach to a run in progress or finished: replay it, then follow it live.

    \b
    Example:
      norn watch 3fa9c2e1b7d4
    """
    _show_run(settings, None, as_json, run_id=run_id, quiet=quiet, lines=lines, timeout=timeout)


@with_global_options("verbose", "no_color")
@click.command(cls=NornCommand, exit_codes={0: "the demo ran as planned", 1: "it did not (a bug: please report it)", 130: ""})
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
@click.pass_obj
def demo(settings: Settings, as_json: bool) -> None:
    """A first look: an embedded hub deploys a sample app twice, shown live (about 6 s).

    The first deploy fails at its test step and shows the failing output;
    the second, the fix, completes. At the end norn says where the sample
    norn.toml was written, to run it with `norn serve --config`.

    \b
    Example:
      norn demo
    """
    import tempfile
    from pathlib import Path

    from norn_cli.cli.demo import DEMO_TOML, FIXED_REF, run_demo
    from norn_cli.render.pipeline_view import make_view

    config = Path(tempfile.mkdtemp(prefix="norn-demo-")) / "norn.toml"
    config.write_text(DEMO_TOML)
    broken, fixed = run(run_demo(
        lambda: make_view(json=as_json, no_color=settings.no_color, stdout=sys.stdout), config,
        between=lambda text: stderr(f"norn demo: {text}"),
    ))  # fmt: skip
    stderr(
        f"norn demo: that was an embedded hub running the sample {config}\n"
        f"  run it yourself: norn serve --config {config}   then: norn deploy demo {FIXED_REF}\n"
        "  your own: norn init writes a commented norn.toml in this folder (docs/pipelines.md has the rest)"
    )
    sys.exit(int(ExitCode.OK if fixed.ok and not broken.ok else ExitCode.FAILED))
