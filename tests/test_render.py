"""render: escaping, --format templates and the rich event line, into in-memory consoles."""

from __future__ import annotations

import math
from datetime import timezone
from io import StringIO
from typing import Any

import pytest
from rich.console import Console

from norn_cli.render.lines import EventLines, event_line, status_style, type_style
from norn_cli.render.plain import Template, TemplateError, escape_control, first_line, format_duration

STEP = {
    "type": "deploy.step",
    "appId": "mail-agent",
    "payload": {"step": "build", "status": "building", "durationMs": 1234, "output": "Step 1/9\nStep 2/9", "runId": "r1"},
    "id": "1764250036123-0",
    "ts": "2026-11-27T13:27:16.123Z",
}


def test_escape_control_shows_control_characters() -> None:
    """Terminal escapes, newlines and bidi overrides cannot reach the terminal raw."""
    assert escape_control("a\x1b[31mred\x07\nb\tc\x7f\u202e") == "a\\e[31mred\\x07\\nb\\tc\\x7f\\u202e"
    assert escape_control("plain ünïcode ✓") == "plain ünïcode ✓"


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (0, "0ms"),
        (0.5, "1ms"),  # halves round up
        (999.4, "999ms"),
        (999.5, "1.0s"),  # rounds to 1000 ms: carried into seconds, never "1000ms"
        (999.6, "1.0s"),
        (1234, "1.2s"),
        (59_940, "59.9s"),
        (59_950, "1m00s"),  # rounds to 60.0 s: carried into minutes, never "60.0s"
        (60_000, "1m00s"),
        (65_000, "1m05s"),
        (119_400, "1m59s"),
        (119_600, "2m00s"),  # never "1m60s"
        (3_599_400, "59m59s"),
        (3_599_500, "1h00m"),  # never "59m60s" or "60m00s"
        (3_720_000, "1h02m"),
        (3_749_999, "1h02m"),
        (3_750_000, "1h03m"),
        (90_000_000, "25h00m"),
        (-0.4, "0ms"),
        (-1234, "-1.2s"),  # a clock that went back keeps its sign
        (math.nan, "?"),
        (math.inf, "?"),
        (-math.inf, "?"),
    ],
)
def test_format_duration_carries_across_units(ms: float, text: str) -> None:
    """Durations read the way people say them, and a value that rounds up carries into the next unit."""
    assert format_duration(ms) == text


def test_first_line() -> None:
    """The first non-empty line, marked when more follow."""
    assert first_line("\n  \nfirst\nsecond") == "first …"
    assert first_line("only") == "only"
    assert first_line("") == ""


def test_template_renders_fields_and_missing_keys_empty() -> None:
    """Payload keys an event lacks render empty; both key spellings work."""
    tpl = Template("{ts} {appId} {type} {payload[step]} {payload.status} [{payload[nope]}] {payload[step]:>7}|")
    assert tpl.render(STEP) == "2026-11-27T13:27:16.123Z mail-agent deploy.step build building []   build|"
    assert Template("{payload}").render({"payload": {"a": [1, True, None]}}) == '{"a":[1,true,null]}'
    assert Template("{payload[n]:05d}").render({"payload": {"n": 42}}) == "00042"
    assert Template("{payload[n]:05d}").render({"payload": {"n": "x"}}) == "x"
    assert Template("{payload[list][1]}").render({"payload": {"list": ["a", "b"]}}) == "b"
    assert Template("{{literal}} {type}").render({"type": "a.b"}) == "{literal} a.b"


def test_template_escapes_control_characters_in_values() -> None:
    """One event stays one line whatever its payload holds."""
    assert Template("{payload[o]}").render({"payload": {"o": "a\nb\x1b"}}) == "a\\nb\\e"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{typo}", "unknown field {typo}"),
        ("{}", "template fields need a name"),
        ("{0}", "template fields need a name"),
        ("{payload[step}", "bad template"),
        ("{type", "bad template"),
        ("{type:{width}}", "nested fields are not supported"),
    ],
)
def test_bad_templates_fail_up_front(text: str, message: str) -> None:
    """A template that could never work is an error before any event."""
    with pytest.raises(TemplateError, match=message.replace("{", r"\{").replace("[", r"\[")):
        Template(text)


