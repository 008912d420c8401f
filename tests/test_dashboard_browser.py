"""The dashboard in a real browser: Debian's chromium driven by Playwright, against real hubs.

No browser is downloaded: the tests use /usr/bin/chromium and skip without
it, unless NORN_REQUIRE_CHROMIUM=1 (CI), where a missing browser is an error.
They wait for DOM states with timeouts, never for time.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, TIMEOUT, norn_argv, norn_env
from helpers import ws
from pipeline_support import runner_on

from norn_cli.client.connect import ApiClient, Endpoint
from norn_cli.hub.brokers.memory import MemoryBroker
from norn_cli.hub.server import HubServer, tls_context

CHROMIUM = "/usr/bin/chromium"
REQUIRED = os.environ.get("NORN_REQUIRE_CHROMIUM") == "1"
if REQUIRED and not Path(CHROMIUM).exists():
    raise RuntimeError(f"NORN_REQUIRE_CHROMIUM=1 but {CHROMIUM} is missing (apt-get install chromium)")
if REQUIRED:
    from playwright.async_api import Browser, Page, async_playwright, expect
else:
    pytest.importorskip("playwright", reason="playwright is not installed (pip install -e '.[test]')")
    from playwright.async_api import Browser, Page, async_playwright, expect

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no chromium at {CHROMIUM} (apt-get install chromium)"),
]

ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip
WAIT = TIMEOUT * 1000  # Playwright's waits are in milliseconds
SPEC = json.loads((ROOT / "tests" / "run_state_spec.json").read_text(encoding="utf-8"))
SCREENSHOT = ROOT / "docs" / "img" / "dashboard-deploy.png"

# Installed before the page's own script: CSP violations and long tasks, as the page sees them.
WATCH = """
window.__violations = [];
document.addEventListener('securitypolicyviolation', (e) => window.__violations.push(`${e.violatedDirective} ${e.blockedURI}`));
window.__longtasks = [];
new PerformanceObserver((list) => { for (const e of list.getEntries()) window.__longtasks.push(e.duration); })
  .observe({ type: 'longtask', buffered: true });
"""

# The JavaScript RunState's view of a run, in the spec's terms (as snapshot() in test_run_state_spec.py).
SPEC_RUNNER = """
(spec) => {
  const { RunState } = window.norn;
  const ms = (s) => (s === null ? null : Math.round(s * 1000));
  const r3 = (v) => (v === null ? null : Math.round(v * 1000) / 1000);
  const snapshot = (st, now) => ({
    kind: st.kind, app: st.app, ref: st.ref, imageTag: st.imageTag, runId: st.runId,
    outcome: st.outcome, error: st.error, failedStep: st.failedStep,
    started: ms(st.started), finished: ms(st.finished), restarted: st.restarted,
    gap: st.gap, lastId: st.lastId, done: st.done, ok: st.ok,
    finishedSteps: st.finishedSteps, running: st.running().map((s) => s.name),
    elapsedMs: ms(st.elapsed(now)),
    steps: [...st.steps.values()].map((s) => ({
      name: s.name, status: s.status, phase: s.phase, durationMs: r3(s.durationMs),
      durationText: s.durationText, started: ms(s.started), error: s.error, output: [...s.output],
    })),
  });
  return spec.cases.map((c) => {
    const init = c.init || {};
    const st = new RunState(init.runId ?? null, init.kind ?? null);
    const applied = c.events.map((e) => st.apply(e, c.now));
    return { name: c.name, applied, expect: snapshot(st, c.now) };
  });
}
"""


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Debian's chromium, headless, with nothing of its own talking to the network."""
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            await b.close()


