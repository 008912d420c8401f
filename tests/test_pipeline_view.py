"""The pipeline view as the user sees it: a live terminal, plain lines in a pipe, NDJSON."""

from __future__ import annotations

import io
import json
import re
from typing import Any

import pytest
from rich.console import Console
from test_render import BIDI, BIDI_SHOWN, C0, C0_SHOWN, C1, C1_SHOWN, SEQUENCES, SEQUENCES_SHOWN
from test_run_state import T0, deployment, env

from norn_cli.render.pipeline_view import (
    JsonView,
    LinesView,
    LiveView,
    PipelineRenderer,
    fmt_clock,
    make_view,
)
from norn_cli.core.run_state import RunState
from norn_cli.render.plain import escape_control

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
PLAN = [{"name": n, "status": "pending"} for n in ("build", "test", "push")]

STARTED = [
    env("deploy.queued", deployment("queued", PLAN)),
    env("deploy.step", {"step": "build", "status": "running", "runId": "r1"}, T0 + 0.1),
    env("deploy.step", {"step": "build", "status": "running", "runId": "r1", "output": "step 1/4\nstep 4/4"}, T0 + 1),
    env("deploy.step", {"step": "build", "status": "completed", "runId": "r1", "durationMs": 1234}, T0 + 1.3),
    env("deploy.step", {"step": "test", "status": "running", "runId": "r1"}, T0 + 1.3),
    env("deploy.step", {"step": "test", "status": "running", "runId": "r1",
                        "output": "collected 12 items\n\x1b[32mtest_a PASSED\x1b[0m"}, T0 + 2),  # fmt: skip
]
FAILED = [
    env("deploy.step", {"step": "test", "status": "failed", "runId": "r1", "durationMs": 1700, "error": "exit status 1"}, T0 + 3),
    env("deploy.failed", deployment("failed", PLAN, error="exit status 1", step="test"), T0 + 3),
]
SUCCEEDED = [
    env("deploy.step", {"step": "test", "status": "completed", "runId": "r1", "durationMs": 900}, T0 + 2.2),
    env("deploy.step", {"step": "push", "status": "running", "runId": "r1"}, T0 + 2.2),
    env("deploy.step", {"step": "push", "status": "completed", "runId": "r1", "durationMs": 300}, T0 + 2.5),
    env("deploy.completed", deployment("completed", PLAN), T0 + 2.5),
]


def console(file: io.StringIO, terminal: bool) -> Console:
    return Console(file=file, width=80, force_terminal=terminal, color_system="standard" if terminal else None)


def plain(text: str) -> list[str]:
    """The screen's lines without colour codes or trailing blanks."""
    return [line.rstrip() for line in _ANSI.sub("", text).splitlines()]


def state_of(envs: list[dict[str, Any]]) -> RunState:
    state = RunState()
    for e in envs:
        state.apply(e, now=T0 + 100)
    return state


def test_while_a_step_runs() -> None:
    """Header, ✓ with duration, a spinner with the step's clock and its last output, pending dim, the bar."""
    out = io.StringIO()
    console(out, True).print(PipelineRenderer().render(state_of(STARTED), now=T0 + 4))
    lines = plain(out.getvalue())
    assert lines[0] == "deploy web @ abc  run r1"
    assert lines[1] == "✓ build  1.2s"
    assert re.fullmatch(r"\S test   0:02", lines[2])  # the spinner's frame, then 2.7 s of running
    assert lines[3:5] == ["    │ collected 12 items", "    │ test_a PASSED"]
    assert lines[5] == "· push   pending"
    assert re.fullmatch(r"[━╺╸ ]+ 1/3  0:04", lines[6])
    assert len(lines) == 7
    assert "\x1b[2m· push   pending" in out.getvalue()  # pending is dim


def test_after_a_failure() -> None:
    """The live view ends with ✗ on the step and a red panel naming the step, the error and its output."""
    out = io.StringIO()
    view = LiveView(console(out, True), console(io.StringIO(), True), clock=lambda: T0 + 4)
    view.start()
    for e in STARTED + FAILED:
        view.apply(e)
    view.stop()
    screen = out.getvalue()
    lines = plain(screen)
    panel = lines[lines.index(next(line for line in lines if line.startswith("╭"))):]
    assert [line[1:-1].strip() for line in panel[1:-1]] == [
        "✗ deploy of web failed at test after 3.0s",
        "exit status 1",
        "│ collected 12 items",
        "│ test_a PASSED",
    ]
    assert "✗ test   1.7s" in lines and "· push   pending" in lines
    assert "\x1b[31m╭" in screen  # a red panel


