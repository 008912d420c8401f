"""`norn emit` and `norn tail`: publish from the shell, and stream what the hub sends."""

from __future__ import annotations

import sys
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

import click

from norn_cli.cli.common import Duration, NornCommand, Settings, fail, hub_endpoint, json_line, notice, run, with_global_options
from norn_cli.cli.completers import complete_apps, complete_type_patterns, complete_types
from norn_cli.core.errors import ExitCode, NornError

if TYPE_CHECKING:
    from norn_cli.client.connect import ConnectionState, Frame
    from norn_cli.render.reconnect import StatusLine

T = TypeVar("T")

__all__ = ["emit", "tail"]


def _check_since(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    from norn_cli.core.events import parse_id

    if value is not None:
        try:
            parse_id(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


@with_global_options()
@click.command(cls=NornCommand, exit_codes={
    0: "published (the id is on stdout)", 1: "the hub refused the event", 2: "usage error or an event the catalogue refuses",
    3: "", 4: "",
})  # fmt: skip
@click.argument("event_type", metavar="[TYPE]", required=False, shell_complete=complete_types)
@click.option("--app", metavar="APP", shell_complete=complete_apps, help="The app the event is about (its appId); with --file, the default for lines without one.")
@click.option("--data", metavar="JSON", help="The payload, a JSON object.")
@click.option(
    "-p", "--payload", "pairs", multiple=True, metavar="KEY=VALUE",
    help="A payload field (repeatable): VALUE is JSON when it parses as JSON, else a string; dotted keys nest (a.b=1).",
)  # fmt: skip
@click.option("--file", "file", type=click.Path(dir_okay=False, allow_dash=True), metavar="PATH", help="NDJSON events, one per line ('-': stdin); TYPE and --app fill in missing fields.")
@click.option("--json", "as_json", is_flag=True, help="Print the hub's reply as JSON (with --file: one reply per event); a repeat of an earlier key has \"duplicate\": true.")
@click.option("--key", metavar="KEY", help="Idempotency key (1-128 printable characters): the hub publishes an event with a key it has seen within its dedupe window only once. With --file, the prefix of each line's key (KEY:LINE) unless the line has a \"key\".")
@click.option("--stream", is_flag=True, help="With --file: validate and send each line as it arrives, instead of reading the whole input first.")
@click.option("--no-retry", is_flag=True, help="Exit 3 when the connection is lost, instead of reconnecting and re-sending what was not acknowledged.")
@click.option("--force", is_flag=True, help="Publish TYPE even when it looks like a typo of a catalogue type (deploy.complete).")
@click.pass_obj
def emit(
    settings: Settings,
    event_type: str | None,
    app: str | None,
    data: str | None,
    pairs: tuple[str, ...],
    file: str | None,
    as_json: bool,
    force: bool,
    key: str | None,
    stream: bool,
    no_retry: bool,
) -> None:
    """Publish an event (or many, from NDJSON) and print the id the hub assigned.

    Everything is checked against the hub's rules before anything is sent:
    a file or stdin is read to its end and checked whole (or, with --stream,
    line by line as it arrives), then published over one connection, batched
    and pipelined. A catalogue type (deploy.*, forge.*, teardown.*, app.*)
    must carry its fields: every missing one is named at once, with a
    command that works. A type one or two letters away from a catalogue type
    is refused as a typo unless --force is given. Every event carries a key
    (a random one per run plus the line number, unless given), so when the
    connection drops before every acknowledgement is in, norn reconnects and
    re-sends exactly the events not acknowledged: each is published once,
    and one id per input event is printed, in input order. While the hub is
    away, stderr shows one status line updated in place on a terminal, and
    elsewhere one line when the hub is lost and one when it is back.

    \b
    Examples:
      norn emit deploy.step --app mail-agent -p step=build -p status=building
      norn emit backup.completed --app db --data '{"sizeMb": 120}' --json
      norn emit --file events.ndjson --key nightly-2026-11-27
      producer | norn emit --file - --stream --json
      norn --url ws://old:8800 tail --json --last 100 --count 100 | norn emit --file -
    """
    from norn_cli.client import emit as emitting

    if file is not None and (data is not None or pairs):
        raise click.UsageError("--file takes whole events; use --data and -p with TYPE instead")
    if file is None and (event_type is None or app is None):
        raise click.UsageError("give TYPE and --app (or --file PATH, '-' for stdin)")
    if stream and file is None:
        raise click.UsageError("--stream reads --file (use --file - for stdin)")
    if key is not None:
        from norn_cli.core.events import event_key

        try:
            event_key({"key": key})
        except NornError as exc:
            raise click.BadParameter(exc.message.replace("event 'key'", "it"), param_hint="'--key'") from None
    endpoint = hub_endpoint(settings)
    out = sys.stdout
    err = _Stderr(settings)
    if file is None:
        assert event_type is not None and app is not None
        _check_event(event_type, app, data, pairs, force)
        reply = run(err.around(emitting.emit_from_flags(
            endpoint, event_type, app, data=data, pairs=pairs, key=key, token=settings.token, cafile=settings.cafile,
            retry=not no_retry, on_state=err.connection,
        )))  # fmt: skip
        out.write((json_line(reply) if as_json else str(reply.get("id", ""))) + "\n")
        return

    def on_ack(event_id: str, duplicate: bool) -> None:
        if as_json:
            out.write(json_line({"ok": True, "id": event_id, "duplicate": True} if duplicate else {"ok": True, "id": event_id}) + "\n")
        else:
            out.write(event_id + "\n")
        if stream:
            out.flush()

    try:
        lines = click.open_file(file, "rb")
    except OSError as exc:
        raise click.BadParameter(f"cannot read {file}: {exc.strerror or exc}", param_hint="'--file'") from None
    with lines:
        stats = run(err.around(emitting.emit_ndjson(
            endpoint, lines, on_ack=on_ack, source="stdin" if file == "-" else file, stream=stream, key=key,
            default_type=event_type, default_app=app, token=settings.token, cafile=settings.cafile,
            retry=not no_retry, on_state=err.connection,
        )))  # fmt: skip
    out.flush()
    if settings.verbose or stats.reconnects:
        count = stats.acked
        extra = f" ({stats.duplicates} already published, {stats.reconnects} reconnects)" if stats.reconnects or stats.duplicates else ""
        notice(f"published {count} event{'' if count == 1 else 's'} to {endpoint}{extra}")


def _check_event(event_type: str, app: str, data: str | None, pairs: tuple[str, ...], force: bool) -> None:
    """Refuse a likely typo of a catalogue type, and a payload that lacks fields, with a command that works."""
    import shlex

    from norn_cli.client.emit import build_event, build_payload
    from norn_cli.core.events import PayloadError, example_payload, loads, suggest_type

    code = int(ExitCode.USAGE)
    suggestion = None if force else suggest_type(event_type)
    if suggestion is not None:
        fail(f"{event_type!r} is not a catalogue type: did you mean {suggestion}? (--force publishes {event_type} as it is)", code)
    try:
        payload = build_payload(data, pairs)
        build_event(event_type, app, payload)
    except PayloadError as exc:
        words = ["norn", "emit", event_type, "--app", app]
        for key, value in example_payload(event_type, payload).items():
            words += ["-p", f"{key}={_pair_value(value, loads)}"]
        fail(f"{exc.message}\n  for example: {shlex.join(words)}", code)
    except NornError as exc:
        fail(exc.message, int(exc.exit_code))


def _pair_value(value: Any, loads: Callable[[str], Any]) -> str:
    """VALUE of `-p KEY=VALUE` that reads back as `value` (-p parses VALUE as JSON when it can)."""
    if isinstance(value, str):
        try:
            loads(value)
        except ValueError:
            return value
    return json_line(value)


@with_global_options()
@click.command(cls=NornCommand, exit_codes={
    0: "--count or --until was met, or stdout was closed", 1: "--until X.completed: X.failed came first",
    2: "", 3: "the hub is unreachable (or, with --no-reconnect, the connection was lost)", 4: "",
    5: "--timeout passed first", 130: "",
})  # fmt: skip
@click.option("--app", "apps", multiple=True, metavar="APP", shell_complete=complete_apps, help="Only this app's events (repeatable: any of them).")
@click.option("--type", "types", multiple=True, metavar="PATTERN", shell_complete=complete_type_patterns, help="Only these types, '*' a wildcard, e.g. 'deploy.*' (repeatable).")
@click.option("--since", metavar="ID", callback=_check_since, help="First replay the retained events after this id.")
@click.option("--last", type=click.IntRange(0), metavar="N", help="First replay the last N retained events.")
@click.option("--count", type=click.IntRange(1), metavar="N", help="Exit 0 after N events.")
@click.option("--until", metavar="TYPE", help="Exit 0 at the first event of TYPE (a glob); for X.completed, exit 1 if X.failed comes first.")
@click.option(
    "--timeout", type=Duration(), metavar="DURATION",
    help="Give up after DURATION (10s, 2m, 1h30m; bare number: seconds) with exit 5 unless --count/--until was met (without them: unless any event arrived).",
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

    A lost connection is retried with backoff and resumed after the last
    event printed, so nothing still retained is missed or repeated. On a
    terminal, stderr shows one status line updated in place while the hub is
    away, then one line when it is back; elsewhere, one line when the hub is
    lost and one when it is back. In --format templates, a payload key an event lacks
    renders empty; a name other than type, appId, payload, id, ts is an error.

    \b
    Examples:
      norn tail --app mail-agent --type 'deploy.*'
      norn tail --app mail-agent --until deploy.completed --timeout 10m
      norn tail --json --last 100 | jq -r .type
      norn tail --format '{ts} {appId} {type} {payload[step]}'
    """
    from norn_cli.client import tail as tailing

    if as_json and template is not None:
        raise click.UsageError("--json and --format are alternatives; pick one")
    endpoint = hub_endpoint(settings)
    on_frame = _frame_writer(settings, as_json, template)
    err = _Stderr(settings)
    on_connect = (lambda url: err.notice(f"subscribed to {url}")) if settings.verbose else None
    run(err.around(tailing.tail(
        endpoint, on_frame, apps=apps, types=types, since=since, last=last,
        stop=tailing.Stop(count=count, until=until, timeout=timeout), reconnect=not no_reconnect,
        cafile=settings.cafile, hub_frames=as_json, on_gap=lambda since, oldest: _warn_gap(err.notice, str(endpoint), since, oldest),
        on_state=err.connection, on_connect=on_connect,
    )), stream=True)  # fmt: skip


class _Stderr:
    """tail's and emit's stderr: connection changes on one StatusLine (made at the first change), and notices
    that never land on the end of a status line left on screen."""

    def __init__(self, settings: Settings) -> None:
        self.no_color = settings.no_color
        self._status: StatusLine | None = None

    def connection(self, state: ConnectionState) -> None:
        if self._status is None:
            from rich.console import Console

            from norn_cli.render.reconnect import StatusLine

            self._status = StatusLine(Console(stderr=True, no_color=self.no_color or None, highlight=False))
        self._status.show(state)

    def notice(self, message: str) -> None:
        self.end()
        notice(message)

    def end(self) -> None:
        if self._status is not None:
            self._status.end()

    async def around(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro`; however it ends, finish the status line before anything says why."""
        try:
            return await coro
        finally:
            self.end()


def _warn_gap(say: Callable[[str], None], hub: str, since: str, oldest: str) -> None:
    """Name the hub and the range that may be missing."""
    if oldest:
        say(f"warning: events after {since} and before {oldest} may be missing: the hub at {hub} no longer has them")
    else:
        say(
            f"warning: events after {since} may be missing: the hub at {hub} has nothing from before it reconnected us "
            "(it restarted or trimmed its history)"
        )


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