class Dash:
    """A dashboard page, with everything it logged, fetched and opened recorded."""

    def __init__(self, page: Page, url: str) -> None:
        self.page = page
        self.url = url
        self.origin = re.match(r"^https?://[^/]+", url).group(0)  # type: ignore[union-attr]
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.sockets: list[str] = []
        page.on("console", lambda m: self.errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        page.on("request", lambda r: self.requests.append(r.url))
        page.on("websocket", lambda w: self.sockets.append(w.url))

    @classmethod
    async def open(cls, browser: Browser, url: str, **context: Any) -> Dash:
        ctx = await browser.new_context(viewport={"width": 1280, "height": 800}, **context)
        page = await ctx.new_page()
        page.set_default_timeout(WAIT)
        dash = cls(page, url)
        await page.add_init_script(script=WATCH)
        await page.goto(url)
        await dash.live()
        return dash

    async def live(self) -> None:
        await expect(self.page.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT)

    def row(self, event_id: str) -> Any:
        return self.page.locator(f'.row[data-id="{event_id}"]')

    async def ids(self) -> list[str]:
        """Ids of the events listed, oldest first."""
        ids: list[str] = await self.page.eval_on_selector_all(".row[data-id]", "rows => rows.map(r => r.dataset.id)")
        return ids[::-1]

    async def assert_clean(self, *, hub_was_down: bool = False) -> None:
        """No console error, no policy violation, and nothing fetched or opened but this hub.

        While a hub is down the browser itself logs each refused reconnect;
        `hub_was_down` allows exactly those.
        """
        refused = re.compile(r"^console error: WebSocket connection to '[^']*' failed: .*ERR_CONNECTION_REFUSED$")
        assert [e for e in self.errors if not (hub_was_down and refused.match(e))] == []
        assert await self.page.evaluate("window.__violations") == []
        ws_origin = self.origin.replace("http", "ws", 1)
        assert self.requests and all(u.startswith(self.origin + "/") for u in self.requests), self.requests
        assert self.sockets and all(u.startswith(ws_origin + "/ws?") for u in self.sockets), self.sockets


def page_url(hub: HubServer) -> str:
    return hub.url.replace("ws", "http", 1) + "/"


def ev(etype: str, app: str, /, **payload: Any) -> dict[str, Any]:
    return {"type": etype, "appId": app, "payload": payload}


async def publish(url: str, *events: dict[str, Any], cafile: str | None = None) -> list[str]:
    """Publish through the library, one batch; the ids."""
    async with ApiClient(Endpoint.parse(url), cafile=cafile) as api:
        reply = await api.request({"op": "publish", "events": list(events)})
    ids: list[str] = reply["ids"]
    return ids


async def norn(*args: str) -> tuple[int, str, str]:
    """Run `norn ARGS` to its end: (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        *norn_argv(*args), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=norn_env()
    )
    async with asyncio.timeout(TIMEOUT * 3):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


# ---------------------------------------------------------------- loading, the spec, emit


async def test_page_loads_clean_and_talks_only_to_the_hub(hub: HubServer, browser: Browser) -> None:
    """No console error, no CSP violation, every request and socket to the hub: the page, its three files, two /ws."""
    dash = await Dash.open(browser, page_url(hub))
    await expect(dash.page.locator("#runs .empty")).to_be_visible()
    await dash.assert_clean()
    paths = sorted({re.sub(r"\?.*", "", u.removeprefix(dash.origin)) for u in dash.requests})
    assert paths == ["/", "/ui/app.css", "/ui/app.js", "/ui/icon.svg"]
    assert sorted(u.split("?", 1)[1] for u in dash.sockets) == [
        "last=100",
        "type=deploy.*&type=forge.*&type=teardown.*&type=restart.*&type=rollback.*&type=app.*&last=1000",
    ]


async def test_the_javascript_run_state_meets_the_spec(hub: HubServer, browser: Browser) -> None:
    """app.js's RunState reaches exactly the states tests/run_state_spec.json holds (as run_state.py does)."""
    dash = await Dash.open(browser, page_url(hub))
    got = await dash.page.evaluate(SPEC_RUNNER, SPEC)
    assert len(got) == len(SPEC["cases"])
    for result, case in zip(got, SPEC["cases"]):
        assert result["name"] == case["name"]
        assert result["applied"] == case["applied"], case["name"]
        assert result["expect"] == case["expect"], case["name"]


async def test_frames_seen_are_dropped_until_a_gap(hub: HubServer, browser: Browser) -> None:
    """A subscription passes on each id once, in increasing order; after a hub.gap any id is new again."""
    dash = await Dash.open(browser, page_url(hub))
    passed = await dash.page.evaluate(
        """() => {
          const seen = [];
          const sub = new window.norn.Subscription({ initialLast: 1, onEvent: (e) => seen.push(e.id), onGap: () => seen.push('gap'), onState: () => {} });
          const frame = (id) => JSON.stringify({ type: 't.x', appId: 'a', payload: {}, id });
          for (const id of ['5-0', '5-1', '5-1', '4-9', '10-0']) sub._receive(frame(id));
          sub._receive(JSON.stringify({ type: 'hub.gap', appId: '', payload: { since: '10-0', oldest: '' } }));
          for (const id of ['2-0', '2-0', '3-0']) sub._receive(frame(id));
          sub._receive('not json');
          return [seen, sub.lastId, sub.url().split('?')[1]];
        }"""
    )
    assert passed == [["5-0", "5-1", "10-0", "gap", "2-0", "3-0"], "3-0", "since=3-0"]


async def test_emitted_event_appears_within_a_second(hub: HubServer, browser: Browser) -> None:
    """`norn emit` in a subprocess: once it has its ack, the row is there within a second; a click shows the event whole."""
    dash = await Dash.open(browser, page_url(hub))
    async with ws(hub.port) as plain:
        code, out, err = await norn("--url", hub.url, "emit", "deploy.step", "--app", "mail-agent",
                                    "-p", "step=build", "-p", "status=building", "-p", "note=ünï \"q\"")  # fmt: skip
        assert code == 0, err
        event_id = out.strip()
        row = dash.row(event_id)
        await expect(row).to_be_visible(timeout=1000)
        async with asyncio.timeout(TIMEOUT):
            sent = json.loads(await plain.recv())
    await expect(row.locator(".c-app")).to_have_text("mail-agent")
    await expect(row.locator(".c-type")).to_have_text("deploy.step")
    await expect(row.locator(".c-sum")).to_contain_text("build")
    await row.click()
    await expect(dash.page.locator("#detail")).to_be_visible()
    assert json.loads(await dash.page.locator("#detail-json").text_content() or "") == sent
    await dash.page.keyboard.press("Escape")
    await expect(dash.page.locator("#detail")).to_be_hidden()
    await dash.assert_clean()


# ---------------------------------------------------------------- filters, pause, bounds


async def test_filters_go_to_the_hub(hub: HubServer, browser: Browser) -> None:
    """App and type filters resubscribe with them as /ws parameters; the list then holds exactly the matching events."""
    before = await publish(
        hub.url, ev("deploy.step", "web", step="a", status="running"), ev("deploy.step", "db", step="a", status="running"),
        ev("backup.completed", "web"), ev("forge.step", "web", step="b", status="running"),
    )  # fmt: skip
    dash = await Dash.open(browser, page_url(hub))
    await expect(dash.row(before[-1])).to_be_visible()
    await dash.page.fill("#f-app", "web")
    await dash.page.fill("#f-type", "deploy.*, forge.step")
    await dash.page.press("#f-type", "Enter")
    await expect(dash.row(before[1])).to_have_count(0)  # the list starts again from the hub's replay
    await dash.live()
    assert dash.sockets[-1].endswith("/ws?app=web&type=deploy.*&type=forge.step&last=100")
    assert dash.page.url.endswith("/?app=web&type=deploy.*&type=forge.step")
    later = await publish(
        hub.url, ev("deploy.step", "db", step="c", status="running"), ev("app.status", "web", healthy=True),
        ev("deploy.completed", "web", id="d1", app="web", ref="x", status="completed", steps=[], startedAt="2026-01-01T00:00:00Z"),
    )  # fmt: skip
    await expect(dash.row(later[-1])).to_be_visible()  # events arrive in order: the ones before it were filtered out
    assert await dash.ids() == [before[0], before[3], later[2]]
    await dash.page.reload()  # the filters live in the page's address
    await expect(dash.row(later[2])).to_be_visible()
    assert await dash.page.input_value("#f-app") == "web"
    assert await dash.ids() == [before[0], before[3], later[2]]
    await dash.page.click("#f-clear")
    await expect(dash.row(before[1])).to_be_visible()
    assert dash.sockets[-1].endswith("/ws?last=100")
    await dash.assert_clean()


async def test_pause_resume_and_bounded_rows(hub: HubServer, browser: Browser) -> None:
    """Paused, events are counted, not shown; resumed, they are; the list never holds more than 500 rows."""
    dash = await Dash.open(browser, page_url(hub))
    page = dash.page
    await page.click("#pause")
    await expect(page.locator("#pause")).to_have_attribute("aria-pressed", "true")
    ids = await publish(hub.url, *(ev("test.tick", "app", n=n) for n in range(3)))
    await expect(page.locator("#paused-note")).to_contain_text("Paused: 3 new events")
    assert await dash.ids() == []
    await page.click("#pause")
    await expect(dash.row(ids[-1])).to_be_visible()
    assert await dash.ids() == ids
    many: list[str] = []
    for start in range(0, 600, 200):
        many += await publish(hub.url, *(ev("test.tick", "app", n=n) for n in range(start, start + 200)))
    await expect(dash.row(many[-1])).to_be_visible()
    assert await dash.ids() == many[-500:]
    await expect(page.locator("#stream-count")).to_have_text("603 received")
    await dash.assert_clean()


# ---------------------------------------------------------------- runs and apps

APPS = """
[apps.web]
env = {{ GATES = "{gates}" }}
[[apps.web.deploy]]
name = "build"
run = "echo 'compiling web (12 modules)'; read go < \\"$GATES/web-build\\"; echo 'built web' $NORN_REF"
[[apps.web.deploy]]
name = "test"
run = "echo 'running 42 tests'; read go < \\"$GATES/web-test\\"; echo '42 passed in 3.1s'"
[[apps.web.deploy]]
name = "release"
run = "echo 'released web'"

[apps.api]
env = {{ GATES = "{gates}" }}
[[apps.api.deploy]]
name = "build"
run = "echo 'compiling api'"
[[apps.api.deploy]]
name = "test"
run = "echo 'FAILED tests/test_auth.py::test_token_expiry'; read go < \\"$GATES/api-test\\"; echo '1 failed, 27 passed'; exit 1"
[[apps.api.deploy]]
name = "release"
run = "echo never"
"""


class Gates:
    """Named pipes a step waits on (`read go < $GATES/name`) until the test opens them."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.fds: list[int] = []
        for name in ("web-build", "web-test", "api-test"):
            os.mkfifo(directory / name)

    def open(self, name: str) -> None:
        # Read-write never blocks on a FIFO (Linux), and holding it open keeps
        # the line in the pipe until the step's shell has read it.
        fd = os.open(self.directory / name, os.O_RDWR)
        self.fds.append(fd)
        os.write(fd, b"go\n")

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)


async def expect_steps(card: Any, phases: Sequence[tuple[str, str]]) -> None:
    """The card's steps, in order, in these phases."""
    for name, phase in phases:
        await expect(card.locator(f'.step[data-step="{name}"]')).to_have_attribute("data-phase", phase)
    await expect(card.locator(".step")).to_have_count(len(phases))


async def test_deploys_step_by_step_to_failure_and_to_completion(hub: HubServer, browser: Browser, tmp_path: Path) -> None:
    """`norn deploy` runs shown live, one card each: every step's state, durations, output tail, the end; a screenshot mid-deploy."""
    gates = Gates(tmp_path)
    runner_on(hub, APPS.format(gates=tmp_path), tmp_path)
    await publish(
        hub.url,
        ev("app.status", "web", healthy=True, statusCode=200, responseMs=3.2, checkedAt=None, error=None, url="http://web/healthz"),
        ev("app.status", "api", healthy=True, statusCode=200, responseMs=11.7, checkedAt=None, error=None, url="http://api/healthz"),
        ev("app.status", "db", healthy=False, statusCode=None, responseMs=None, checkedAt=None,
           error="connection refused", url="http://db:5432/healthz"),  # fmt: skip
        ev("backup.completed", "db", sizeMb=120),
    )
    dash = await Dash.open(browser, page_url(hub))
    page = dash.page
    try:
        # A deploy that fails at its second step.
        failing = asyncio.ensure_future(norn("--url", hub.url, "deploy", "api", "7c1e0d2"))
        card = page.locator('.run[data-app="api"][data-kind="deploy"]')
        await expect_steps(card, [("build", "done"), ("test", "running"), ("release", "pending")])
        await expect(card).to_have_attribute("data-state", "running")
        await expect(card.locator(".output-text")).to_contain_text("FAILED tests/test_auth.py::test_token_expiry")
        gates.open("api-test")
        await expect(card).to_have_attribute("data-state", "failed")
        await expect_steps(card, [("build", "done"), ("test", "failed"), ("release", "pending")])
        await expect(card.locator(".run-error")).to_have_text("failed at test: exit status 1")
        await expect(card.locator(".output-label")).to_have_text("test output")
        await expect(card.locator(".output-text")).to_have_text(
            "FAILED tests/test_auth.py::test_token_expiry\n1 failed, 27 passed"
        )
        await expect(card.locator(".pill")).to_have_text("failed")
        assert (await failing)[0] == 1

        # A deploy that completes, watched step by step.
        completing = asyncio.ensure_future(norn("--url", hub.url, "deploy", "web", "v2.4.1"))
        card = page.locator('.run[data-app="web"][data-kind="deploy"]')
        await expect_steps(card, [("build", "running"), ("test", "pending"), ("release", "pending")])
        await expect(card.locator(".run-ref")).to_have_text("@ v2.4.1")
        await expect(card.locator(".output-text")).to_have_text("compiling web (12 modules)")
        gates.open("web-build")
        await expect_steps(card, [("build", "done"), ("test", "running"), ("release", "pending")])
        await expect(card.locator('.step[data-step="build"] .dur')).to_have_text(re.compile(r"^\d+ms$|^\d+\.\ds$"))
        await expect(card.locator(".output-text")).to_have_text("running 42 tests")
        await expect(card.locator(".run-meta")).to_contain_text("1/3 steps")
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SCREENSHOT))
        gates.open("web-test")
        await expect(card).to_have_attribute("data-state", "completed")
        await expect_steps(card, [("build", "done"), ("test", "done"), ("release", "done")])
        await expect(card.locator(".pill")).to_have_text("completed")
        await expect(card.locator(".run-meta")).to_contain_text("3/3 steps")
        await expect(card.locator(".output-text")).to_have_text("released web")
        assert (await completing)[0] == 0
        # Newest run first; the failed one is still there.
        assert await page.eval_on_selector_all(".run", "cards => cards.map(c => c.dataset.app)") == ["web", "api"]
    finally:
        gates.close()
    await dash.assert_clean()


