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


# Untrusted text at the edges: every C0 control (newline, CR, tab and ESC among them), DEL and
# every C1 control, every bidirectional control and the Unicode line separators, and escape
# sequences (a colour, a window title, a hyperlink, a terminal reset, a character set).
C0 = "".join(map(chr, range(0x20)))
C1 = "\x7f" + "".join(map(chr, range(0x80, 0xA0)))
BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u2028\u2029"
SEQUENCES = "\x1b[31mred\x1b[0m \x1b]0;title\x07 \x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\ \x1bc\x1b(B"
# ...and how each must show, written out.
C0_SHOWN = (
    r"\x00\x01\x02\x03\x04\x05\x06\x07\x08\t\n\x0b\x0c\r\x0e\x0f"
    r"\x10\x11\x12\x13\x14\x15\x16\x17\x18\x19\x1a\e\x1c\x1d\x1e\x1f"
)
C1_SHOWN = (
    r"\x7f\x80\x81\x82\x83\x84\x85\x86\x87\x88\x89\x8a\x8b\x8c\x8d\x8e\x8f"
    r"\x90\x91\x92\x93\x94\x95\x96\x97\x98\x99\x9a\x9b\x9c\x9d\x9e\x9f"
)
BIDI_SHOWN = r"\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u2028\u2029"
SEQUENCES_SHOWN = r"\e[31mred\e[0m \e]0;title\x07 \e]8;;http://x\e\link\e]8;;\e\ \ec\e(B"


def test_escape_control_shows_control_characters() -> None:
    """Every control character, bidi control and escape sequence shows as an escape; other text is untouched."""
    assert escape_control(C0) == C0_SHOWN
    assert escape_control(C1) == C1_SHOWN
    assert escape_control(BIDI) == BIDI_SHOWN
    assert escape_control(SEQUENCES) == SEQUENCES_SHOWN
    assert escape_control("a\x1b[31mred\x07\nb\tc\x7f\u202e") == "a\\e[31mred\\x07\\nb\\tc\\x7f\\u202e"
    assert escape_control("plain ünïcode ✓ \u200d \\ [bold]") == "plain ünïcode ✓ \u200d \\ [bold]"


def test_program_output_drops_sequences_and_tabs_and_escapes_the_rest_alike() -> None:
    """A step's output loses its escape sequences and tabs; every other character is treated exactly as elsewhere."""
    assert escape_control(SEQUENCES, program_output=True) == "red  link "
    assert escape_control(C0, program_output=True) == C0_SHOWN.replace(r"\t", "    ")  # a lone ESC is no sequence
    assert escape_control(C1, program_output=True) == C1_SHOWN
    assert escape_control(BIDI, program_output=True) == BIDI_SHOWN
    assert escape_control("\x1b\x1b[0m[31mx\x1b[", program_output=True) == r"\e[31mx"  # what is left is escaped
    for ch in (C0 + C1 + BIDI).replace("\t", "").replace("\x1b", ""):
        assert escape_control(ch, program_output=True) == escape_control(ch), repr(ch)


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


def test_event_line_escapes_every_control_character() -> None:
    """Controls, bidi characters and escape sequences in any field show as escapes; colour codes are the renderer's own."""
    env = {
        "type": "x.y", "appId": "app", "ts": "2026-11-27T13:27:16.123Z",
        "payload": {"step": C0, "status": C1, "ref": BIDI, "error": SEQUENCES, "output": "\x1b[32mok\x1b[0m\tdone\u202e\x1b[2J"},
    }  # fmt: skip
    assert _render(env, terminal=False) == (
        f"13:27:16.123 app            x.y                {C0_SHOWN} {C1_SHOWN} ref={BIDI_SHOWN} error: {SEQUENCES_SHOWN}"
        r" ok    done\u202e" "\n"
    )  # the output is a program's: its colours and tabs go, the rest is escaped
    assert _render(env, terminal=True) == (
        f"\x1b[2m13:27:16.123\x1b[0m \x1b[1mapp           \x1b[0m x.y                \x1b[1m{C0_SHOWN}\x1b[0m {C1_SHOWN}"
        f" ref={BIDI_SHOWN} \x1b[31merror: {SEQUENCES_SHOWN}\x1b[0m \x1b[2mok    done\\u202e\x1b[0m\n"
    )


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
