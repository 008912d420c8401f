"""`norn deploy` & co. as a user runs them: real subprocesses against a real hub with a runner."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import TIMEOUT, norn_argv, norn_env
from pipeline_support import runner_hub
from websockets.sync.client import connect

from norn_cli.core.config import load_config

APPS = """
[apps.web]
[[apps.web.deploy]]
name = "build"
run = "echo building $NORN_REF"

[[apps.web.deploy]]
name = "test"
run = "echo testing; exit ${FAIL:-0}"

[apps.broken]
[[apps.broken.deploy]]
name = "build"
run = "echo compiling; echo 'error: missing semicolon'; exit 2"

[[apps.broken.deploy]]
name = "ship"
run = "true"

[apps.slow]
[[apps.slow.deploy]]
name = "wait"
run = "echo waiting; sleep 30"
"""


@pytest.fixture
def hub_url(tmp_path: Path) -> Iterator[str]:
    with runner_hub(APPS, tmp_path, kill_grace=1.0) as th:
        yield th.url


def norn(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        norn_argv(*args), capture_output=True, text=True, timeout=TIMEOUT * 3, env=norn_env(**env)
    )


def test_deploy_completes(hub_url: str) -> None:
    """A completed deploy exits 0; a pipe gets one line per step change."""
    result = norn("--url", hub_url, "deploy", "web", "v2")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert re.fullmatch(r"deploy web @ v2  run [0-9a-f]{12}: build, test", lines[0])
    assert [re.sub(r" in \d+ms$", "", line) for line in lines[1:7]] == [
        "build: running", "build | building v2", "build: completed", "test: running", "test | testing", "test: completed",
    ]  # fmt: skip
    assert re.fullmatch(r"deploy of web completed in \d+ms", lines[7]) and len(lines) == 8
    assert result.stderr == ""
    quiet = norn("--url", hub_url, "deploy", "web", "v2", "--quiet")
    assert quiet.returncode == 0 and " | " not in quiet.stdout


def test_deploy_fails(hub_url: str) -> None:
    """A failed step exits 1 and shows the step's last output and error."""
    result = norn("--url", hub_url, "deploy", "broken")
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    run_id = lines[0].rsplit("run ", 1)[1].split(":")[0]
    assert lines[2:4] == ["build | compiling", "build | error: missing semicolon"]
    assert re.fullmatch(r"build: failed in \d+ms: exit status 2", lines[4])
    assert lines[5:8] == ["last 2 output lines of build:", "  | compiling", "  | error: missing semicolon"]
    assert re.fullmatch(r"deploy of broken failed at build after \d+ms: exit status 2", lines[8])
    assert lines[9:] == [f"full output: norn watch {run_id} --json"]
    one = norn("--url", hub_url, "deploy", "broken", "--lines", "1", "-q")
    assert one.returncode == 1
    assert one.stdout.splitlines()[3:5] == ["last 1 output line of build:", "  | error: missing semicolon"]


def test_json_then_watch_replays_the_same(hub_url: str) -> None:
    """--json prints only the run's envelopes; `norn watch RUN_ID` replays exactly those."""
    result = norn("--url", hub_url, "deploy", "web", "--json")
    assert result.returncode == 0 and result.stderr == ""
    events = [json.loads(line) for line in result.stdout.splitlines()]
    run_id = events[0]["payload"]["runId"]
    assert events[0]["type"] == "deploy.queued" and events[-1]["type"] == "deploy.completed"
    assert {e["payload"]["runId"] for e in events} == {run_id}
    watched = norn("--url", hub_url, "watch", run_id, "--json")
    assert watched.returncode == 0 and watched.stdout == result.stdout
    attached = norn("--url", hub_url, "deploy", "web", "--attach", "--json")
    assert attached.returncode == 0 and attached.stdout == result.stdout


def test_refusals_exit_1_with_one_line(hub_url: str) -> None:
    """Unknown app, a run already going: exit 1, one sentence on stderr, nothing on stdout."""
    unknown = norn("--url", hub_url, "deploy", "nope")
    assert (unknown.returncode, unknown.stdout) == (1, "")
    assert unknown.stderr == "norn: no app 'nope' in the hub's config (apps: broken, slow, web)\n"
    with subprocess.Popen(norn_argv("--url", hub_url, "deploy", "slow", "--json"), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=norn_env()) as first:  # fmt: skip
        assert first.stdout is not None
        run_id = json.loads(first.stdout.readline())["payload"]["runId"]
        second = norn("--url", hub_url, "deploy", "slow")
        assert second.returncode == 1
        assert re.fullmatch(rf"norn: slow already has a deploy running: run {run_id}, started \S+\n", second.stderr)
        first.send_signal(signal.SIGINT)
        first.wait(TIMEOUT)