async def test_app_tiles_follow_app_status(hub: HubServer, browser: Browser) -> None:
    """One tile per app from app.status, in name order, healthy or not, updated in place; app.restarted noted."""
    dash = await Dash.open(browser, page_url(hub))
    tiles = dash.page.locator(".tile")
    await publish(
        hub.url, ev("app.status", "web", healthy=True, statusCode=200, responseMs=3.2, error=None),
        ev("app.status", "db", healthy=False, statusCode=503, responseMs=12.0, error="503 Service Unavailable\nmore"),
    )  # fmt: skip
    await expect(tiles).to_have_count(2)
    await expect(dash.page.locator('.tile[data-app="db"]')).to_have_attribute("data-health", "bad")
    await expect(dash.page.locator('.tile[data-app="db"] .tile-error')).to_have_text("503 Service Unavailable …")
    await expect(dash.page.locator('.tile[data-app="web"] .tile-state')).to_have_text("healthy · 200 · 3.2 ms")
    await publish(hub.url, ev("app.status", "db", healthy=True, statusCode=200, responseMs=4.0, error=None),
                  ev("app.restarted", "web", appId="web"))  # fmt: skip
    await expect(dash.page.locator('.tile[data-app="db"]')).to_have_attribute("data-health", "ok")
    await expect(dash.page.locator('.tile[data-app="web"]')).to_contain_text("restarted")
    assert await dash.page.eval_on_selector_all(".tile", "ts => ts.map(t => t.dataset.app)") == ["db", "web"]
    await dash.assert_clean()


