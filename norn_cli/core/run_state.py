"""What a pipeline run looks like so far, built from its events alone: a pure state machine.

`RunState.apply(envelope)` takes the hub's envelopes in order, whoever
published them: norn's own runner (with `runId`, a `steps` plan, output
lines and `durationMs`) or Norn-style publishers (`deploy.step` with
`building`, `deployed`, ... and nothing else). No I/O, no clock: the
caller passes `now` where an event has no `ts`.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = ["DONE", "FAILED", "PENDING", "RUNNING", "SKIPPED", "RunState", "StepState", "phase_of"]

PENDING, RUNNING, DONE, FAILED, SKIPPED = "pending", "running", "done", "failed", "skipped"
OUTPUT_KEEP = 200  # output lines remembered per step

_PHASES = {
    **dict.fromkeys(("pending", "queued", "waiting", "planned"), PENDING),
    **dict.fromkeys(
        ("completed", "complete", "deployed", "succeeded", "success", "done", "ok", "passed", "finished"), DONE
    ),
    **dict.fromkeys(
        ("failed", "failure", "error", "errored", "cancelled", "canceled", "timeout", "timed_out"), FAILED
    ),
    **dict.fromkeys(("skipped", "skip"), SKIPPED),
}
_DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|s|m)?$")
_FINAL = frozenset({"completed", "failed"})


def phase_of(status: str) -> str:
    """pending, running, done, failed or skipped; any status not known means running."""
    return _PHASES.get(status.strip().lower(), RUNNING)


@dataclass
class StepState:
    """One step as the events told it."""

    name: str
    status: str = "pending"
    phase: str = PENDING
    duration_ms: float | None = None
    duration_text: str | None = None  # a durationMs that is not a number, shown as given
    started: float | None = None  # when it began running (hub clock, epoch seconds)
    error: str | None = None
    output: deque[str] = field(default_factory=lambda: deque(maxlen=OUTPUT_KEEP))

    def set_duration(self, value: Any) -> None:
        """Take `durationMs` as a number, a numeric string, or text like "1.2s" / "350ms"."""
        if isinstance(value, bool) or value is None:
            return
        if isinstance(value, (int, float)):
            self.duration_ms, self.duration_text = float(value), None
            return
        text = str(value).strip()
        m = _DURATION_RE.match(text)
        if m is None:
            self.duration_ms, self.duration_text = None, text or None
            return
        scale = {"s": 1000.0, "m": 60_000.0}.get(m.group(2) or "ms", 1.0)
        self.duration_ms, self.duration_text = float(m.group(1)) * scale, None


class RunState:
    """One run: header facts, its steps in order, and how it ended."""

    def __init__(self, run_id: str | None = None, kind: str | None = None) -> None:
        self.run_id = run_id
        self.kind = kind  # None: taken from the first pipeline event
        self.app: str | None = None
        self.ref: str | None = None
        self.image_tag: str | None = None
        self.steps: dict[str, StepState] = {}
        self.outcome: str | None = None  # "completed" or "failed"
        self.error: str | None = None
        self.failed_step: str | None = None
        self.started: float | None = None
        self.finished: float | None = None
        self.restarted = False
        self.gap = False  # the hub said some events may be missing
        self.last_id: str | None = None

    # ------------------------------------------------------------ queries

    @property
    def done(self) -> bool:
        return self.outcome is not None

    @property
    def ok(self) -> bool:
        return self.outcome == "completed"

    @property
    def finished_steps(self) -> int:
        return sum(1 for s in self.steps.values() if s.phase in (DONE, FAILED, SKIPPED))

    def running(self) -> list[StepState]:
        return [s for s in self.steps.values() if s.phase == RUNNING]

    def elapsed(self, now: float) -> float | None:
        """Seconds since the run began (until it ended), or None before anything is known."""
        if self.started is None:
            return None
        end = self.finished if self.finished is not None else now
        return max(0.0, end - self.started)

    # ------------------------------------------------------------ the machine

    def apply(self, env: dict[str, Any], now: float | None = None) -> bool:
        """Fold one envelope into the state; False when it says nothing about the run."""
        etype = env.get("type")
        payload = env.get("payload")
        if not isinstance(etype, str) or not isinstance(payload, dict):
            return False
        if etype == "hub.gap":
            self.gap = True
            return True
        ts = _epoch(env.get("ts"), now)
        kind, _, what = etype.partition(".")
        if what in ("queued", "step", *_FINAL):
            if self.kind is None:
                self.kind = kind
            elif kind != self.kind:
                return False
        elif etype == "deploy.rollback":
            self.image_tag = _text(payload.get("imageTag")) or self.image_tag
            return True
        elif etype == "app.restarted":
            self.restarted = True
            return True
        else:
            return False
        if isinstance(env.get("id"), str):
            self.last_id = env["id"]
        if self.app is None and isinstance(env.get("appId"), str):
            self.app = env["appId"]
        self.run_id = self.run_id or _text(payload.get("runId")) or (
            _text(payload.get("id")) if kind == "deploy" and what != "step" else None
        )
        if self.started is None:
            self.started = _epoch(payload.get("startedAt"), ts)
        if what == "step":
            self._step(payload, ts)
        else:
            self.ref = _text(payload.get("ref")) or _text(payload.get("commitSha")) or self.ref
            self.image_tag = _text(payload.get("imageTag")) or self.image_tag
            self._plan(payload.get("steps"))
            if what in _FINAL:
                self._finish(what, payload, ts)
        return True

    def _step_named(self, name: str) -> StepState:
        step = self.steps.get(name)
        if step is None:
            step = self.steps[name] = StepState(name)
        return step

    def _plan(self, steps: Any) -> None:
        """Steps listed in a queued/final payload: names, or objects with name and status."""
        if not isinstance(steps, list):
            return
        for item in steps:
            if isinstance(item, str):
                self._step_named(item)
            elif isinstance(item, dict):
                name = _text(item.get("name")) or _text(item.get("step"))
                if name is None:
                    continue
                step = self._step_named(name)
                status = _text(item.get("status"))
                if status is not None and phase_of(status) not in (PENDING, RUNNING):
                    step.status, step.phase = status, phase_of(status)
                if "durationMs" in item:
                    step.set_duration(item["durationMs"])

    def _step(self, payload: dict[str, Any], ts: float | None) -> None:
        name = _text(payload.get("step"))
        if name is None:
            return
        step = self._step_named(name)
        status = _text(payload.get("status")) or "running"
        phase = phase_of(status)
        output = payload.get("output")
        if isinstance(output, str) and output:
            step.output.extend(output.splitlines())
            if phase == RUNNING and step.phase != PENDING:
                return  # output of a step under way (or late output) changes nothing else
        if phase == RUNNING and step.phase != RUNNING:
            step.started = ts
        if step.phase == PENDING and phase != PENDING:
            # Norn-style runs may only say when a step starts: the ones before it are over.
            for other in self.steps.values():
                if other is step:
                    break
                if other.phase == RUNNING:
                    self._close(other, DONE, ts)
        step.status, step.phase = status, phase
        if "durationMs" in payload:
            step.set_duration(payload["durationMs"])
        elif phase != RUNNING and step.duration_ms is None and step.started is not None and ts is not None:
            step.duration_ms = max(0.0, (ts - step.started) * 1000)
        if phase == FAILED:
            step.error = _text(payload.get("error")) or step.error

    def _finish(self, what: str, payload: dict[str, Any], ts: float | None) -> None:
        self.outcome = what
        self.finished = _epoch(payload.get("finishedAt"), ts)
        if what == "completed":
            for step in self.running():
                self._close(step, DONE, ts)
            return
        self.error = _text(payload.get("error")) or "failed"
        running = self.running()
        name = _text(payload.get("step")) or (running[-1].name if running else None)
        if name is None:
            failed = [s for s in self.steps.values() if s.phase == FAILED]
            name = failed[-1].name if failed else None
        self.failed_step = name
        for step in running:
            self._close(step, FAILED, ts)
        if name is not None and name in self.steps and self.steps[name].phase != FAILED:
            self._close(self.steps[name], FAILED, ts)

    @staticmethod
    def _close(step: StepState, phase: str, ts: float | None) -> None:
        step.phase = phase
        if phase == FAILED:
            step.status = "failed"
        elif phase_of(step.status) != DONE:
            step.status = "completed"
        if step.duration_ms is None and step.duration_text is None and step.started is not None and ts is not None:
            step.duration_ms = max(0.0, (ts - step.started) * 1000)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _epoch(value: Any, default: float | None) -> float | None:
    """RFC 3339 text as epoch seconds; `default` when absent or unreadable."""
    if not isinstance(value, str) or not value:
        return default
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return default
