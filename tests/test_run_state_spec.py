"""run_state.py against tests/run_state_spec.json, the spec its JavaScript port in the dashboard also meets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from norn_cli.core.run_state import RunState

SPEC = Path(__file__).resolve().parent / "run_state_spec.json"
CASES: list[dict[str, Any]] = json.loads(SPEC.read_text(encoding="utf-8"))["cases"]


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1000)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def snapshot(state: RunState, now: float) -> dict[str, Any]:
    """Everything the views read of a run, in the spec's (camelCase) terms."""
    elapsed = state.elapsed(now)
    return {
        "kind": state.kind, "app": state.app, "ref": state.ref, "imageTag": state.image_tag, "runId": state.run_id,
        "outcome": state.outcome, "error": state.error, "failedStep": state.failed_step,
        "started": _ms(state.started), "finished": _ms(state.finished), "restarted": state.restarted,
        "gap": state.gap, "lastId": state.last_id, "done": state.done, "ok": state.ok,
        "finishedSteps": state.finished_steps, "running": [s.name for s in state.running()],
        "elapsedMs": _ms(elapsed),
        "steps": [
            {
                "name": s.name, "status": s.status, "phase": s.phase, "durationMs": _round(s.duration_ms),
                "durationText": s.duration_text, "started": _ms(s.started), "error": s.error, "output": list(s.output),
            }
            for s in state.steps.values()
        ],
    }  # fmt: skip


def play(case: dict[str, Any]) -> tuple[list[bool], RunState]:
    """Feed a case's events to a fresh RunState; what each apply() returned, and the state."""
    init = case.get("init", {})
    state = RunState(init.get("runId"), init.get("kind"))
    applied = [state.apply(env, now=case["now"]) for env in case["events"]]
    return applied, state


def test_spec_is_not_empty() -> None:
    """The spec holds cases for every kind of run and odd input (a guard against an emptied file)."""
    assert len(CASES) >= 15
    assert len({c["name"] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_run_state_meets_the_spec(case: dict[str, Any]) -> None:
    """Each event sequence gives exactly the spec's state, and apply() says exactly which events counted."""
    applied, state = play(case)
    assert applied == case["applied"]
    assert snapshot(state, case["now"]) == case["expect"]


if __name__ == "__main__":
    # After an intended change to run_state.py: rewrite each case's `applied`
    # and `expect` from it, review the diff, and port the change to app.js.
    doc = json.loads(SPEC.read_text(encoding="utf-8"))
    for case in doc["cases"]:
        applied, state = play(case)
        case["applied"], case["expect"] = applied, snapshot(state, case["now"])
    SPEC.write_text(json.dumps(doc, indent=1, ensure_ascii=True) + "\n", encoding="utf-8")