# ---------------------------------------------------------------- a hub restarted under the page


def run_events(run: str, *steps: tuple[str, str]) -> list[tuple[str, str, dict[str, Any]]]:
    """Broker items: `deploy.step`s of one run."""
    return [("deploy.step", "web", {"runId": run, "step": step, "status": status}) for step, status in steps]


async def test_hub_restart_resumes_with_every_event_once(browser: Browser) -> None:
    """The hub goes away and comes back (its history kept, as on Redis): events published meanwhile arrive once, in order."""
    broker = MemoryBroker(1000)
    hub1 = HubServer(port=0, broker=broker)
    await hub1.start()
    port = hub1.port
    plan = [{"name": "a", "status": "pending"}, {"name": "b", "status": "pending"}]
    first = await publish(
        hub1.url, ev("deploy.queued", "web", id="r1", runId="r1", app="web", ref="x", status="queued", steps=plan, startedAt="2026-01-01T00:00:00Z"),
        ev("deploy.step", "web", runId="r1", step="a", status="running"),
    )  # fmt: skip
    dash = await Dash.open(browser, f"http://127.0.0.1:{port}/")
    card = dash.page.locator('.run[data-run="r1"]')
    await expect_steps(card, [("a", "running"), ("b", "pending")])
    await hub1.close()
    await expect(dash.page.locator("#conn")).to_have_attribute("data-state", "reconnecting")
    away = [e.id for e in await broker.publish(run_events("r1", ("a", "completed"), ("b", "running")))]
    hub2 = HubServer(port=port, broker=broker)
    await hub2.start()
    try:
        await dash.live()
        after = await publish(hub2.url, ev("deploy.step", "web", runId="r1", step="b", status="completed"),
                              ev("deploy.completed", "web", id="r1", runId="r1", app="web", ref="x", status="completed",
                                 steps=plan, startedAt="2026-01-01T00:00:00Z"))  # fmt: skip
        await expect(dash.row(after[-1])).to_be_visible()
        assert await dash.ids() == first + away + after
        await expect(card).to_have_attribute("data-state", "completed")
        await expect_steps(card, [("a", "done"), ("b", "done")])
        await expect(dash.page.locator("#gap-notice")).to_have_count(0)
        assert len(dash.sockets) == 4  # each subscription reconnected once
        assert all("since=" in url for url in dash.sockets[2:])
        await dash.assert_clean(hub_was_down=True)
    finally:
        await hub2.close()


