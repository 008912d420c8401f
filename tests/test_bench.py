"""`norn bench`: tiny runs against real hubs, checked for exact structure and counts, never for time."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from io import StringIO

import pytest
from rich.console import Console

from norn_cli.client.bench import BenchConfig, BenchResult, LatencyHistogram, run_bench
from norn_cli.core.errors import ConfigError
from norn_cli.cli.embed import embedded_hub
from norn_cli.render.bench import bench_progress, summary_table
from norn_cli.hub.server import HubServer
from tests.conftest import TIMEOUT, ThreadHub, norn_argv, norn_env, run_norn

KEYS = {
    "url", "embedded", "loop", "subs", "pubs", "events", "size", "rate", "batch", "keys", "window", "stalled",
    "published", "publish_errors", "delivered", "expected", "completeness", "dropped", "dropped_codes",
    "out_of_order", "stalled_closed", "stalled_codes", "published_per_s", "delivered_per_s",
    "latency_ms", "elapsed_s", "timed_out", "hub_rss_kb", "hub_cpu_s",
}  # fmt: skip


@pytest.fixture
async def patient_hub() -> AsyncIterator[HubServer]:
    """A hub that waits long for a dropped client's closing handshake, so a
    stalled subscriber read late still finds the 1013 close frame."""
    srv = HubServer(host="127.0.0.1", port=0, history=100, close_timeout=60)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.close()


async def test_every_event_reaches_every_subscriber(hub: HubServer) -> None:
    """Three subscribers and two publishers: every event delivered once, in order, counted exactly."""
    result = await run_bench(BenchConfig(subs=3, pubs=2, events=201, size=64), url=hub.url)
    out = result.to_dict()
    assert set(out) == KEYS
    assert out["embedded"] == ""
    assert (out["published"], out["publish_errors"]) == (201, 0)
    assert (out["delivered"], out["expected"]) == (603, 603)
    assert out["completeness"] == 1.0
    assert (out["dropped"], out["out_of_order"], out["timed_out"]) == (0, 0, False)
    assert set(out["latency_ms"]) == {"p50", "p99", "max"}
    assert out["latency_ms"]["max"] >= out["latency_ms"]["p99"] >= out["latency_ms"]["p50"] > 0
    assert out["hub_rss_kb"] is None
    assert hub.hub.published >= 201


async def test_batches_are_counted_per_event(hub: HubServer) -> None:
    """Batched publishes (7 events per request) still count and deliver each event."""
    result = await run_bench(BenchConfig(subs=2, events=70, batch=7, window=4), url=hub.url)
    assert (result.published, result.delivered, result.expected) == (70, 140, 140)
    assert result.completeness == 1.0


async def test_stalled_subscriber_is_closed_with_1013(patient_hub: HubServer) -> None:
    """A subscriber that never reads is closed with 1013; the healthy one still gets everything."""
    # ~8 MB to the stalled socket: more than the kernel buffers hold on loopback.
    cfg = BenchConfig(subs=1, events=4000, size=2000, stalled=1)
    result = await run_bench(cfg, url=patient_hub.url)
    out = result.to_dict()
    assert (out["stalled_closed"], out["stalled_codes"]) == (1, {"1013": 1})
    assert (out["delivered"], out["expected"], out["completeness"]) == (4000, 4000, 1.0)
    assert (out["dropped"], out["dropped_codes"]) == (0, {})
    assert patient_hub.hub.dropped == 1


async def test_in_process_hub() -> None:
    """With an in-process factory the bench embeds a HubServer in its own loop."""
    result = await run_bench(BenchConfig(subs=1, events=50), in_process=embedded_hub)
    assert result.embedded == "in-process"
    assert (result.delivered, result.expected) == (50, 50)


def test_cli_json_starts_its_own_hub() -> None:
    """`norn bench --json` starts a hub in a subprocess and prints exactly one JSON line."""
    proc = run_norn("bench", "--subs", "2", "--events", "300", "--json", timeout=TIMEOUT * 6)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1
    out = json.loads(lines[0])
    assert set(out) == KEYS
    assert out["embedded"] == "subprocess"
    assert out["url"].startswith("ws://127.0.0.1:")
    assert (out["published"], out["delivered"], out["expected"]) == (300, 600, 600)
    assert out["completeness"] == 1.0
    assert isinstance(out["hub_rss_kb"], int)


async def test_cli_table_against_a_running_hub(hub: HubServer) -> None:
    """Without --json the summary table goes to stdout, and --url benches that hub."""
    proc = await asyncio.create_subprocess_exec(
        *norn_argv("bench", "--url", hub.url, "--subs", "1", "--events", "20"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=norn_env(),
    )  # fmt: skip
    async with asyncio.timeout(TIMEOUT * 3):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err
    text = out.decode()
    assert "completeness" in text
    assert "1.0000 (20 of 20)" in text
    assert hub.url in text
    assert hub.hub.published >= 20


def test_cli_refuses_bad_settings() -> None:
    """Zero publishers is a usage error (exit 2), before anything starts."""
    proc = run_norn("bench", "--pubs", "0")
    assert proc.returncode == 2
    assert "--pubs" in proc.stderr


def test_config_check() -> None:
    """Settings that cannot run raise ConfigError."""
    with pytest.raises(ConfigError):
        BenchConfig(pubs=0).check()
    with pytest.raises(ConfigError):
        BenchConfig(rate=0).check()
    BenchConfig().check()


def test_histogram_quantiles() -> None:
    """Quantiles land within the histogram's bucket width; max is exact."""
    h = LatencyHistogram()
    for us in range(1, 1001):
        h.add(us * 1000)
    assert h.n == 1000
    assert h.max == 1_000_000
    assert abs(h.quantile(0.5) - 500_000) <= 500_000 * 0.04
    assert abs(h.quantile(0.99) - 990_000) <= 990_000 * 0.04
    assert h.quantile(1.0) == 1_000_000
    assert LatencyHistogram().quantile(0.5) == 0


