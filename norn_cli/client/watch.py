"""Start a pipeline run on the hub, or find one, and follow its events into a view.

No event of a run is missed: a run started here is followed from the hub's
last id before it was requested (`since`), a run attached to from its
record on the hub; the hub replays what came before, then goes live.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing, suppress
from dataclasses import dataclass
from typing import Any, Protocol

import norn_cli.client.connect as client
from norn_cli.client.endpoint import Endpoint
from norn_cli.core.errors import HubUnreachable, TimedOut
from norn_cli.core.events import parse_id
from norn_cli.core.run_state import RunState

__all__ = ["RunView", "Target", "find_run", "follow", "run_events", "show_run", "start_run", "waiting_for", "watch"]

EVERYTHING = 1_000_000_000  # `last=` this replays all the hub retains
REFRESH = 0.125  # seconds between redraws of a live view (spinners, clocks)
GIVE_UP_AFTER = 30.0  # seconds without the hub before a watched run is reported lost (exit 3)
QUIET_AFTER = 60.0  # seconds without an event of the run before the view says what it waits for


class RunView(Protocol):
    """Where a run is shown (the renderers in norn_cli.render.pipeline_view)."""

    live: bool
    state: RunState

    def start(self) -> None: ...
    def apply(self, env: dict[str, Any]) -> None: ...
    def refresh(self) -> None: ...
    def notice(self, text: str) -> None: ...
    def connection(self, state: client.ConnectionState) -> None: ...
    def stop(self) -> None: ...
    def detached(self, hint: str | None) -> None: ...


@dataclass(frozen=True)
class Target:
    """A run to follow: its app and kind, its id (None for a run published by others),
    the id of its `.queued` event, and the id to replay from ("" for all retained)."""

    app: str
    kind: str
    run_id: str | None
    queued_id: str
    since: str = ""

    def belongs(self, env: dict[str, Any]) -> bool:
        """Whether an event of the app is part of this run."""
        payload = env.get("payload")
        if not isinstance(payload, dict):
            return False
        if self.run_id is not None:
            return payload.get("runId") == self.run_id
        etype, eid = env.get("type"), env.get("id")
        if not isinstance(etype, str) or not etype.startswith(self.kind + "."):
            return False
        try:
            return isinstance(eid, str) and parse_id(eid) >= parse_id(self.queued_id)
        except ValueError:
            return False

    def ends(self, env: dict[str, Any]) -> bool:
        return env.get("type") in (f"{self.kind}.completed", f"{self.kind}.failed")

    @property
    def reattach(self) -> str:
        """How to watch this run again."""
        return f"norn watch {self.run_id}" if self.run_id else f"norn {self.kind} {self.app} --attach"


async def start_run(endpoint: Endpoint, request: dict[str, Any], *, token: str | None = None, cafile: str | None = None) -> Target:
    """Send a pipeline op (`{"op": "deploy", "app": ..., ...}`); where its events will be."""
    async with client.ApiClient(endpoint, token=token, cafile=cafile) as api:
        before = await api.request({"op": "status"})
        reply = await api.request(request)
    return Target(
        app=request["app"], kind=request["op"], run_id=reply.get("runId"), queued_id=str(reply["id"]),
        since=str(before.get("lastId") or ""),
    )  # fmt: skip


async def find_run(
    endpoint: Endpoint,
    *,
    run_id: str | None = None,
    app: str | None = None,
    kind: str = "deploy",
    token: str | None = None,
    cafile: str | None = None,
) -> Target:
    """Ask the hub where a run is: by id, or the latest `kind` run of `app`."""
    request: dict[str, Any] = {"op": "runinfo"}
    request.update({"runId": run_id} if run_id else {"app": app, "kind": kind})
    async with client.ApiClient(endpoint, token=token, cafile=cafile) as api:
        reply = await api.request(request)
    return Target(
        app=reply["app"], kind=reply["kind"], run_id=reply.get("runId"), queued_id=str(reply["id"]),
        since=str(reply.get("since") or ""),
    )  # fmt: skip


async def run_events(
    endpoint: Endpoint,
    target: Target,
    *,
    cafile: str | None = None,
    on_state: Callable[[client.ConnectionState], None] | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """The run's envelopes (and any `hub.gap`), replayed then live, ending with its last event;
    `on_state` hears the subscription's connection changes."""
    where: dict[str, Any] = {"since": target.since} if target.since else {"last": EVERYTHING}
    frames = client.subscribe(
        endpoint, apps=[target.app], cafile=cafile, on_state=on_state, give_up_after=GIVE_UP_AFTER, **where
    )
    async with aclosing(frames):
        async for frame in frames:
            env = frame.envelope
            if env.get("type") == "hub.gap" or target.belongs(env):
                yield env
                if target.ends(env):
                    return
    raise HubUnreachable(f"the hub ended the stream before {target.kind} run {target.run_id or ''} finished")


