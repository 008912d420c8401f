"""RunState: the view's pure state machine, fed norn-runner and Norn-style envelopes."""

from __future__ import annotations

from typing import Any

import pytest

from norn_cli.core.events import now_ts
from norn_cli.core.run_state import DONE, FAILED, PENDING, RUNNING, SKIPPED, RunState, phase_of

T0 = 1_800_000_000.0  # an instant, in epoch seconds


def env(etype: str, payload: dict[str, Any], at: float | None = T0, app: str = "web") -> dict[str, Any]:
    """An envelope as the hub sends it (`at=None`: a Norn-style one without id/ts)."""
    out: dict[str, Any] = {"type": etype, "appId": app, "payload": payload}
    if at is not None:
        out["ts"] = now_ts(int(at * 1000))
        out["id"] = f"{int(at * 1000)}-0"
    return out


def deployment(status: str, steps: list[Any], **extra: Any) -> dict[str, Any]:
    return {"id": "r1", "runId": "r1", "app": "web", "ref": "abc", "status": status, "steps": steps,
            "startedAt": now_ts(int(T0 * 1000)), **extra}  # fmt: skip


def feed(state: RunState, *envs: dict[str, Any]) -> RunState:
    for e in envs:
        state.apply(e, now=T0 + 100)
    return state


def test_runner_run_that_fails() -> None:
    """Planned steps start pending; running, output, completed and failed are followed exactly."""
    plan = [{"name": "build", "status": "pending"}, {"name": "test", "status": "pending"}, {"name": "push", "status": "pending"}]
    state = feed(RunState(), env("deploy.queued", deployment("queued", plan)))
    assert (state.kind, state.app, state.ref, state.run_id) == ("deploy", "web", "abc", "r1")
    assert [s.phase for s in state.steps.values()] == [PENDING, PENDING, PENDING]
    feed(
        state,
        env("deploy.step", {"step": "build", "status": "running", "runId": "r1"}, T0 + 1),
        env("deploy.step", {"step": "build", "status": "running", "runId": "r1", "output": "a\nb"}, T0 + 1.5),
        env("deploy.step", {"step": "build", "status": "completed", "runId": "r1", "durationMs": 1234}, T0 + 2),
        env("deploy.step", {"step": "test", "status": "running", "runId": "r1"}, T0 + 2),
    )
    build, test, push = state.steps.values()
    assert (build.phase, build.duration_ms, list(build.output)) == (DONE, 1234.0, ["a", "b"])
    assert (test.phase, test.started, push.phase) == (RUNNING, T0 + 2, PENDING)
    assert state.finished_steps == 1 and not state.done and state.elapsed(T0 + 5) == 5.0
    feed(
        state,
        env("deploy.step", {"step": "test", "status": "failed", "runId": "r1", "durationMs": 500, "error": "exit status 1"}, T0 + 3),
        env("deploy.failed", deployment("failed", plan, error="exit status 1", step="test", finishedAt=now_ts(int((T0 + 3) * 1000))), T0 + 3),
    )
    assert (state.outcome, state.failed_step, state.error, state.ok) == ("failed", "test", "exit status 1", False)
    assert (test.phase, test.error, push.phase) == (FAILED, "exit status 1", PENDING)
    assert state.elapsed(T0 + 99) == 3.0


