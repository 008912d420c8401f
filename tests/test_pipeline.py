"""The runner on a real hub and real subprocesses: event sequences, failures, timeouts, conflicts, shutdown."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import TIMEOUT
from pipeline_support import api, milestones, output_of, runner_on, subscribed, wait_dead

from norn_cli.core.events import validate_event
from norn_cli.hub.pipeline.runner import CANCELLED
from norn_cli.hub.pipeline.steps import OUTPUT_MAX_CHARS, OutputTail
from norn_cli.hub.server import HubServer

STEP_TIMEOUT = TIMEOUT / 10  # long enough for the step to start its grandchild, even on a slow machine
APPS = f"""
[apps.web]
env = {{ IMAGE = "web" }}

[[apps.web.deploy]]
name = "build"
run = "echo app=$NORN_APP ref=$NORN_REF run=$NORN_RUN_ID kind=$NORN_KIND image=$IMAGE; echo built"

[[apps.web.deploy]]
name = "test"
run = "echo testing"

[[apps.web.forge]]
name = "provision"
run = "echo provisioned in $(basename $PWD)"

[[apps.web.teardown]]
name = "remove"
run = "echo removing; exit 3"

[[apps.web.teardown]]
name = "never"
run = "echo never runs"

[[apps.web.restart]]
name = "bounce"
run = "echo bounced"

[apps.slow]
[[apps.slow.deploy]]
name = "wait"
run = "echo waiting; sleep 30"

[[apps.slow.forge]]
name = "quick"
run = "true"

[apps.tree]
[[apps.tree.deploy]]
name = "spawn"
run = "sh -c 'sleep 30 & echo grandchild $!; wait'"
timeout = {STEP_TIMEOUT:g}

[apps.chatty]
[[apps.chatty.deploy]]
name = "spew"
run = "i=0; while [ $i -lt 3000 ]; do echo line $i of output; i=$(($i+1)); done"

[apps.lone]
"""


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


async def test_deploy_success_sequence(hub: HubServer, workdir: Path) -> None:
    """A deploy publishes queued, running/completed per step, then completed, all with runId."""
    runner_on(hub, APPS, workdir)
    async with subscribed(hub, "?app=web") as events:
        reply = await api(hub, {"op": "deploy", "app": "web", "ref": "abc123"})
        assert reply["ok"] is True
        seen = await events.run_end()
    run_id = reply["runId"]
    assert seen[0]["id"] == reply["id"]
    assert milestones(seen) == [
        ("deploy.queued",),
        ("deploy.step", "build", "running"),
        ("deploy.step", "build", "completed"),
        ("deploy.step", "test", "running"),
        ("deploy.step", "test", "completed"),
        ("deploy.completed",),
    ]
    for env in seen:
        validate_event({k: env[k] for k in ("type", "appId", "payload")})
        assert env["payload"]["runId"] == run_id
    queued, done = seen[0]["payload"], seen[-1]["payload"]
    assert queued["steps"] == [{"name": "build", "status": "pending"}, {"name": "test", "status": "pending"}]
    assert (queued["id"], queued["app"], queued["ref"], queued["status"]) == (run_id, "web", "abc123", "queued")
    assert done["status"] == "completed" and done["finishedAt"] and done["error"] is None
    assert [s["status"] for s in done["steps"]] == ["completed", "completed"]
    assert all(isinstance(s["durationMs"], int) for s in done["steps"])
    assert output_of(seen, "build") == [f"app=web ref=abc123 run={run_id} kind=deploy image=web", "built"]


async def test_failing_step_ends_the_run(hub: HubServer, workdir: Path) -> None:
    """A step exiting non-zero fails the run: no later step runs, .failed names the step and error."""
    runner_on(hub, APPS, workdir)
    async with subscribed(hub, "?app=web") as events:
        reply = await api(hub, {"op": "teardown", "app": "web"})
        seen = await events.run_end("teardown")
    assert milestones(seen) == [
        ("teardown.queued",),
        ("teardown.step", "remove", "running"),
        ("teardown.step", "remove", "failed"),
        ("teardown.failed",),
    ]
    assert seen[-2]["payload"]["error"] == "exit status 3"
    failed = seen[-1]["payload"]
    assert (failed["step"], failed["error"], failed["runId"]) == ("remove", "exit status 3", reply["runId"])
    assert [s["status"] for s in failed["steps"]] == ["failed", "pending"]
    assert output_of(seen, "remove") == ["removing"]


async def test_forge_runs_in_workdir_and_plans_steps(hub: HubServer, workdir: Path) -> None:
    """forge.queued carries app and the planned steps; steps run in the app's workdir."""
    runner_on(hub, APPS, workdir)
    async with subscribed(hub, "?app=web") as events:
        await api(hub, {"op": "forge", "app": "web"})
        seen = await events.run_end("forge")
    queued = seen[0]["payload"]
    assert queued["app"] == "web" and queued["steps"] == [{"name": "provision", "status": "pending"}]
    assert output_of(seen, "provision") == [f"provisioned in {workdir.name}"]
    assert milestones(seen)[-1] == ("forge.completed",)