async def show_run(
    events: AsyncIterator[dict[str, Any]],
    view: RunView,
    *,
    detach_hint: str | None,
    timeout: float | None = None,
    quiet_after: float = QUIET_AFTER,
) -> RunState:
    """Feed the events to the view until the run ends; on Ctrl-C say how to re-attach.

    `timeout` (seconds) bounds the whole wait: TimedOut (exit 5) naming how to
    re-attach. A run quiet for `quiet_after` seconds gets a notice saying what
    the view is waiting for, and again each time that passes.
    """
    view.start()
    loop = asyncio.get_running_loop()
    last = [loop.time()]
    every: float | None = getattr(view, "refresh_every", REFRESH if view.live else None)
    ticker = asyncio.create_task(_tick(view, every)) if every else None
    quiet = asyncio.create_task(_quiet(view, last, quiet_after, detach_hint))
    deadline = None if timeout is None else loop.time() + timeout
    try:
        async with asyncio.timeout_at(deadline) as limit:
            try:
                async for env in events:
                    last[0] = loop.time()
                    view.apply(env)
            except asyncio.CancelledError:
                view.stop()
                if not limit.expired():
                    view.detached(detach_hint)
                raise
    except TimeoutError:
        raise TimedOut(f"no end of the {view.state.kind or 'run'} within {timeout:g} s; "
                       f"it goes on at the hub{_reattach_tail(detach_hint)}") from None  # fmt: skip
    finally:
        for task in (ticker, quiet):
            if task is not None:
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
        view.stop()
    return view.state


def _reattach_tail(hint: str | None) -> str:
    """`; re-attach with: norn watch ID` from a detach hint, or nothing."""
    if not hint or "Re-attach with: " not in hint:
        return ""
    return "; re-attach with: " + hint.split("Re-attach with: ", 1)[1]


def waiting_for(state: RunState) -> str:
    """What a quiet run view is waiting for, in a few words."""
    running = state.running()
    if running:
        return f"step {running[0].name} of the {state.kind or 'run'} to finish (no output from it lately)"
    if state.started is None:
        return f"the {state.kind or 'run'} to start"
    return f"the next step of the {state.kind or 'run'}, or its end"


async def _quiet(view: RunView, last: list[float], quiet_after: float, hint: str | None) -> None:
    """Say what the view is waiting for when nothing has arrived for `quiet_after` seconds."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(max(0.0, last[0] + quiet_after - loop.time()))
        idle = loop.time() - last[0]
        if idle >= quiet_after:
            view.notice(f"nothing for {round(idle, 1):g} s; still waiting for {waiting_for(view.state)}")
            last[0] = loop.time()


async def _tick(view: RunView, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        view.refresh()


async def follow(
    endpoint: Endpoint,
    request: dict[str, Any],
    view: RunView,
    *,
    attach: bool = False,
    token: str | None = None,
    cafile: str | None = None,
    reattach: bool = True,
    timeout: float | None = None,
) -> RunState:
    """`norn deploy` and friends: start the run (or find the latest one) and show it to the end.

    `reattach=False` when the hub ends with this call (the demo): Ctrl-C then gives no hint.
    """
    if attach:
        target = await find_run(endpoint, app=request["app"], kind=request["op"], token=token, cafile=cafile)
    else:
        target = await start_run(endpoint, request, token=token, cafile=cafile)
    return await _show(endpoint, target, view, cafile, reattach, timeout)


async def watch(
    endpoint: Endpoint,
    run_id: str,
    view: RunView,
    *,
    token: str | None = None,
    cafile: str | None = None,
    timeout: float | None = None,
) -> RunState:
    """`norn watch RUN_ID`: replay a run in progress or finished, and show it to the end."""
    target = await find_run(endpoint, run_id=run_id, token=token, cafile=cafile)
    return await _show(endpoint, target, view, cafile, True, timeout)


async def _show(
    endpoint: Endpoint, target: Target, view: RunView, cafile: str | None, reattach: bool, timeout: float | None
) -> RunState:
    hint = f"detached; the {target.kind} goes on at the hub. Re-attach with: {target.reattach}" if reattach else None
    view.state.run_id, view.state.kind = target.run_id, target.kind
    events = run_events(endpoint, target, cafile=cafile, on_state=view.connection)
    return await show_run(events, view, detach_hint=hint, timeout=timeout)
