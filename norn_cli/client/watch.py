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
from norn_cli.core.errors import HubUnreachable
from norn_cli.core.events import parse_id
from norn_cli.core.run_state import RunState

__all__ = ["RunView", "Target", "find_run", "follow", "run_events", "show_run", "start_run", "watch"]

EVERYTHING = 1_000_000_000  # `last=` this replays all the hub retains
REFRESH = 0.125  # seconds between redraws of a live view (spinners, clocks)
GIVE_UP_AFTER = 30.0  # seconds without the hub before a watched run is reported lost (exit 3)


class RunView(Protocol):
    """Where a run is shown (the renderers in norn_cli.render.pipeline_view)."""

    live: bool
    state: RunState

    def start(self) -> None: ...
    def apply(self, env: dict[str, Any]) -> None: ...
    def refresh(self) -> None: ...
    def notice(self, text: str) -> None: ...
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
    endpoint: Endpoint, target: Target, *, cafile: str | None = None, on_notice: Callable[[str], None] | None = None
) -> AsyncIterator[dict[str, Any]]:
    """The run's envelopes (and any `hub.gap`), replayed then live, ending with its last event."""
    where: dict[str, Any] = {"since": target.since} if target.since else {"last": EVERYTHING}
    frames = client.subscribe(
        endpoint, apps=[target.app], cafile=cafile, on_notice=on_notice, give_up_after=GIVE_UP_AFTER, **where
    )
    async with aclosing(frames):
        async for frame in frames:
            env = frame.envelope
            if env.get("type") == "hub.gap" or target.belongs(env):
                yield env
                if target.ends(env):
                    return
    raise HubUnreachable(f"the hub ended the stream before {target.kind} run {target.run_id or ''} finished")


async def show_run(events: AsyncIterator[dict[str, Any]], view: RunView, *, detach_hint: str | None) -> RunState:
    """Feed the events to the view until the run ends; on Ctrl-C say how to re-attach."""
    view.start()
    every: float | None = getattr(view, "refresh_every", REFRESH if view.live else None)
    ticker = asyncio.create_task(_tick(view, every)) if every else None
    try:
        async for env in events:
            view.apply(env)
    except asyncio.CancelledError:
        view.stop()
        view.detached(detach_hint)
        raise
    finally:
        if ticker is not None:
            ticker.cancel()
            with suppress(asyncio.CancelledError):
                await ticker
        view.stop()
    return view.state


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
) -> RunState:
    """`norn deploy` and friends: start the run (or find the latest one) and show it to the end.

    `reattach=False` when the hub ends with this call (the demo): Ctrl-C then gives no hint.
    """
    if attach:
        target = await find_run(endpoint, app=request["app"], kind=request["op"], token=token, cafile=cafile)
    else:
        target = await start_run(endpoint, request, token=token, cafile=cafile)
    return await _show(endpoint, target, view, cafile, reattach)


async def watch(
    endpoint: Endpoint, run_id: str, view: RunView, *, token: str | None = None, cafile: str | None = None
) -> RunState:
    """`norn watch RUN_ID`: replay a run in progress or finished, and show it to the end."""
    target = await find_run(endpoint, run_id=run_id, token=token, cafile=cafile)
    return await _show(endpoint, target, view, cafile, True)


async def _show(endpoint: Endpoint, target: Target, view: RunView, cafile: str | None, reattach: bool) -> RunState:
    hint = f"detached; the {target.kind} goes on at the hub. Re-attach with: {target.reattach}" if reattach else None
    view.state.run_id, view.state.kind = target.run_id, target.kind
    events = run_events(endpoint, target, cafile=cafile, on_notice=view.notice)
    return await show_run(events, view, detach_hint=hint)