async def test_restart_announces_app_restarted(hub: HubServer, workdir: Path) -> None:
    """restart runs its steps, then publishes app.restarted, then restart.completed."""
    runner_on(hub, APPS, workdir)
    async with subscribed(hub, "?app=web") as events:
        reply = await api(hub, {"op": "restart", "app": "web"})
        seen = await events.run_end("restart")
    assert milestones(seen) == [
        ("restart.queued",),
        ("restart.step", "bounce", "running"),
        ("restart.step", "bounce", "completed"),
        ("app.restarted",),
        ("restart.completed",),
    ]
    assert seen[-2]["payload"] == {"appId": "web", "runId": reply["runId"]}


async def test_rollback_without_steps(hub: HubServer, workdir: Path) -> None:
    """rollback with no configured steps announces deploy.rollback {imageTag} and completes."""
    runner_on(hub, APPS, workdir)
    async with subscribed(hub, "?app=web") as events:
        reply = await api(hub, {"op": "rollback", "app": "web", "tag": "2026-11-26.3"})
        seen = await events.run_end("rollback")
    assert milestones(seen) == [("rollback.queued",), ("deploy.rollback",), ("rollback.completed",)]
    assert seen[1]["payload"] == {"imageTag": "2026-11-26.3", "runId": reply["runId"]}
    assert seen[0]["payload"]["imageTag"] == "2026-11-26.3"


async def test_refusals(hub: HubServer, workdir: Path) -> None:
    """Unknown app: not_found; no steps of that kind: not_found; bad ref or no tag: bad_request."""
    runner_on(hub, APPS, workdir)
    cases = [
        ({"op": "deploy", "app": "nope"}, "not_found", "no app 'nope'"),
        ({"op": "deploy", "app": "lone"}, "not_found", "lone has no deploy steps"),
        ({"op": "deploy"}, "bad_request", '"app"'),
        ({"op": "deploy", "app": "web", "ref": "a b; rm -rf /"}, "bad_request", '"ref"'),
        ({"op": "rollback", "app": "web"}, "bad_request", '"tag"'),
        ({"op": "runinfo", "runId": "0000"}, "not_found", "no run 0000"),
    ]
    for request, code, words in cases:
        reply = await api(hub, request)
        assert reply["ok"] is False and reply["error"]["code"] == code, request
        assert words in reply["error"]["message"]


async def test_second_run_of_a_kind_conflicts(hub: HubServer, workdir: Path) -> None:
    """While an app's deploy runs, another deploy is refused naming the run; other kinds may run."""
    runner_on(hub, APPS, workdir)
    async with subscribed(hub, "?app=slow") as events:
        first = await api(hub, {"op": "deploy", "app": "slow"})
        await events.until(lambda e: e["payload"].get("output") == "waiting")
        second = await api(hub, {"op": "deploy", "app": "slow"})
        assert second["ok"] is False and second["error"]["code"] == "conflict"
        assert first["runId"] in second["error"]["message"]
        forge = await api(hub, {"op": "forge", "app": "slow"})
        assert forge["ok"] is True
        await events.run_end("forge")