async def test_restart_before_any_event_loses_nothing(browser: Browser) -> None:
    """A page that had seen no event yet still gets, once, what was published while the hub was away."""
    broker = MemoryBroker(1000)
    hub1 = HubServer(port=0, broker=broker)
    await hub1.start()
    port = hub1.port
    dash = await Dash.open(browser, f"http://127.0.0.1:{port}/")
    await hub1.close()
    await expect(dash.page.locator("#conn")).to_have_attribute("data-state", "reconnecting")
    away = [e.id for e in await broker.publish(run_events("r2", ("a", "running")) + [("backup.completed", "db", {})])]
    async with HubServer(port=port, broker=broker) as hub2:
        await expect(dash.row(away[-1])).to_be_visible()
        after = await publish(hub2.url, ev("backup.completed", "db"))
        await expect(dash.row(after[0])).to_be_visible()
        assert await dash.ids() == away + after
        await expect(dash.page.locator('.run[data-run="r2"] .step[data-step="a"]')).to_have_attribute("data-phase", "running")
        await dash.assert_clean(hub_was_down=True)


async def test_in_memory_restart_shows_the_gap(browser: Browser) -> None:
    """A restarted in-memory hub lost its history: the page says so (hub.gap), then goes on live."""
    hub1 = HubServer(port=0)
    await hub1.start()
    port = hub1.port
    dash = await Dash.open(browser, f"http://127.0.0.1:{port}/")
    first = await publish(hub1.url, ev("backup.completed", "db"))
    await expect(dash.row(first[0])).to_be_visible()
    await hub1.close()
    async with HubServer(port=port) as hub2:
        notice = dash.page.locator("#gap-notice")
        await expect(notice).to_contain_text(f"The hub may have lost events after {first[0]}")
        await expect(notice).to_contain_text("it retains nothing older")
        await expect(dash.page.locator(".gap-row")).to_have_count(1)
        after = await publish(hub2.url, ev("backup.completed", "db"))
        await expect(dash.row(after[0])).to_be_visible()
        assert await dash.ids() == first + after
        await dash.page.click("#gap-notice button")
        await expect(notice).to_have_count(0)
        await dash.assert_clean(hub_was_down=True)


