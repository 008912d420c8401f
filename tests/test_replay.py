"""`norn replay`: a `norn tail --json` recording re-published in order, paced, filtered and renamed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import ThreadHub, run_norn

from norn_cli.client.endpoint import Endpoint
from norn_cli.client.replay import Recorded, read_recording, replay, schedule

RECORDING = [
    {"id": "1764237600000-0", "ts": "2026-11-27T10:00:00.000Z", "type": "deploy.step", "appId": "mail-agent", "payload": {"step": "build", "status": "running"}},
    {"id": "1764237600500-0", "ts": "2026-11-27T10:00:00.500Z", "type": "backup.completed", "appId": "db", "payload": {"sizeMb": 120}},
    {"id": "1764237601000-0", "ts": "2026-11-27T10:00:01.000Z", "type": "hub.gap", "appId": "hub", "payload": {"since": "1-0", "oldest": ""}},
    {"id": "1764237602000-0", "ts": "2026-11-27T10:00:02.000Z", "type": "deploy.step", "appId": "mail-agent", "payload": {"step": "build", "status": "completed"}},
]  # fmt: skip


def write(tmp_path: Path, rows: list[Any], extra: str = "") -> Path:
    path = tmp_path / "session.ndjson"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + extra)
    return path


def history(url: str, count: int) -> list[tuple[str, str, dict[str, Any]]]:
    """What a subscriber replaying the hub's history gets: (type, appId, payload) of each event."""
    done = run_norn("--url", url, "tail", "--json", "--last", "100", "--count", str(count))
    assert done.returncode == 0, done.stderr
    return [(e["type"], e["appId"], e["payload"]) for e in map(json.loads, done.stdout.splitlines())]


def test_the_schedule_follows_ts_divided_by_speed() -> None:
    """Events are due at their distance from the first ts over the speed; max is no pauses; no ts goes right after."""
    recs = read_recording([json.dumps(r) for r in RECORDING]).events
    assert [r.line for r in recs] == [1, 2, 4]
    assert schedule(recs, 1.0) == [0.0, 0.5, 2.0]
    assert schedule(recs, 2.0) == [0.0, 0.25, 1.0]
    assert schedule(recs, None) == [0.0, 0.0, 0.0]
    no_ts = [Recorded(1, {}, 1000.0), Recorded(2, {}, None), Recorded(3, {}, 500.0), Recorded(4, {}, 4000.0)]
    assert schedule(no_ts, 1.0) == [0.0, 0.0, 0.0, 3.0]


async def test_replay_pauses_as_scheduled(hub: Any) -> None:
    """The library waits before each event until it is due (sleep injected: nothing really waits)."""
    waits: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        waits.append(seconds)

    recording = read_recording([json.dumps(r) for r in RECORDING])
    progress: list[tuple[int, int]] = []
    stats = await replay(Endpoint.parse(hub.url), recording, speed=1.0, sleep=fake_sleep, on_progress=lambda d, t: progress.append((d, t)))
    assert stats.acked == 3
    assert [round(w, 1) for w in waits] == [0.5, 2.0]
    assert progress == [(1, 3), (2, 3), (3, 3)]


def test_replay_publishes_the_exact_sequence(thread_hub: ThreadHub, tmp_path: Path) -> None:
    """`norn replay FILE --speed max`: a subscriber gets the same events in order (hub frames skipped), with new ids."""
    path = write(tmp_path, RECORDING)
    done = run_norn("--url", thread_hub.url, "replay", str(path), "--speed", "max")
    assert (done.returncode, done.stdout) == (0, "")
    assert done.stderr == f"norn: replayed 3 events from {path} to {thread_hub.url} (1 left out by the filters or hub frames)\n"
    assert history(thread_hub.url, 3) == [(r["type"], r["appId"], r["payload"]) for r in RECORDING if r["type"] != "hub.gap"]
    ids = json.loads(run_norn("--url", thread_hub.url, "tail", "--json", "--last", "1", "--count", "1").stdout)["id"]
    assert ids != RECORDING[-1]["id"]


def test_replay_filters_and_rewrites_the_app(thread_hub: ThreadHub, tmp_path: Path) -> None:
    """--app and --type (globs) choose events as tail does; --rewrite-app renames what is left."""
    path = write(tmp_path, RECORDING)
    done = run_norn("--url", thread_hub.url, "replay", str(path), "--speed", "max", "--app", "mail-agent", "--type", "deploy.*", "--rewrite-app", "mail-test")
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith("norn: replayed 2 events from ")
    assert history(thread_hub.url, 2) == [
        ("deploy.step", "mail-test", {"step": "build", "status": "running"}),
        ("deploy.step", "mail-test", {"step": "build", "status": "completed"}),
    ]


def test_a_bad_line_is_one_line_naming_it_and_nothing_is_sent(thread_hub: ThreadHub, tmp_path: Path) -> None:
    """A line that is not JSON: exit 2, one line on stderr with its number, and the hub has no event."""
    path = write(tmp_path, RECORDING[:2], extra="{not json\n")
    done = run_norn("--url", thread_hub.url, "replay", str(path), "--speed", "max")
    assert done.returncode == 2
    assert done.stderr.startswith(f"norn: {path} line 3: not valid JSON (")
    assert done.stderr.endswith("); nothing was sent\n") and done.stderr.count("\n") == 1
    assert run_norn("--url", thread_hub.url, "emit", "a.b", "--app", "x").returncode == 0
    assert history(thread_hub.url, 1) == [("a.b", "x", {})]  # the only event is the one just emitted


@pytest.mark.parametrize(("args", "message"), [
    (["--speed", "0"], "Invalid value for '--speed': '0' is not a speed: give a factor above 0, or max"),
    (["--speed", "fast"], "Invalid value for '--speed': 'fast' is not a speed: give a factor such as 2 or 0.5, or max"),
])  # fmt: skip
def test_a_bad_speed_is_a_usage_error(tmp_path: Path, args: list[str], message: str) -> None:
    """--speed takes a factor above 0 or max."""
    done = run_norn("replay", str(write(tmp_path, RECORDING)), *args)
    assert done.returncode == 2
    assert message in done.stderr


def test_a_bad_field_names_its_line(tmp_path: Path) -> None:
    """An event the hub would refuse (no appId) is named by its line before anything is sent."""
    path = write(tmp_path, [RECORDING[0], {"type": "a.b", "payload": {}}])
    done = run_norn("--url", "ws://127.0.0.1:9", "replay", str(path))
    assert done.returncode == 2
    assert done.stderr.startswith(f"norn: {path} line 2: ") and done.stderr.endswith("; nothing was sent\n")


def test_the_progress_bar_shows_on_a_terminal_only() -> None:
    """On an interactive console the bar counts acks (N/M); elsewhere there is no bar and no output."""
    from io import StringIO

    from rich.console import Console

    from norn_cli.render.replay import replay_progress

    plain = StringIO()
    with replay_progress(Console(file=plain, force_terminal=False), 3) as update:
        assert update is None
    assert plain.getvalue() == ""
    screen = StringIO()
    with replay_progress(Console(file=screen, force_terminal=True, force_interactive=True, width=80), 3) as update:
        assert update is not None
        update(2, 3)
    assert "2/3" in screen.getvalue()