def test_after_success() -> None:
    """Every step ✓ with its duration, a full bar, and a green panel with the total time."""
    out = io.StringIO()
    view = LiveView(console(out, True), console(io.StringIO(), True), clock=lambda: T0 + 9)
    view.start()
    for e in STARTED + SUCCEEDED:
        view.apply(e)
    view.stop()
    lines = plain(out.getvalue())
    assert lines[-8:] == [
        "deploy web @ abc  run r1",
        "✓ build  1.2s",
        "✓ test   900ms",
        "✓ push   300ms",
        "━" * 70 + " 3/3  0:02",
        "╭───────────────────────────────────╮",
        "│ ✓ deploy of web completed in 2.5s │",
        "╰───────────────────────────────────╯",
    ]
    assert "\x1b[32m╭" in out.getvalue()  # a green panel


def test_plain_lines_when_not_a_terminal() -> None:
    """A pipe gets one plain line per step change, the failing step's output, and the outcome."""
    out = io.StringIO()
    view = LinesView(console(out, False), console(io.StringIO(), False), clock=lambda: T0 + 4)
    for e in STARTED + FAILED:
        view.apply(e)
    assert out.getvalue() == (
        "deploy web @ abc  run r1: build, test, push\n"
        "build: running\n"
        "build | step 1/4\n"
        "build | step 4/4\n"
        "build: completed in 1.2s\n"
        "test: running\n"
        "test | collected 12 items\n"
        "test | test_a PASSED\n"
        "test: failed in 1.7s: exit status 1\n"
        "last 2 output lines of test:\n"
        "  | collected 12 items\n"
        "  | test_a PASSED\n"
        "deploy of web failed at test after 3.0s: exit status 1\n"
        "full output: norn watch r1 --json\n"
    )


def test_quiet_hides_output_and_lines_limits_the_tail() -> None:
    """--quiet: no `step | line` lines; --lines 1: only the last output line at the failure."""
    out = io.StringIO()
    view = LinesView(console(out, False), console(io.StringIO(), False), clock=lambda: T0 + 4, quiet=True, lines=1)
    for e in STARTED + FAILED:
        view.apply(e)
    assert out.getvalue().splitlines()[-5:] == [
        "test: failed in 1.7s: exit status 1",
        "last 1 output line of test:",
        "  | test_a PASSED",
        "deploy of web failed at test after 3.0s: exit status 1",
        "full output: norn watch r1 --json",
    ]
    assert not [line for line in out.getvalue().splitlines() if " | " in line and not line.startswith("  |")]


def test_a_silent_step_gets_a_heartbeat() -> None:
    """A running step silent for 30 s prints `NAME: still running, 30s`, then again every 30 s; output resets it."""
    out = io.StringIO()
    now = [T0]
    view = LinesView(console(out, False), console(io.StringIO(), False), clock=lambda: now[0])
    view.apply(env("deploy.step", {"step": "long", "status": "running", "runId": "r1"}, T0))
    for t in (10, 29.9, 30, 45, 60):
        now[0] = T0 + t
        view.refresh()
    now[0] = T0 + 70
    view.apply(env("deploy.step", {"step": "long", "status": "running", "runId": "r1", "output": "tick"}, T0 + 70))
    for t in (99, 100):
        now[0] = T0 + t
        view.refresh()
    assert out.getvalue().splitlines()[1:] == [
        "long: running",
        "long: still running, 30s",
        "long: still running, 1m00s",
        "long | tick",
        "long: still running, 1m40s",
    ]


def test_plain_lines_for_a_norn_style_run() -> None:
    """Statuses other than norn's own are printed as published."""
    out = io.StringIO()
    view = LinesView(console(out, False), console(io.StringIO(), False), clock=lambda: T0)
    view.apply(env("deploy.step", {"step": "build", "status": "building"}, T0))
    view.apply(env("deploy.step", {"step": "ship", "status": "deployed", "durationMs": "2.5s"}, T0 + 3))
    view.apply(env("deploy.completed", {"id": "d1", "app": "web", "ref": "x", "status": "complete",
                                        "steps": [], "startedAt": "2027-01-15T08:00:00.000Z"}, T0 + 3))  # fmt: skip
    assert out.getvalue().splitlines() == [
        "deploy web",
        "build: building",
        "build: completed in 3.0s",
        "ship: deployed in 2.5s",
        "deploy of web completed in 3.0s",
    ]