class Served:
    """A `norn serve` process (asyncio), killed at the end if still running."""

    def __init__(self, proc: asyncio.subprocess.Process, url: str) -> None:
        self.proc = proc
        self.url = url

    @classmethod
    async def start(cls, *args: str) -> Served:
        proc = await asyncio.create_subprocess_exec(
            *norn_argv("serve", *args), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=norn_env()
        )
        assert proc.stderr is not None
        async with asyncio.timeout(TIMEOUT):
            while b"listening on" not in (line := await proc.stderr.readline()):
                assert line, "norn serve exited before listening"
        return cls(proc, line.decode().split("listening on ", 1)[1].split(" ", 1)[0])

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
        async with asyncio.timeout(TIMEOUT):
            await self.proc.communicate()


@pytest.mark.redis
@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not on PATH")
async def test_hub_killed_on_redis_resumes_with_every_event_once(browser: Browser, tmp_path: Path) -> None:
    """Two `norn serve` on one Redis; the page's hub is SIGKILLed and started again while the other publishes: every event once."""
    from test_redis_broker import RedisProcess, free_port

    redis = await RedisProcess(free_port(), tmp_path).start()
    hubs: list[Served] = []
    try:
        broker = ["--broker", redis.url, "--redis-stream", "norn:dashboard"]
        hubs.append(await Served.start("--port", "0", *broker))
        publisher = await Served.start("--port", "0", *broker)
        hubs.append(publisher)
        port = int(hubs[0].url.rsplit(":", 1)[1])
        dash = await Dash.open(browser, f"http://127.0.0.1:{port}/")
        before = await publish(publisher.url, *(ev("test.tick", "a", n=n) for n in range(3)))
        await expect(dash.row(before[-1])).to_be_visible()
        await hubs[0].kill()
        await expect(dash.page.locator("#conn")).to_have_attribute("data-state", "reconnecting")
        away = await publish(publisher.url, *(ev("test.tick", "a", n=n) for n in range(3, 6)))
        hubs.append(await Served.start("--port", str(port), *broker))
        await dash.live()
        after = await publish(publisher.url, *(ev("test.tick", "a", n=n) for n in range(6, 8)))
        await expect(dash.row(after[-1])).to_be_visible()
        assert await dash.ids() == before + away + after
        await expect(dash.page.locator("#gap-notice")).to_have_count(0)
        await dash.assert_clean(hub_was_down=True)
    finally:
        for served in hubs:
            await served.kill()
        await redis.stop()


