"""Runs an app's configured steps as subprocesses on the hub and publishes their events.

A run is one pipeline (deploy, forge, teardown, restart, rollback) of one
app. Its events, all carrying `runId`: `<kind>.queued` (with the planned
`steps`), per step `<kind>.step` running / output / completed or failed,
then `<kind>.completed` or `<kind>.failed`. Deploy events carry the full
Deployment object; a restart announces `app.restarted` when it succeeds,
a rollback `deploy.rollback` when it starts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import signal
import subprocess
from collections.abc import Awaitable, Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from norn_cli.core.config import KINDS, App, Config, Step
from norn_cli.core.errors import OperationFailed
from norn_cli.core.events import Event, EventId, Filter, format_id, now_ts, validate_event
from norn_cli.core.run_state import FAILED, RUNNING, RunState, StepState
from norn_cli.hub.pipeline.health import check_health
from norn_cli.hub.pipeline.steps import OutputTail, StepProtocol, exit_error, killpg
from norn_cli.hub.cpus import anywhere
from norn_cli.hub.fanout import Hub

__all__ = ["CANCELLED", "RESTARTED", "Runner", "attach_runner"]

log = logging.getLogger("norn.pipeline")

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]

CANCELLED = "cancelled: the hub is shutting down"
RESTARTED = "hub restarted"  # why a run the previous hub process left unfinished failed
OUTPUT_INTERVAL = 0.25  # at most one output event per step this often
KILL_GRACE = 3.0  # seconds between SIGTERM and SIGKILL of a step's process group
DRAIN_GRACE = 0.5  # seconds to collect output after the step's shell exited
END_RETRY_FIRST = 0.05  # seconds before the first retry of a run's end; doubling
END_RETRY_MAX = 5.0
END_RETRIES_AT_SHUTDOWN = 3
HEALTH_HEARTBEAT = 10  # publish app.status at least every this many checks
RECOVER_WAIT = 2.0  # seconds startup waits for a cut-off run's end to be taken
KEEP_RUNS = 200  # finished runs remembered for `runinfo`
_REF_RE = re.compile(r"^[A-Za-z0-9._/@:+-]{1,200}$")


@dataclass
class _Run:
    id: str
    app: App
    kind: str
    ref: str
    image_tag: str | None
    started_at: str
    steps: list[dict[str, Any]]
    since: str = ""
    queued_id: str = ""
    status: str = "queued"
    current: str = ""
    finished_at: str | None = None
    error: str | None = None
    failed_step: str | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def key(self) -> tuple[str, str]:
        return self.app.name, self.kind


class _Server(Protocol):
    """What the runner needs of a HubServer (this module does not import the server)."""

    hub: Hub
    on_start: list[Callable[[], Awaitable[None]]]
    on_shutdown: list[Callable[[], Awaitable[None]]]

    @property
    def ops(self) -> dict[str, Handler]: ...


def attach_runner(srv: _Server, config: Config, **options: Any) -> Runner:
    """A runner for `config`'s apps on `srv`: its /api ops, and its start and shutdown hooks.

    Call `runner.start()` once the server is serving to begin health checks.
    """
    runner = Runner(config, srv.hub, **options)
    srv.ops.update(runner.ops)
    srv.on_start.append(runner.recover)
    srv.on_shutdown.append(runner.shutdown)
    return runner


class Runner:
    """The apps' pipelines and health checks, publishing into `hub`.

    Give `ops` to `HubServer(ops=...)`, call `start()` once the hub serves
    (health checks) and register `shutdown` in `srv.on_shutdown`.
    """

    def __init__(
        self,
        config: Config,
        hub: Hub,
        *,
        base_env: Mapping[str, str] | None = None,
        output_interval: float = OUTPUT_INTERVAL,
        kill_grace: float = KILL_GRACE,
    ) -> None:
        self.apps = config.apps
        self.hub = hub
        self.base_env = base_env
        self.output_interval = output_interval
        self.kill_grace = kill_grace
        self._active: dict[tuple[str, str], _Run] = {}
        self._runs: dict[str, _Run] = {}
        self._health: list[asyncio.Task[None]] = []
        self._statuses: dict[str, tuple[Any, ...]] = {}  # an app's last known health, from the history
        self._ending: set[asyncio.Task[None]] = set()  # ends of cut-off runs still being retried
        self._closing = False

    @property
    def ops(self) -> dict[str, Handler]:
        """The `/api` ops this runner answers: one per pipeline kind, `runinfo` and `apps`."""
        ops: dict[str, Handler] = {kind: partial(self.trigger, kind) for kind in KINDS}
        ops["runinfo"] = self.runinfo
        ops["apps"] = self.app_names
        return ops

    def start(self) -> None:
        """Begin polling the apps' health URLs (call once the hub is serving)."""
        for app in self.apps.values():
            if app.health:
                self._health.append(asyncio.create_task(self._health_loop(app)))

    async def recover(self) -> None:
        """Pick up where the previous hub process left off, from a history only this hub writes.

        Each health-checked app's last `app.status` becomes the one the
        checker compares with, and a run whose last event is not its
        `.completed` or `.failed` was cut off when the hub stopped: it ends
        now with `.failed`, reason `hub restarted`. Runs before the hub
        serves (`srv.on_start`); nothing to do on a fresh memory broker.
        """
        broker = self.hub.broker
        if not broker.sole_writer:
            return  # shared (Redis): another hub may be running the runs found, and Redis may be down
        for app in self.apps.values():
            if app.health:
                replay = await broker.replay(since=None, last=1, flt=Filter([app.name], ["app.status"]))
                if replay.events:
                    self._statuses[app.name] = _health_key(replay.events[-1].envelope()["payload"])
        # Runs of one app and kind never overlap: only the latest can be unfinished.
        latest: dict[tuple[str, str], tuple[Event, dict[str, Any], str]] = {}
        for ev in (await broker.replay(since=(0, 0), last=None, flt=_QUEUED)).events:
            env = ev.envelope()
            run_id = env["payload"].get("runId")
            if isinstance(run_id, str) and run_id:  # without one, published by others: not ours to end
                latest[(ev.app, ev.type)] = (ev, env, run_id)
        for queued, env, run_id in latest.values():
            try:
                await self._end_cut_off(queued, env, run_id)
            except Exception:
                log.exception("cannot end run %s of %s", run_id, queued.app)

    async def _end_cut_off(self, queued: Event, env: dict[str, Any], run_id: str) -> None:
        """End the run `queued` began with `.failed` unless its end is in the history."""
        kind = queued.type.split(".")[0]
        types = [f"{kind}.step", f"{kind}.completed", f"{kind}.failed"]
        since = _before(queued.key)
        later = (await self.hub.broker.replay(since=since, last=None, flt=Filter([queued.app], types))).events
        state = RunState(run_id, kind)
        state.apply(env)
        for ev in later:
            e = ev.envelope()
            if e["payload"].get("runId") == run_id:
                state.apply(e)
        if state.done:
            return
        payload = env["payload"]
        app = self.apps.get(queued.app) or App(queued.app, Path("."))
        steps = [_step_record(st) for st in state.steps.values()]
        running = [st.name for st in state.steps.values() if st.phase == RUNNING]
        run = _Run(
            id=run_id, app=app, kind=kind, ref=str(payload.get("ref") or payload.get("commitSha") or app.ref),
            image_tag=payload.get("imageTag"), started_at=str(payload.get("startedAt") or env["ts"]),
            steps=steps, since=format_id(since), queued_id=queued.id, status="running",
        )  # fmt: skip
        log.warning("%s run %s of %s was cut off by a hub restart; it ends as failed", kind, run_id, app.name)
        self._remember(run)
        # Before the hub serves, but not at any price: a broker that does not
        # take the end yet (a full disk) gets it later, retried as any run's end.
        ending = asyncio.ensure_future(self._end_run(run, running[-1] if running else None, RESTARTED))
        done, _ = await asyncio.wait({ending}, timeout=RECOVER_WAIT)
        if not done:
            self._ending.add(ending)
            ending.add_done_callback(self._ending.discard)

    async def shutdown(self) -> None:
        """Stop health checks; cancel running steps, each run ending with `.failed`."""
        self._closing = True
        tasks = [*self._health, *self._ending, *(r.task for r in self._active.values() if r.task)]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for run in list(self._active.values()):  # cancelled before its task began
            await self._end_run(run, run.current, CANCELLED)

    # ------------------------------------------------------------ /api ops

    async def trigger(self, kind: str, req: dict[str, Any]) -> dict[str, Any]:
        """Start a run of `kind` for `req["app"]`; answer with its id and the queued event's id."""
        if self._closing:
            raise OperationFailed("the hub is shutting down", code="unavailable")
        app = self._app(req)
        steps = app.steps(kind)
        if not steps and kind not in ("restart", "rollback"):
            raise OperationFailed(f"{app.name} has no {kind} steps in the hub's config", code="not_found")
        tag = _word(req, "tag", None) if kind == "rollback" else None
        if kind == "rollback" and tag is None:
            raise OperationFailed('rollback needs "tag": the image tag to roll back to', code="bad_request")
        running = self._active.get((app.name, kind))
        if running is not None:
            raise OperationFailed(
                f"{app.name} already has a {kind} running: run {running.id}, started {running.started_at}",
                code="conflict",
            )
        run = _Run(
            id=secrets.token_hex(6), app=app, kind=kind, ref=tag or _word(req, "ref", app.ref) or app.ref,
            image_tag=tag, started_at=now_ts(), steps=[{"name": s.name, "status": "pending"} for s in steps],
        )  # fmt: skip
        self._active[run.key] = run  # before any await: a second request now conflicts
        try:
            run.since = self.hub.broker.last_id
            items = [(f"{kind}.queued", app.name, self._queued_payload(run))]
            if tag is not None:
                items.append(("deploy.rollback", app.name, {"imageTag": tag, "runId": run.id}))
            events = await self._publish(*items)
        except BaseException:
            del self._active[run.key]
            raise
        run.queued_id = events[0].id
        self._remember(run)
        run.task = asyncio.create_task(self._execute(run), name=f"norn run {run.id}")
        return {"runId": run.id, "id": run.queued_id}

    async def app_names(self, req: dict[str, Any]) -> dict[str, Any]:
        """The configured apps' names, sorted (read-only; for shell completion)."""
        return {"apps": sorted(self.apps)}

    async def runinfo(self, req: dict[str, Any]) -> dict[str, Any]:
        """Find a run to attach to: by `runId`, or the latest of `app` and `kind` (default deploy).

        Runs published by others (no runId) are found in the retained history.
        """
        run_id = req.get("runId")
        if run_id is not None:
            if not isinstance(run_id, str) or not run_id:
                raise OperationFailed('"runId" must be a non-empty string', code="bad_request")
            run = self._runs.get(run_id)
            if run is not None:
                return self._info(run)
            ev = await self._latest_queued(_QUEUED, run_id)
            if ev is None:
                raise OperationFailed(f"no run {run_id} is known to the hub", code="not_found")
        else:
            app = req.get("app")
            kind = req.get("kind", "deploy")
            if not isinstance(app, str) or not app:
                raise OperationFailed('runinfo needs "runId", or "app" (and "kind")', code="bad_request")
            if kind not in KINDS:
                raise OperationFailed(f"kind must be one of {', '.join(KINDS)}", code="bad_request")
            ev = await self._latest_queued(Filter([app], [f"{kind}.queued"]), None)
            if ev is None:
                raise OperationFailed(f"no {kind} of {app} is known to the hub", code="not_found")
        payload = ev.envelope()["payload"]
        found = self._runs.get(payload.get("runId", ""))
        if found is not None:
            return self._info(found)
        return {"runId": payload.get("runId"), "app": ev.app, "kind": ev.type.split(".")[0],
                "id": ev.id, "since": format_id(_before(ev.key)), "status": "unknown"}  # fmt: skip

    def _info(self, run: _Run) -> dict[str, Any]:
        return {"runId": run.id, "app": run.app.name, "kind": run.kind, "id": run.queued_id,
                "since": run.since, "status": run.status}  # fmt: skip

    async def _latest_queued(self, flt: Filter, run_id: str | None) -> Event | None:
        replay = await self.hub.broker.replay(since=(0, 0), last=None, flt=flt)  # all retained
        for ev in reversed(replay.events):
            if run_id is None:
                return ev
            payload = ev.envelope()["payload"]
            # Norn's own deploys have no runId: their Deployment id names them.
            if payload.get("runId") == run_id or (ev.type == "deploy.queued" and payload.get("id") == run_id):
                return ev
        return None

    def _app(self, req: dict[str, Any]) -> App:
        name = req.get("app")
        if not isinstance(name, str) or not name:
            raise OperationFailed('the request needs "app": the name of an app', code="bad_request")
        app = self.apps.get(name)
        if app is None:
            known = ", ".join(sorted(self.apps)) or "none; start the hub with --config norn.toml"
            raise OperationFailed(f"no app {name!r} in the hub's config (apps: {known})", code="not_found")
        return app

    def _remember(self, run: _Run) -> None:
        self._runs[run.id] = run
        excess = len(self._runs) - KEEP_RUNS
        if excess > 0:
            done = [rid for rid, r in self._runs.items() if r.finished_at is not None]
            for rid in done[:excess]:
                del self._runs[rid]

    # ------------------------------------------------------------ a run

    async def _execute(self, run: _Run) -> None:
        run.status = "running"
        error: str | None = None
        try:
            for step in run.app.steps(run.kind):
                error = await self._step(run, step)
                if error is not None:
                    break
        except asyncio.CancelledError:
            await self._end_run(run, run.current, CANCELLED)
            raise
        except Exception as exc:  # the broker failed us mid-run
            log.exception("run %s of %s failed", run.id, run.app.name)
            with suppress(Exception):
                await self._end_run(run, run.current, f"the hub failed: {exc}")
            return
        await self._end_run(run, run.current if error else None, error)

    async def _end_run(self, run: _Run, step: str | None, error: str | None) -> None:
        if self._active.get(run.key) is run:
            del self._active[run.key]  # before the event: a client may retry at once
        run.status = "completed" if error is None else "failed"
        run.finished_at = now_ts()
        run.error = error
        run.failed_step = step if error is not None else None
        app = run.app.name
        items: list[tuple[str, str, dict[str, Any]]] = []
        if run.kind == "restart" and error is None:
            items.append(("app.restarted", app, {"appId": app, "runId": run.id}))
        items.append((f"{run.kind}.{run.status}", app, self._final_payload(run)))
        await self._publish_until_taken(run, items)

    async def _publish_until_taken(self, run: _Run, items: list[tuple[str, str, dict[str, Any]]]) -> None:
        """Publish a run's end, retrying with backoff until the broker takes it: every run
        the hub accepted ends with exactly one terminal event. Only a hub shutting down
        gives up, after a few tries, and says so."""
        checked = [validate_event({"type": t, "appId": a, "payload": p}) for t, a, p in items]
        delay, attempt = END_RETRY_FIRST, 0
        while True:
            try:
                await self.hub.publish(checked)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                attempt += 1
                if self._closing and attempt >= END_RETRIES_AT_SHUTDOWN:
                    log.error("run %s of %s: gave up publishing its end after %d tries: %s",
                              run.id, run.app.name, attempt, exc)  # fmt: skip
                    raise
                log.warning("run %s of %s: cannot publish %s yet (try %d: %s); retrying in %.1f s",
                            run.id, run.app.name, items[-1][0], attempt, exc, delay)  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, END_RETRY_MAX)
            else:
                if attempt:
                    log.warning("run %s of %s: published %s after %d failed tries",
                                run.id, run.app.name, items[-1][0], attempt)  # fmt: skip
                return

    def _queued_payload(self, run: _Run) -> dict[str, Any]:
        if run.kind == "deploy":
            return self._deployment(run)
        out = {"app": run.app.name, "runId": run.id, "ref": run.ref, "steps": run.steps,
               "startedAt": run.started_at}  # fmt: skip
        if run.image_tag is not None:
            out["imageTag"] = run.image_tag
        return out

    def _final_payload(self, run: _Run) -> dict[str, Any]:
        if run.kind == "deploy":
            return self._deployment(run)
        out: dict[str, Any] = {"runId": run.id, "steps": run.steps, "finishedAt": run.finished_at}
        if run.error is not None:
            out.update(step=run.failed_step or "", error=run.error)
        return out

    def _deployment(self, run: _Run) -> dict[str, Any]:
        """The seed's Deployment object (plus `runId`, and `step` when it failed)."""
        out = {
            "id": run.id, "runId": run.id, "app": run.app.name, "ref": run.ref, "status": run.status,
            "steps": [dict(s) for s in run.steps], "startedAt": run.started_at,
            "finishedAt": run.finished_at, "error": run.error,
        }  # fmt: skip
        if run.failed_step is not None:
            out["step"] = run.failed_step
        return out

    # ------------------------------------------------------------ a step

    async def _step(self, run: _Run, step: Step) -> str | None:
        """Run one step to its end; return None when it succeeded, else why it failed."""
        loop = asyncio.get_running_loop()
        run.current = step.name
        await self._step_event(run, step.name, "running")
        started = loop.time()
        tail = OutputTail()
        error: str | None = CANCELLED
        try:
            with anywhere():  # not the one CPU the loop thread may be pinned to
                transport, proto = await loop.subprocess_shell(
                    lambda: StepProtocol(tail, loop), step.run, stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=run.app.workdir,
                    env=self._env(run, step), start_new_session=True,
                )  # fmt: skip
        except OSError as exc:
            error = f"cannot start in {run.app.workdir}: {exc.strerror or exc}"
            await self._step_ended(run, step.name, started, [], error)
            return error
        pump = asyncio.create_task(self._pump(run, step.name, tail))
        try:
            error = await self._supervise(transport, proto, step.timeout)
        except BaseException:  # cancelled (hub shutting down) or the hub failed
            await self._kill(transport, proto)
            raise
        finally:
            pump.cancel()
            transport.close()
            await asyncio.gather(pump, return_exceptions=True)
            await self._step_ended(run, step.name, started, tail.take(final=True), error)
        return error

    async def _supervise(
        self, transport: asyncio.SubprocessTransport, proto: StepProtocol, timeout: float | None
    ) -> str | None:
        """Wait for the step's shell to exit, killing its process group on timeout."""
        done, _ = await asyncio.wait({proto.exited}, timeout=timeout)
        if not done:
            await self._kill(transport, proto)
            return f"timed out after {timeout:g}s"
        # Background processes the step left may hold the pipe: collect briefly, then let go.
        await asyncio.wait({proto.eof}, timeout=DRAIN_GRACE)
        return exit_error(transport.get_returncode())

    async def _kill(self, transport: asyncio.SubprocessTransport, proto: StepProtocol) -> None:
        """SIGTERM the step's whole process group, then SIGKILL whatever is left of it."""
        pgid = transport.get_pid()  # the shell leads its own session and group
        killpg(pgid, signal.SIGTERM)
        await asyncio.wait({proto.exited}, timeout=self.kill_grace)
        killpg(pgid, signal.SIGKILL)

    async def _pump(self, run: _Run, step: str, tail: OutputTail) -> None:
        """Publish the step's new output lines, at most once per `output_interval`."""
        while True:
            await tail.ready.wait()
            lines = tail.take()
            if lines:
                await self._step_event(run, step, "running", output="\n".join(lines))
            await asyncio.sleep(self.output_interval)

    async def _step_ended(self, run: _Run, step: str, started: float, lines: list[str], error: str | None) -> None:
        ms = round((asyncio.get_running_loop().time() - started) * 1000)
        status = "completed" if error is None else "failed"
        for s in run.steps:
            if s["name"] == step:
                s.update(status=status, durationMs=ms)
        extra: dict[str, Any] = {"durationMs": ms}
        if error is not None:
            extra["error"] = error
        items = []
        if lines:
            items.append(self._step_item(run, step, "running", {"output": "\n".join(lines)}))
        items.append(self._step_item(run, step, status, extra))
        await self._publish(*items)

    async def _step_event(self, run: _Run, step: str, status: str, **extra: Any) -> None:
        if status == "running" and "output" not in extra:
            for s in run.steps:
                if s["name"] == step:
                    s["status"] = status
        await self._publish(self._step_item(run, step, status, extra))

    def _step_item(self, run: _Run, step: str, status: str, extra: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
        return f"{run.kind}.step", run.app.name, {"step": step, "status": status, "runId": run.id, **extra}

    def _env(self, run: _Run, step: Step) -> dict[str, str]:
        env = dict(os.environ if self.base_env is None else self.base_env)
        env.update(run.app.env)
        env.update(step.env)
        env.update(NORN_APP=run.app.name, NORN_REF=run.ref, NORN_RUN_ID=run.id, NORN_KIND=run.kind, NORN_STEP=step.name)
        if run.image_tag is not None:
            env["NORN_IMAGE_TAG"] = run.image_tag
        return env

    async def _publish(self, *items: tuple[str, str, dict[str, Any]]) -> list[Event]:
        checked = [validate_event({"type": t, "appId": a, "payload": p}) for t, a, p in items]
        return await self.hub.publish(checked)

    # ------------------------------------------------------------ health

    async def _health_loop(self, app: App) -> None:
        """Poll the app's health URL; publish app.status on a change and every few checks."""
        assert app.health is not None
        last = self._statuses.get(app.name)  # from before a restart: no news unless it changed
        n = 0 if last is None else 1
        while True:
            status = await check_health(app.health, timeout=app.health_timeout)
            key = _health_key(status)
            if key != last or n % HEALTH_HEARTBEAT == 0:
                try:
                    await self._publish(("app.status", app.name, status))
                except Exception as exc:  # a broker outage must not end the checks
                    log.warning("cannot publish the health of %s: %s", app.name, exc)
            last = key
            n += 1
            await asyncio.sleep(app.health_interval)


def _word(req: dict[str, Any], name: str, default: str | None) -> str | None:
    """A ref or tag from a request: a short word, safe to expand unquoted in a shell."""
    value = req.get(name)
    if value is None or value == "":
        return default
    if not isinstance(value, str) or not _REF_RE.match(value):
        raise OperationFailed(
            f'"{name}" must be up to 200 letters, digits or . _ / @ : + -, got {value!r}', code="bad_request"
        )
    return value


_QUEUED = Filter(types=[f"{kind}.queued" for kind in KINDS])  # the first event of every run


def _before(key: EventId) -> EventId:
    """The id just below `key`: `since` it, a replay starts with that event."""
    ms, seq = key
    return (ms, seq - 1) if seq > 0 else (ms - 1, 999_999_999_999_999)


def _health_key(status: dict[str, Any]) -> tuple[Any, ...]:
    """What makes an app's health news when it changes."""
    return status.get("healthy"), status.get("statusCode"), status.get("error")


def _step_record(step: StepState) -> dict[str, Any]:
    """A step as a run's payload lists it, rebuilt from its events; one still
    running when the hub stopped failed."""
    out: dict[str, Any] = {"name": step.name, "status": "failed" if step.phase in (RUNNING, FAILED) else step.status}
    if step.duration_ms is not None:
        out["durationMs"] = round(step.duration_ms)
    return out