def test_styles() -> None:
    """Outcomes colour the type; statuses colour themselves; unknown ones stay plain."""
    assert type_style("deploy.failed") == "bold red"
    assert type_style("forge.completed") == "bold green"
    assert type_style("deploy.step") == "blue"
    assert type_style("backup.started") == ""
    assert status_style("FAILED") == "bold red"
    assert status_style("deployed") == "green"
    assert status_style("building") == "yellow"
    assert status_style("weird-new-status") == ""


def _render(env: dict[str, Any], *, terminal: bool) -> str:
    buf = StringIO()
    console = Console(file=buf, width=80, force_terminal=terminal, color_system="standard" if terminal else None)
    EventLines(console, tz=timezone.utc).show(env)
    return buf.getvalue()


def test_event_line_plain_when_piped() -> None:
    """Piped output is plain text, one line, never wrapped at the console width."""
    assert _render(STEP, terminal=False) == (
        "13:27:16.123 mail-agent     deploy.step        build building 1.2s Step 1/9 …\n"
    )
    long = {**STEP, "payload": {"error": "x" * 200}, "type": "deploy.failed"}
    out = _render(long, terminal=False)
    assert out.count("\n") == 1 and out.endswith("x" * 200 + "\n")


def test_event_line_coloured_in_a_terminal() -> None:
    """A terminal gets colour: the type by family, the status by outcome."""
    out = _render(STEP, terminal=True)
    assert "\x1b[34mdeploy.step" in out  # blue: the deploy family
    assert "\x1b[33mbuilding" in out  # yellow: busy
    failed = {**STEP, "type": "deploy.failed", "payload": {"error": "boom\ntrace"}}
    out = _render(failed, terminal=True)
    assert "\x1b[1;31mdeploy.failed" in out and "error: boom …" in out


def test_event_line_escapes_untrusted_text_and_markup() -> None:
    """Payload text is shown literally: no markup, no raw control characters."""
    env = {"type": "x.y", "appId": "app", "ts": "2026-11-27T13:27:16.123Z", "payload": {"step": "[bold]s\x1b[2J", "status": "ok"}}
    assert _render(env, terminal=False) == "13:27:16.123 app            x.y                [bold]s\\e[2J ok\n"


def test_event_line_other_payloads_as_json() -> None:
    """A payload with none of the known fields is shown as compact JSON."""
    env = {"type": "backup.completed", "appId": "db", "ts": "2026-11-27T13:27:16.123Z", "payload": {"sizeMb": 120}}
    assert event_line(env, tz=timezone.utc).plain == '13:27:16.123 db             backup.completed   {"sizeMb":120}'
    env = {"type": "app.status", "appId": "db", "ts": "bad", "payload": {"healthy": False, "responseMs": 12}}
    assert event_line(env, tz=timezone.utc).plain == "bad          db             app.status         unhealthy 12ms"


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (119_600, "2m00s"),
        (59_950, "1m00s"),
        (999.6, "1.0s"),
        ("1234", "1.2s"),  # numeric text is a number
        (" 2.5s ", "2.5s"),  # other text is shown as published
        ("about\n3s", "about\\n3s"),
        (-5, "-5ms"),
        (math.nan, "?"),
        (10**400, "?"),  # an integer no float holds
        ("", None),
        (True, None),
        (None, None),
        ([1], None),
        ({"ms": 1}, None),
    ],
)
def test_event_line_durations_from_raw_payload_values(value: Any, shown: str | None) -> None:
    """durationMs and responseMs as published, whatever their type, through the one duration format."""
    for key in ("durationMs", "responseMs"):
        env = {"type": "x.y", "appId": "db", "ts": "2026-11-27T13:27:16.123Z", "payload": {"status": "ok", key: value}}
        tail = f" {shown}" if shown is not None else ""
        assert event_line(env, tz=timezone.utc).plain == f"13:27:16.123 db             x.y                ok{tail}"