# ---------------------------------------------------------------- origins


async def test_page_under_another_name_may_subscribe(tmp_path: Path) -> None:
    """Reached as http://norn.test:PORT (not localhost), and over TLS as https://, the page's own origin may subscribe."""
    from test_tail_e2e import _make_ca_and_server_cert

    ca, cert, key = _make_ca_and_server_cert(tmp_path)
    rules = "--host-resolver-rules=MAP norn.test 127.0.0.1"
    async with HubServer(port=0) as plain, HubServer(port=0, ssl_context=tls_context(str(cert), str(key))) as secure:
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, args=[*ARGS, rules])
            try:
                for srv, scheme in ((plain, "http"), (secure, "https")):
                    dash = await Dash.open(browser, f"{scheme}://norn.test:{srv.port}/", ignore_https_errors=True)
                    ids = await publish(srv.url, ev("backup.completed", "db"), cafile=str(ca))
                    await expect(dash.row(ids[0])).to_be_visible()
                    await dash.assert_clean()
                    assert all(u.startswith(f"{'wss' if scheme == 'https' else 'ws'}://norn.test:{srv.port}/ws?") for u in dash.sockets)
            finally:
                await browser.close()


# ---------------------------------------------------------------- hostile payloads

IMG = "<img src=x onerror=\"window.__pwned='img'\">"
JS_URL = "javascript:window.__pwned='link'"