def test_summary_table_and_quiet_progress() -> None:
    """The table names every figure; a non-interactive console gets no progress bar."""
    result = BenchResult(url="ws://127.0.0.1:1", embedded="subprocess", config=BenchConfig(subs=2, stalled=1), loop="asyncio")
    result.published, result.delivered, result.expected = 10, 20, 20
    result.stalled_closed, result.stalled_codes = 1, {"1013": 1}
    buf = StringIO()
    console = Console(file=buf, width=100, force_terminal=False)
    console.print(summary_table(result.to_dict()))
    text = buf.getvalue()
    for label in ("published/s", "delivered/s", "completeness", "latency p50", "latency p99", "latency max"):
        assert label in text
    assert "1.0000 (20 of 20)" in text
    assert "1 of 1 (1013 ×1)" in text
    with bench_progress(console) as progress:
        assert progress is None


def test_bench_on_a_live_hub_keeps_to_its_own_app_and_warns_of_other_traffic(thread_hub: ThreadHub) -> None:
    """`--url` typed: a fresh hub gets no warning; one with traffic gets one stderr line first; events go under bench-<random>."""
    quiet = run_norn("bench", "--url", thread_hub.url, "--subs", "1", "--events", "5", "--json")
    assert quiet.returncode == 0, quiet.stderr
    assert "warning" not in quiet.stderr
    assert run_norn("--url", thread_hub.url, "emit", "a.b", "--app", "real").returncode == 0
    busy = run_norn("bench", "--url", thread_hub.url, "--subs", "1", "--events", "5", "--json")
    assert busy.returncode == 0, busy.stderr
    warning = busy.stderr.splitlines()[0]
    assert re.fullmatch(
        rf"norn: warning: the hub at {re.escape(thread_hub.url)} has other traffic \(\d+ events published, 0 clients connected\); "
        r"the bench adds about 6 events as app bench-[0-9a-f]{8} to its history, which may push out older events", warning
    ), warning
    done = run_norn("--url", thread_hub.url, "tail", "--json", "--last", "100", "--count", "13")
    apps = {json.loads(line)["appId"] for line in done.stdout.splitlines()}
    assert "real" in apps and "bench" not in apps
    assert len([a for a in apps if re.fullmatch(r"bench-[0-9a-f]{8}", a)]) == 2


def test_bench_dry_run_says_what_it_would_do_and_sends_nothing() -> None:
    """`--dry-run` prints one line naming the hub, the app and the load, exit 0, without connecting (port 9 is closed)."""
    done = run_norn("bench", "--url", "ws://127.0.0.1:9", "--subs", "3", "--events", "500", "--dry-run")
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(
        r"norn bench would publish 500 bench.tick events of about 128 B \(plus a warm-up\) as app bench-[0-9a-f]{8} "
        r"into the live hub at ws://127.0.0.1:9, from 1 publisher to 3 subscribers; nothing was sent\n", done.stdout
    ), done.stdout
    local = run_norn("bench", "--dry-run")
    assert local.stdout.endswith("as app bench into a hub of its own (a subprocess, stopped afterwards), from 1 publisher to 10 subscribers; nothing was sent\n")