def test_json_is_exactly_the_envelopes() -> None:
    """--json: one compact JSON envelope per line, as received, and nothing else on stdout."""
    out, err = io.StringIO(), io.StringIO()
    view = JsonView(out, console(err, False))
    for e in STARTED + SUCCEEDED:
        view.apply(e)
    view.notice("hub lost, reconnecting")
    lines = out.getvalue().splitlines()
    assert [json.loads(line) for line in lines] == STARTED + SUCCEEDED
    assert lines[1] == json.dumps(STARTED[1], separators=(",", ":"), ensure_ascii=False)
    assert view.state.ok and err.getvalue() == "hub lost, reconnecting\n"


def test_untrusted_text_is_not_interpreted() -> None:
    """Markup stays literal; a step's colour codes are dropped; other control characters are escaped."""
    assert escape_control("\x1b[1;32mok\x1b[0m \x07bell\ttab", program_output=True) == "ok \\x07bell    tab"
    out = io.StringIO()
    state = state_of([env("forge.step", {"step": "[bold]x[/bold]", "status": "running", "output": "[red]no[/red]"})])
    console(out, True).print(PipelineRenderer().render(state, now=T0))
    assert "[bold]x[/bold]" in out.getvalue() and "│ [red]no[/red]" in out.getvalue()


def test_plain_lines_escape_every_control_character() -> None:
    """In a pipe, controls, bidi characters and sequences in every field and notice show as escapes."""
    out, err = io.StringIO(), io.StringIO()
    view = LinesView(console(out, False), console(err, False), clock=lambda: T0 + 4)
    plan = [{"name": C0, "status": "pending"}]
    for e in [
        env("deploy.queued", deployment("queued", plan, ref=BIDI)),
        env("deploy.step", {"step": C0, "status": C1, "runId": "r1", "output": f"\x1b[32mok\x1b[0m\tdone\u202e\x1b[2J\n{C1}"}, T0 + 1),
        env("deploy.step", {"step": C0, "status": "failed", "runId": "r1", "error": SEQUENCES, "durationMs": 119_600}, T0 + 2),
        env("deploy.failed", deployment("failed", plan, ref=BIDI, error=SEQUENCES, step=C0), T0 + 2),
    ]:
        view.apply(e)
    view.notice(C0 + C1 + BIDI + SEQUENCES)
    before_nel, after_nel = C1_SHOWN.split(r"\x85")  # NEL ends a line of output, as in a terminal
    assert out.getvalue().splitlines() == [
        f"deploy web @ {BIDI_SHOWN}  run r1: {C0_SHOWN}",
        f"{C0_SHOWN}: {C1_SHOWN}",
        rf"{C0_SHOWN} | ok    done\u202e",  # a program's output: its colours and tabs go, the rest is escaped
        f"{C0_SHOWN} | {before_nel}",
        f"{C0_SHOWN} | {after_nel}",
        f"{C0_SHOWN}: failed in 2m00s: {SEQUENCES_SHOWN}",
        f"last 3 output lines of {C0_SHOWN}:",
        r"  | ok    done\u202e",
        f"  | {before_nel}",
        f"  | {after_nel}",
        f"deploy of web failed at {C0_SHOWN} after 2.0s: {SEQUENCES_SHOWN}",
        "full output: norn watch r1 --json",
    ]
    assert err.getvalue() == C0_SHOWN + C1_SHOWN + BIDI_SHOWN + SEQUENCES_SHOWN + "\n"


