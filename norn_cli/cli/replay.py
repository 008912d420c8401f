"""`norn replay FILE`: re-publish a recording made by `norn tail --json`."""

from __future__ import annotations

from typing import Any

import click

from norn_cli.cli.common import NornCommand, fail, Settings, hub_endpoint, notice, run, with_global_options

__all__ = ["replay"]


class Speed(click.ParamType):
    """`--speed`: a factor above 0 (2: twice as fast) or `max` (as fast as the hub takes them); None means max."""

    name = "speed"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float | None:
        if value is None or (isinstance(value, str) and value.lower() == "max"):
            return None
        try:
            speed = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a speed: give a factor such as 2 or 0.5, or max", param, ctx)
        if not speed > 0 or speed == float("inf"):
            self.fail(f"{value!r} is not a speed: give a factor above 0, or max", param, ctx)
        return speed


@with_global_options()
@click.command(cls=NornCommand, exit_codes={
    0: "every event was published (the count is on stderr)", 1: "the hub refused an event",
    2: "usage error, or a line that is not an event (nothing was sent)", 3: "", 4: "", 130: "",
})  # fmt: skip
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True), metavar="FILE")
@click.option("--speed", type=Speed(), default="1", show_default=True, metavar="FACTOR|max", help="Play FACTOR times as fast as recorded (2, 0.5), or `max`: no pauses.")
@click.option("--app", "apps", multiple=True, metavar="APP", help="Only this app's events (repeatable: any of them).")
@click.option("--type", "types", multiple=True, metavar="PATTERN", help="Only these types, '*' a wildcard, e.g. 'deploy.*' (repeatable).")
@click.option("--rewrite-app", metavar="NEW", help="Publish every event as app NEW (after --app has filtered).")
@click.pass_obj
def replay(
    settings: Settings, file: str, speed: float | None, apps: tuple[str, ...], types: tuple[str, ...], rewrite_app: str | None
) -> None:
    """Re-publish a recording made by `norn tail --json`, with its original spacing.

    The whole file is read and checked first: a line that is not an event
    stops the replay before anything is sent, naming its line number. The
    gaps between events follow their `ts`; `id` and `ts` themselves are
    dropped, since the hub assigns both. The hub's own frames (hub.gap) are
    skipped. On a terminal a progress bar shows on stderr; the count of
    events published is printed at the end, on stderr.

    \b
    Examples:
      norn tail --json --app mail-agent > session.ndjson     # record
      norn replay session.ndjson                               # as it happened
      norn replay session.ndjson --speed max --rewrite-app mail-agent-test
      norn replay session.ndjson --type 'deploy.*' --speed 2
    """
    from rich.console import Console

    from norn_cli.client import replay as replaying
    from norn_cli.core.errors import NornError
    from norn_cli.render.reconnect import StatusLine
    from norn_cli.render.replay import replay_progress

    if rewrite_app is not None:
        from norn_cli.core.events import validate_event

        try:
            validate_event({"type": "a.b", "appId": rewrite_app})
        except NornError as exc:
            raise click.BadParameter(exc.message, param_hint="'--rewrite-app'") from None
    endpoint = hub_endpoint(settings)
    try:
        lines = click.open_file(file, "rb")
    except OSError as exc:
        raise click.BadParameter(f"cannot read {file}: {exc.strerror or exc}", param_hint="'FILE'") from None
    source = "stdin" if file == "-" else file
    with lines:
        try:
            recording = replaying.read_recording(lines, source=source, apps=apps, types=types, rewrite_app=rewrite_app)
        except NornError as exc:
            fail(exc.message, int(exc.exit_code))
    err = Console(stderr=True, no_color=settings.no_color)
    # A line when the hub is lost and one when it is back, above the progress bar (no line redrawn in place).
    status = StatusLine(Console(stderr=True, no_color=settings.no_color or None, highlight=False, force_interactive=False))
    with replay_progress(err, len(recording.events)) as on_progress:
        stats = run(replaying.replay(
            endpoint, recording, speed=speed, on_progress=on_progress, token=settings.token, cafile=settings.cafile,
            on_state=status.show,
        ))  # fmt: skip
    n = stats.acked
    skipped = f" ({recording.skipped} left out by the filters or hub frames)" if recording.skipped else ""
    notice(f"replayed {n} event{'' if n == 1 else 's'} from {source} to {endpoint}{skipped}")