async def test_timeout_kills_the_process_tree(hub: HubServer, workdir: Path) -> None:
    """A step over its timeout fails, and its whole process group dies, grandchildren included."""
    runner_on(hub, APPS, workdir)
    async with subscribed(hub, "?app=tree") as events:
        await api(hub, {"op": "deploy", "app": "tree"})
        seen = await events.run_end()
    (line,) = output_of(seen, "spawn")
    grandchild = int(re.fullmatch(r"grandchild (\d+)", line).group(1))  # type: ignore[union-attr]
    step = [e for e in seen if e["payload"].get("status") == "failed" and e["type"] == "deploy.step"]
    assert step[0]["payload"]["error"] == f"timed out after {STEP_TIMEOUT:g}s"
    assert seen[-1]["payload"]["error"] == step[0]["payload"]["error"] and seen[-1]["payload"]["step"] == "spawn"
    await wait_dead(grandchild)


async def test_shutdown_cancels_running_steps(workdir: Path) -> None:
    """Stopping the hub kills running steps and publishes .failed saying so before clients close."""
    srv = HubServer(host="127.0.0.1", port=0, history=100)
    await srv.start()
    runner_on(srv, APPS, workdir, kill_grace=1.0)
    async with subscribed(srv, "?app=slow") as events:
        reply = await api(srv, {"op": "deploy", "app": "slow"})
        await events.until(lambda e: e["payload"].get("output") == "waiting")
        await srv.close()
        seen = await events.run_end()
    assert milestones(seen)[-2:] == [("deploy.step", "wait", "failed"), ("deploy.failed",)]
    failed = seen[-1]["payload"]
    assert (failed["error"], failed["step"], failed["runId"]) == (CANCELLED, "wait", reply["runId"])


async def test_output_is_bounded_and_keeps_the_tail(hub: HubServer, workdir: Path) -> None:
    """A flood of output becomes few events, each bounded, ending with the last line."""
    runner_on(hub, APPS, workdir)
    async with subscribed(hub, "?app=chatty") as events:
        await api(hub, {"op": "deploy", "app": "chatty"})
        seen = await events.run_end()
    outputs = [e["payload"]["output"] for e in seen if "output" in e["payload"]]
    assert 1 <= len(outputs) < 100
    assert all(len(text) <= OUTPUT_MAX_CHARS + 100 for text in outputs)
    lines = output_of(seen, "spew")
    assert lines[-1] == "line 2999 of output"
    assert any(re.fullmatch(r"… \d+ lines not shown", line) for line in lines)


async def test_runinfo_finds_runs(hub: HubServer, workdir: Path) -> None:
    """runinfo answers by runId and by app+kind, also for a run published by someone else."""
    runner_on(hub, APPS, workdir)
    async with subscribed(hub, "?app=web") as events:
        reply = await api(hub, {"op": "deploy", "app": "web"})
        await events.run_end()
    by_id = await api(hub, {"op": "runinfo", "runId": reply["runId"]})
    by_app = await api(hub, {"op": "runinfo", "app": "web", "kind": "deploy"})
    assert by_id == by_app
    assert (by_id["app"], by_id["kind"], by_id["id"], by_id["status"]) == ("web", "deploy", reply["id"], "completed")
    published = await api(hub, {"op": "publish", "event": {"type": "forge.queued", "appId": "norn-ui", "payload": {"app": "norn-ui"}}})
    other = await api(hub, {"op": "runinfo", "app": "norn-ui", "kind": "forge"})
    assert (other["runId"], other["id"], other["kind"]) == (None, published["id"], "forge")


async def test_output_lines_are_cut_as_a_terminal_shows_them() -> None:
    """Lines split across reads, CRLF, progress bars redrawn with CR, UTF-8 split mid-character."""
    tail = OutputTail(max_chars=40)
    for chunk in (b"one\r", b"\ntw", b"o\n10%\r50%", b"\r100%\n", "é".encode()[:1], "é\n".encode()[1:], b"last"):
        tail.feed(chunk)
    assert tail.take() == ["one", "two", "100%", "é"]
    assert tail.take(final=True) == ["last"]
    for i in range(20):
        tail.feed(f"line {i}\n".encode())
    assert tail.take() == ["… 15 lines not shown", "line 15", "line 16", "line 17", "line 18", "line 19"]
