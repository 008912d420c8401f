"""Following the stream for `norn tail`: stop conditions, the deadline, hub notices and connection changes."""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from norn_cli.client.endpoint import Endpoint
from norn_cli.client.connect import ConnectionState, Frame, Notice, subscribe
from norn_cli.core.errors import OperationFailed, TimedOut

__all__ = ["Stop", "failure_type", "tail"]

HUB_PREFIX = "hub."
COMPLETED, FAILED = ".completed", ".failed"


def failure_type(until: str) -> str | None:
    """`deploy.completed` -> `deploy.failed`: the type that ends a wait for `until` in failure."""
    if until.endswith(COMPLETED):
        return until[: -len(COMPLETED)] + FAILED
    return None


@dataclass(frozen=True)
class Stop:
    """When a tail is done: after `count` events, at the first `until` (a glob), by `timeout` seconds."""

    count: int | None = None
    until: str | None = None
    timeout: float | None = None

    @property
    def open_ended(self) -> bool:
        return self.count is None and self.until is None

    def describe_miss(self, seen: int) -> str:
        """Why the deadline passed unsatisfied, in one sentence."""
        within = f"within {self.timeout:g}s"
        if self.until is not None:
            return f"no {self.until} event arrived {within}"
        if self.count is not None:
            return f"{seen} of {self.count} events arrived {within}"
        return f"no event arrived {within}"


def _subscribed_types(types: Sequence[str], stop: Stop) -> list[str]:
    """With a type filter, also ask for the `--until` types, or they would never arrive."""
    out = list(types)
    if out and stop.until is not None:
        for wanted in (stop.until, failure_type(stop.until)):
            if wanted is not None and wanted not in out:
                out.append(wanted)
    return out


async def tail(
    endpoint: Endpoint,
    on_frame: Callable[[Frame], None],
    *,
    apps: Sequence[str] = (),
    types: Sequence[str] = (),
    since: str | None = None,
    last: int | None = None,
    stop: Stop = Stop(),
    reconnect: bool = True,
    cafile: str | None = None,
    hub_frames: bool = False,
    on_gap: Callable[[str, str], None] | None = None,
    on_state: Callable[[ConnectionState], None] | None = None,
    on_connect: Notice | None = None,
) -> int:
    """Hand each event to `on_frame` until `stop` says done; return how many were handed over.

    `hub.*` frames are the hub's own notices: `on_gap(since, oldest)` hears of
    a possible gap, and `on_frame` sees them only with `hub_frames`. They do
    not count as events. `on_state` hears the connection's changes (lost,
    each failed attempt, back), as `client.subscribe` tells them. Raises OperationFailed when the `.failed` twin of a
    `.completed` `until` type comes first, TimedOut when the deadline passes
    unsatisfied (an open-ended tail is satisfied by any event), and
    HubUnreachable as `client.subscribe` does.
    """
    seen = 0
    fail_type = failure_type(stop.until) if stop.until is not None else None

    async def follow() -> None:
        nonlocal seen
        frames = subscribe(
            endpoint, apps=apps, types=_subscribed_types(types, stop), since=since, last=last,
            reconnect=reconnect, cafile=cafile, on_state=on_state, on_connect=on_connect,
        )  # fmt: skip
        async with contextlib.aclosing(frames):
            async for frame in frames:
                env = frame.envelope
                etype = env.get("type")
                etype = etype if isinstance(etype, str) else ""
                if etype.startswith(HUB_PREFIX):
                    if etype == "hub.gap" and on_gap is not None:
                        payload = env.get("payload")
                        info = payload if isinstance(payload, dict) else {}
                        on_gap(str(info.get("since", "")), str(info.get("oldest", "")))
                    if hub_frames:
                        on_frame(frame)
                    continue
                on_frame(frame)
                seen += 1
                if fail_type is not None and fnmatch.fnmatchcase(etype, fail_type):
                    raise OperationFailed(
                        f"{env.get('appId', '')}: {etype} arrived before {stop.until}", code="failed"
                    )
                if stop.until is not None and fnmatch.fnmatchcase(etype, stop.until):
                    return
                if stop.count is not None and seen >= stop.count:
                    return

    if stop.timeout is None:
        await follow()
        return seen
    try:
        async with asyncio.timeout(stop.timeout):
            await follow()
    except TimeoutError:
        if stop.open_ended and seen > 0:
            return seen
        raise TimedOut(stop.describe_miss(seen)) from None
    return seen