def test_live_view_escapes_every_control_character() -> None:
    """In a terminal, the only escape sequences on screen are the view's own colours."""
    names = ["a\x1b[2Jb", "c\u202ed\n", "e\x9bf\t"]
    plan = [{"name": n, "status": "pending"} for n in names]
    output = "\x1b[1;32mPASSED\x1b[0m\ttest_a\u202e\x1b]0;pwned\x07\n\x00ok\x7f"
    error = "\r\x1b[2Kboom\u2067"
    state = state_of([
        env("deploy.queued", deployment("queued", plan, ref="v\u2066\x07")),
        env("deploy.step", {"step": names[0], "status": "done\x08", "runId": "r1", "durationMs": 999.6}, T0 + 1),
        env("deploy.step", {"step": names[1], "status": "running", "runId": "r1", "output": output}, T0 + 2),
    ])  # fmt: skip
    running = io.StringIO()
    console(running, True).print(PipelineRenderer().render(state, now=T0 + 3))
    lines = plain(running.getvalue())
    assert re.fullmatch(r"\S c\\u202ed\\n  0:01", lines[2])  # the spinner's frame, then the step's clock
    assert lines[3:5] == [r"    │ PASSED    test_a\u202e", r"    │ \x00ok\x7f"]
    for e in [
        env("deploy.step", {"step": names[1], "status": "failed", "runId": "r1", "error": error, "durationMs": 59_950}, T0 + 3),
        env("deploy.failed", deployment("failed", plan, ref="v\u2066\x07", error=error, step=names[1]), T0 + 3),
    ]:
        state.apply(e, now=T0 + 100)
    out = io.StringIO()
    screen = console(out, True)
    renderer = PipelineRenderer()
    screen.print(renderer.render(state, now=T0 + 4))
    screen.print(renderer.outcome(state, now=T0 + 4))
    assert plain(out.getvalue()) == [
        r"deploy web @ v\u2066\x07  run r1",
        r"✓ a\e[2Jb     1.0s",
        r"✗ c\u202ed\n  1m00s",
        r"· e\x9bf\t    pending",
        "━" * 46 + "╸" + "━" * 23 + " 2/3  0:03",
        "╭─────────────────────────────────────────────────╮",
        r"│ ✗ deploy of web failed at c\u202ed\n after 3.0s │",
        r"│   \r\e[2Kboom\u2067                             │",
        r"│   │ PASSED    test_a\u202e                      │",
        r"│   │ \x00ok\x7f                                  │",
        "╰─────────────────────────────────────────────────╯",
    ]
    own_colours = re.sub(r"\x1b\[[0-9;]*m", "", out.getvalue() + running.getvalue())
    assert {ch for ch in own_colours if escape_control(ch) != ch} == {"\n"}


def test_durations_carry_across_units() -> None:
    """Step and run durations use the one duration format: 119.6 s is 2m00s, 59.95 s is 1m00s, 999.6 ms is 1.0s."""
    run = [
        env("deploy.queued", deployment("queued", PLAN)),
        env("deploy.step", {"step": "build", "status": "completed", "runId": "r1", "durationMs": 119_600}, T0 + 10),
        env("deploy.step", {"step": "test", "status": "completed", "runId": "r1", "durationMs": 999.6}, T0 + 20),
        env("deploy.step", {"step": "push", "status": "completed", "runId": "r1", "durationMs": "59.95s"}, T0 + 59.95),
        env("deploy.completed", deployment("completed", PLAN), T0 + 59.95),
    ]
    out = io.StringIO()
    view = LinesView(console(out, False), console(io.StringIO(), False), clock=lambda: T0 + 60)
    for e in run:
        view.apply(e)
    assert out.getvalue().splitlines() == [
        "deploy web @ abc  run r1: build, test, push",
        "build: completed in 2m00s",
        "test: completed in 1.0s",
        "push: completed in 1m00s",
        "deploy of web completed in 1m00s",
    ]
    screen = io.StringIO()
    console(screen, True).print(PipelineRenderer().render(view.state, now=T0 + 60))
    assert plain(screen.getvalue())[1:4] == ["✓ build  2m00s", "✓ test   1.0s", "✓ push   1m00s"]


def test_fmt_clock() -> None:
    """A clock for running steps and the whole run."""
    assert (fmt_clock(4.9), fmt_clock(750), fmt_clock(3723)) == ("0:04", "12:30", "1:02:03")


def test_make_view_fits_the_output(monkeypatch: pytest.MonkeyPatch) -> None:
    """--json gives NDJSON; an interactive terminal the live view; anything else plain lines."""
    monkeypatch.delenv("TTY_INTERACTIVE", raising=False)
    assert isinstance(make_view(json=True, no_color=False, stdout=io.StringIO()), JsonView)
    assert isinstance(make_view(json=False, no_color=False, stdout=io.StringIO()), LinesView)
    monkeypatch.setenv("TTY_INTERACTIVE", "1")
    assert isinstance(make_view(json=False, no_color=True, stdout=io.StringIO()), LiveView)