def test_norn_style_run_without_step_completions() -> None:
    """Norn's publishers only say when a step starts: earlier steps are then done, timed by ts."""
    state = feed(
        RunState(),
        env("deploy.queued", {"id": "d-9", "app": "web", "commitSha": "f00d", "status": "pending",
                              "steps": ["build", "test", "migrate", "deploy"], "startedAt": now_ts(int(T0 * 1000))}),  # fmt: skip
        env("deploy.step", {"step": "build", "status": "building"}, T0),
        env("deploy.step", {"step": "test", "status": "testing"}, T0 + 4),
    )
    assert (state.run_id, state.ref) == ("d-9", "f00d")
    build = state.steps["build"]
    assert (build.phase, build.status, build.duration_ms) == (DONE, "completed", 4000.0)
    assert (state.steps["test"].phase, state.steps["test"].status) == (RUNNING, "testing")
    feed(
        state,
        env("deploy.step", {"step": "migrate", "status": "skipped"}, T0 + 5),
        env("deploy.step", {"step": "deploy", "status": "deployed", "durationMs": "2.5s"}, T0 + 8),
        env("deploy.completed", {"id": "d-9", "app": "web", "commitSha": "f00d", "status": "complete",
                                 "steps": ["build", "test", "migrate", "deploy"], "startedAt": now_ts(int(T0 * 1000))}, T0 + 8),  # fmt: skip
    )
    assert state.ok and state.finished == T0 + 8
    assert [s.phase for s in state.steps.values()] == [DONE, DONE, SKIPPED, DONE]
    assert state.steps["deploy"].duration_ms == 2500.0
    assert state.steps["test"].duration_ms == 1000.0  # over when the next step said something, at T0+5
    assert state.finished_steps == 4


def test_failed_without_step_blames_the_running_one() -> None:
    """forge.failed {step, error}, or only {error}: the step still running is the one that failed."""
    state = feed(
        RunState(),
        env("forge.queued", {"app": "web"}, None),
        env("forge.step", {"step": "clone", "status": "running"}, None),
        env("forge.failed", {"error": "disk full"}, None),
    )
    assert (state.kind, state.failed_step, state.error) == ("forge", "clone", "disk full")
    assert state.steps["clone"].phase == FAILED
    assert state.started == T0 + 100  # no ts: the time it was received


def test_odd_inputs_are_harmless() -> None:
    """Unknown statuses run, durations as strings are read or shown, other events are ignored."""
    state = RunState(kind="teardown")
    assert state.apply(env("backup.completed", {}, T0)) is False  # another pipeline
    assert state.apply(env("app.status", {"healthy": True}, T0)) is False
    assert state.apply({"type": "deploy.step", "payload": "nope"}) is False
    feed(state, env("teardown.step", {"step": "drain", "status": "draining", "durationMs": "about 3s"}, T0))
    drain = state.steps["drain"]
    assert (drain.phase, drain.status, drain.duration_text) == (RUNNING, "draining", "about 3s")
    assert state.apply(env("deploy.step", {"step": "x", "status": "running"}, T0)) is False  # another kind
    assert state.apply({"type": "hub.gap", "appId": "", "payload": {"since": "1-0", "oldest": "5-0"}}) and state.gap
    feed(state, env("teardown.step", {"step": "drain", "status": "completed", "durationMs": "350"}, T0 + 1))
    feed(state, env("teardown.step", {"step": "drain", "status": "running", "output": "late line"}, T0 + 2))
    assert (drain.phase, drain.duration_ms, list(drain.output)) == (DONE, 350.0, ["late line"])


def test_rollback_and_restart_notes() -> None:
    """deploy.rollback sets the image tag; app.restarted marks the restart."""
    state = feed(
        RunState(),
        env("rollback.queued", {"app": "web", "runId": "r2", "imageTag": "v1", "steps": []}),
        env("deploy.rollback", {"imageTag": "v1", "runId": "r2"}),
        env("rollback.completed", {"runId": "r2"}),
    )
    assert (state.kind, state.image_tag, state.ok) == ("rollback", "v1", True)
    restart = feed(RunState(), env("restart.queued", {"app": "web", "runId": "r3"}), env("app.restarted", {"appId": "web"}))
    assert restart.restarted and not restart.done


@pytest.mark.parametrize(
    ("status", "phase"),
    [("building", RUNNING), ("Deployed", DONE), ("complete", DONE), ("skipped", SKIPPED), ("cancelled", FAILED),
     ("queued", PENDING), ("frobnicating", RUNNING)],
)  # fmt: skip
def test_phase_of(status: str, phase: str) -> None:
    """Statuses seen in the wild map to five phases; unknown ones count as running."""
    assert phase_of(status) == phase