def test_ctrl_c_detaches_and_says_how_to_reattach(hub_url: str) -> None:
    """Ctrl-C exits 130, the run goes on, and stderr tells how to watch it again."""
    with subprocess.Popen(norn_argv("--url", hub_url, "deploy", "slow", "--json"), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=norn_env()) as proc:  # fmt: skip
        assert proc.stdout is not None and proc.stderr is not None
        run_id = json.loads(proc.stdout.readline())["payload"]["runId"]
        while json.loads(proc.stdout.readline())["payload"].get("output") != "waiting":
            pass
        proc.send_signal(signal.SIGINT)
        assert proc.wait(TIMEOUT) == 130
        assert proc.stderr.read() == f"detached; the deploy goes on at the hub. Re-attach with: norn watch {run_id}\n"
    still = norn("--url", hub_url, "deploy", "slow")
    assert still.returncode == 1 and f"run {run_id}" in still.stderr  # the run went on


def test_unreachable_hub_exits_3() -> None:
    """No hub at the URL: exit 3."""
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        result = norn("--url", f"ws://127.0.0.1:{bound.getsockname()[1]}", "deploy", "web")
    assert result.returncode == 3 and result.stderr.startswith("norn: ")


def test_rollback_and_restart(hub_url: str) -> None:
    """rollback APP TAG announces deploy.rollback; restart announces app.restarted; TAG is required."""
    rollback = norn("--url", hub_url, "rollback", "web", "v1.4.2", "--json")
    assert rollback.returncode == 0
    types = [json.loads(line)["type"] for line in rollback.stdout.splitlines()]
    assert types == ["rollback.queued", "deploy.rollback", "rollback.completed"]
    restart = norn("--url", hub_url, "restart", "web")
    assert restart.returncode == 0
    assert re.fullmatch(r"restart of web completed in \d+ms", restart.stdout.splitlines()[-1])
    usage = norn("--url", hub_url, "rollback", "web")
    assert usage.returncode == 2 and "rollback needs a TAG" in usage.stderr


def test_demo() -> None:
    """`norn demo`: v1.0.0 fails at its test step with its output shown, v1.0.1 completes; it names its norn.toml; exit 0."""
    result = norn("demo")
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    steps = [line.split(":")[0] for line in out if ": completed in " in line or ": failed in " in line]
    assert steps == ["checkout", "build", "test", "checkout", "build", "test", "release"]
    assert "test | test_login FAILED: expected 200, got 500" in out
    assert any(re.fullmatch(r"deploy of demo failed at test after [\d.]+m?s: exit status 1", line) for line in out)
    assert re.fullmatch(r"deploy of demo completed in [\d.]+m?s", out[-1])
    err = result.stderr.splitlines()
    assert err[0] == "norn demo: v1.0.0 failed at its test step, as the demo planned; now its fix, v1.0.1"
    config = re.fullmatch(r"norn demo: that was an embedded hub running the sample (\S+/norn.toml)", err[1]).group(1)  # type: ignore[union-attr]
    assert err[2] == f"  run it yourself: norn serve --config {config}   then: norn deploy demo v1.0.1"
    assert err[3].startswith("  your own: norn init writes a commented norn.toml")
    assert [app.name for app in load_config(Path(config)).apps.values()] == ["demo"]
    as_json = norn("demo", "--json")
    assert as_json.returncode == 0
    types = [json.loads(line)["type"] for line in as_json.stdout.splitlines()]
    assert types.count("deploy.failed") == 1 and types[-1] == "deploy.completed"