async def test_hostile_payloads_render_as_inert_text(hub: HubServer, browser: Browser) -> None:
    """Markup and javascript: URLs in payloads, step names, refs, output and errors show as text and run nothing."""
    dash = await Dash.open(browser, page_url(hub))
    page = dash.page
    ids = await publish(
        hub.url,
        ev("backup.completed", "db", html=IMG, script="<script>window.__pwned='script'</script>", link=JS_URL,
           svg="<svg onload=\"window.__pwned='svg'\">", nested={"a": [IMG]}),
        ev("deploy.queued", "web", id="x1", runId="<b>run</b>", app="web", ref=IMG, status="queued",
           steps=[{"name": IMG, "status": "pending"}, {"name": JS_URL, "status": "pending"}], startedAt="2026-01-01T00:00:00Z"),
        ev("deploy.step", "web", runId="<b>run</b>", step=IMG, status="<i>running</i>", output=f"{IMG}\n{JS_URL}"),
        ev("deploy.failed", "web", id="x1", runId="<b>run</b>", app="web", ref=IMG, status="failed", steps=[],
           startedAt="2026-01-01T00:00:00Z", error=IMG, step=IMG),
        ev("app.status", "web", healthy=False, statusCode=500, responseMs=1.0, error=IMG),
    )  # fmt: skip
    for event_id in ids:
        await expect(dash.row(event_id)).to_be_visible()
    card = page.locator(".run").first
    await expect(card.locator(".step .name").first).to_have_text(IMG)
    await expect(card.locator(".run-ref")).to_have_text(f"@ {IMG}")
    await expect(card.locator(".run-error")).to_have_text(f"failed at {IMG}: {IMG}")
    await expect(card.locator(".output-text")).to_have_text(f"{IMG}\n{JS_URL}")
    await expect(page.locator('.tile[data-app="web"] .tile-error')).to_have_text(IMG)
    await expect(dash.row(ids[0]).locator(".c-sum")).to_contain_text(IMG.replace('"', '\\"'))
    await dash.row(ids[0]).click()
    assert json.loads(await page.locator("#detail-json").text_content() or "")["payload"]["link"] == JS_URL
    await dash.row(ids[2]).click()
    counts = await page.evaluate(
        "() => [document.images.length, document.scripts.length, document.querySelectorAll('svg').length,"
        " document.querySelectorAll('a, iframe, object, embed, b, i').length, typeof window.__pwned]"
    )
    assert counts == [0, 1, 1, 0, "undefined"]  # the one script is app.js, the one svg the logo
    assert page.url == dash.url
    await dash.assert_clean()


# ---------------------------------------------------------------- load


async def test_thousand_events_a_second_for_twenty_seconds(hub: HubServer, browser: Browser) -> None:
    """1,000 events/s for 20 s (with a chatty build and health checks among them): every event counted, no long task over 200 ms."""
    dash = await Dash.open(browser, page_url(hub))
    page = dash.page
    rate, seconds, batch = 1000, 20, 10
    await publish(hub.url, ev("deploy.queued", "load", id="load-run", runId="load-run", app="load", ref="x", status="queued",
                              steps=[{"name": "build", "status": "pending"}], startedAt="2026-01-01T00:00:00Z"))  # fmt: skip
    await expect(page.locator('.run[data-run="load-run"]')).to_be_visible()

    def event(n: int) -> dict[str, Any]:
        if n % 50 == 0:
            return ev("app.status", f"svc-{n % 7}", healthy=n % 3 > 0, statusCode=200, responseMs=2.5, error=None)
        if n % 10 == 0:
            return ev("deploy.step", "load", runId="load-run", step="build", status="running", output=f"compiling unit {n}\nok")
        return ev("load.tick", f"app-{n % 5}", n=n, note="x" * 80)

    loop = asyncio.get_running_loop()
    async with ApiClient(Endpoint.parse(hub.url)) as api:
        start = loop.time()
        for tick in range(rate * seconds // batch):
            pause = start + tick * batch / rate - loop.time()
            if pause > 0:
                await asyncio.sleep(pause)  # a steady rate: the publisher's clock, not a wait for the page
            events = [event(tick * batch + i) for i in range(batch)]
            reply = await api.request({"op": "publish", "events": events})
            assert reply["ok"] is True
        took = loop.time() - start
    total = rate * seconds
    await expect(page.locator("#stream-count")).to_have_text(f"{total + 1:,} received", timeout=WAIT * 3)
    longtasks: list[float] = await page.evaluate("window.__longtasks")
    await page.locator(".row").first.click()
    await expect(page.locator("#detail")).to_be_visible(timeout=1000)
    await expect(page.locator('.run[data-run="load-run"] .output-text')).to_contain_text(f"compiling unit {total - 10}")
    longest = max(longtasks, default=0.0)
    print(f"\npublished {total} events in {took:.1f}s; {len(longtasks)} long tasks, longest {longest:.0f} ms; sockets {len(dash.sockets)}")
    assert longest < 200, sorted(longtasks)[-10:]
    assert len(dash.sockets) == 2, dash.sockets  # never dropped as a slow consumer
    await dash.assert_clean()