def test_init_writes_a_norn_toml_serve_reads_and_never_overwrites(tmp_path: Path) -> None:
    """`norn init` writes ./norn.toml (the folder's name as app, deploy steps, a health URL) that parses; a second run exits 1."""
    folder = tmp_path / "shop api"
    folder.mkdir()
    done = subprocess.run(norn_argv("init"), cwd=folder, capture_output=True, text=True, env=norn_env(), timeout=TIMEOUT * 3)
    path = folder / "norn.toml"
    assert (done.returncode, done.stdout) == (0, "")
    assert done.stderr == f"norn: wrote {path} with app shop-api; try: norn serve, then norn deploy shop-api\n"
    written = path.read_text()
    config = load_config(path)
    app = config.apps["shop-api"]
    assert [step.name for step in app.steps("deploy")] == ["build", "test", "release"]
    assert app.health == "http://127.0.0.1:8080/healthz"
    assert config.serve == {}  # every [serve] default is a comment
    again = subprocess.run(norn_argv("init"), cwd=folder, capture_output=True, text=True, env=norn_env(), timeout=TIMEOUT * 3)
    assert again.returncode == 1
    assert again.stderr == f"norn: {path} exists already; left as it is (remove it, or edit it)\n"
    assert path.read_text() == written
    named = subprocess.run(norn_argv("init", "--app", "web"), cwd=tmp_path, capture_output=True, text=True, env=norn_env(), timeout=TIMEOUT * 3)
    assert named.returncode == 0 and list(load_config(tmp_path / "norn.toml").apps) == ["web"]


def test_serve_with_config_then_deploy(tmp_path: Path) -> None:
    """`norn serve --config` runs the file's pipelines for `norn deploy`; a stop ends it cleanly."""
    config = tmp_path / "norn.toml"
    config.write_text(APPS)
    with subprocess.Popen(norn_argv("serve", "--port", "0", "--config", str(config)), stderr=subprocess.PIPE,
                          text=True, env=norn_env()) as serve:  # fmt: skip
        assert serve.stderr is not None
        try:
            listening = serve.stderr.readline()
            url = re.search(r"listening on (ws://\S+) ", listening).group(1)  # type: ignore[union-attr]
            assert serve.stderr.readline() == f"pipelines of broken, slow, web from {config}\n"
            result = norn("--url", url, "deploy", "web", "main", "--json", FAIL="0")
            assert result.returncode == 0
            output = [json.loads(line)["payload"].get("output") for line in result.stdout.splitlines()]
            assert "building main" in output
        finally:
            serve.send_signal(signal.SIGTERM)
            serve.wait(TIMEOUT)


def test_attach_renders_a_norn_style_run(hub_url: str) -> None:
    """A run published by someone else (no runId, Norn's statuses) is found and shown by --attach."""
    start = "2027-01-15T08:00:00.000Z"
    events = [
        {"type": "deploy.queued", "appId": "norn-ui", "payload": {"id": "d-7", "app": "norn-ui", "commitSha": "f00d",
                                                                  "status": "pending", "steps": ["build", "deploy"], "startedAt": start}},
        {"type": "deploy.step", "appId": "norn-ui", "payload": {"step": "build", "status": "building"}},
        {"type": "deploy.step", "appId": "norn-ui", "payload": {"step": "deploy", "status": "deployed", "durationMs": "1200"}},
        {"type": "deploy.completed", "appId": "norn-ui", "payload": {"id": "d-7", "app": "norn-ui", "commitSha": "f00d",
                                                                     "status": "complete", "steps": ["build", "deploy"], "startedAt": start}},
    ]  # fmt: skip
    published = norn("--url", hub_url, "watch", "d-7")
    assert (published.returncode, published.stderr) == (1, "norn: no run d-7 is known to the hub\n")
    with connect(hub_url + "/api") as api:
        api.send(json.dumps({"op": "publish", "events": events}))
        assert json.loads(api.recv(TIMEOUT))["ok"] is True
    result = norn("--url", hub_url, "deploy", "norn-ui", "--attach")
    assert result.returncode == 0, result.stderr
    assert norn("--url", hub_url, "watch", "d-7").stdout == result.stdout  # the Deployment's id names it
    lines = result.stdout.splitlines()
    assert lines[0] == "deploy norn-ui @ f00d  run d-7: build, deploy"
    assert re.sub(r" in \d+ms", "", "\n".join(lines[1:4])) == "build: building\nbuild: completed\ndeploy: deployed in 1.2s"
    assert re.fullmatch(r"deploy of norn-ui completed in .+", lines[4])

