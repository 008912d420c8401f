"""The `/api` requests, sans I/O: parse, validate, fold consecutive publishes into one broker call, reply.

`Api.handle_run` takes raw request frames and returns reply objects; the
connection only moves bytes. Tests drive it without a socket.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from norn_cli.core.errors import EventError, OperationFailed
from norn_cli.core.events import Event, event_key, loads, validate_event
from norn_cli.hub.brokers.base import Duplicate, Item, Unavailable
from norn_cli.hub.fanout import Hub

__all__ = ["MERGE_EVENTS", "Api", "OpHandler", "error_reply"]

log = logging.getLogger("norn.server")

OpHandler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
"""An extra `/api` op: takes the request, returns the reply's fields or raises
OperationFailed(message, code=...)."""

MERGE_EVENTS = 32  # pipelined publishes folded into one broker call, in events (half the default queue)


def error_reply(code: str, message: str) -> dict[str, Any]:
    """The reply refusing a request: `{"ok": false, "error": {"code", "message"}}`."""
    return {"ok": False, "error": {"code": code, "message": message}}


Keys = list[str | None] | None
"""Each event's idempotency key; None when no event of the request has one."""


def _checked(obj: Any) -> tuple[Item, str | None]:
    item = validate_event(obj)
    return item, event_key(obj) if "key" in obj else None


def publish_plan(req: dict[str, Any]) -> tuple[list[Item], bool, Keys] | dict[str, Any]:
    """A publish request's validated events, whether it was one `event`, and their keys; or its error reply."""
    items: list[Item] = []
    keys: list[str | None] = []
    if "event" in req:
        try:
            item, key = _checked(req["event"])
        except EventError as exc:
            return error_reply("bad_request", exc.message)
        return [item], True, (None if key is None else [key])
    batch = req.get("events")
    if isinstance(batch, list) and batch:
        for i, obj in enumerate(batch):
            try:
                item, key = _checked(obj)
            except EventError as exc:
                return error_reply("bad_request", f"events[{i}]: {exc.message}; nothing was published")
            items.append(item)
            keys.append(key)
        return items, False, (keys if any(k is not None for k in keys) else None)
    if "events" in req:
        return error_reply("bad_request", "\"events\" must be a non-empty array of events")
    return error_reply("bad_request", "publish needs \"event\" (one) or \"events\" (a batch)")


def _reply(results: Sequence[Event | Duplicate], single: bool) -> dict[str, Any]:
    """The reply to one publish request: ids, and which of them are duplicates (only if any)."""
    if single:
        first = results[0]
        return {"ok": True, "id": first.id, "duplicate": True} if isinstance(first, Duplicate) else {"ok": True, "id": first.id}
    reply: dict[str, Any] = {"ok": True, "ids": [r.id for r in results]}
    dups = [i for i, r in enumerate(results) if isinstance(r, Duplicate)]
    if dups:
        reply["duplicates"] = dups
    return reply


class Api:
    """Answers `/api` requests: `publish` and `status` here, other ops from `ops` (the pipeline runner's)."""

    def __init__(
        self, hub: Hub, status: Callable[[], dict[str, Any]], *, ops: dict[str, OpHandler] | None = None,
        merge_events: int = MERGE_EVENTS,
    ) -> None:  # fmt: skip
        self.hub = hub
        self.status = status
        self.ops: dict[str, OpHandler] = dict(ops or {})
        self.merge_events = merge_events
        self.op_counts: dict[str, int] = {}

    def count_op(self, op: str) -> None:
        self.op_counts[op] = self.op_counts.get(op, 0) + 1

    async def handle_run(self, requests: deque[bytes | Exception]) -> list[dict[str, Any]]:
        """Answer requests from the front of `requests`, in order; never raises.

        Consecutive publishes are ordered by one broker call of at most about
        `merge_events` events (one round trip to Redis instead of one per
        request); each keeps its own reply, and a bad one is refused alone.
        The limit is half a subscriber's queue, so a subscriber that fell
        behind just before cannot overflow from one such call. An exception
        in `requests` is a frame the connection could not take as a request.
        """
        limit = self.merge_events
        replies: list[dict[str, Any]] = []
        held: list[tuple[int, list[Item], bool, Keys]] = []  # (reply index, events, one `event`?, keys)
        count = 0
        while requests and count < limit:
            req, refusal = self._parse(requests.popleft())
            if refusal is not None:
                replies.append(refusal)
                continue
            if req["op"] != "publish":
                await self._publish_held(held, replies)
                replies.append(await self._run_op(req))
                continue
            self.count_op("publish")
            plan = publish_plan(req)
            if isinstance(plan, dict):
                replies.append(plan)
                continue
            items, single, keys = plan
            held.append((len(replies), items, single, keys))
            replies.append({})
            count += len(items)
        await self._publish_held(held, replies)
        return replies

    def _parse(self, raw: bytes | Exception) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """(the request, None), or ({}, the reply refusing it)."""
        refusal = None
        if isinstance(raw, Exception):
            refusal = str(raw)
        else:
            try:
                req = loads(raw)
            except ValueError as exc:
                refusal = f"request is not valid JSON: {exc}"
            else:
                if not isinstance(req, dict):
                    refusal = 'request must be a JSON object like {"op": "publish", ...}'
                elif not isinstance(req.get("op"), str) or not req["op"]:
                    refusal = 'request needs an "op" (publish, status, ...)'
                else:
                    return req, None
        self.count_op("invalid")
        return {}, error_reply("bad_request", refusal)

    async def _publish_held(self, held: list[tuple[int, list[Item], bool, Keys]], replies: list[dict[str, Any]]) -> None:
        """Order the held publishes in one broker call and fill in their replies."""
        if not held:
            return
        items = [item for _, its, _, _ in held for item in its]
        try:
            if all(keys is None for _, _, _, keys in held):
                results: list[Event | Duplicate] | list[Event] = await self.hub.publish(items)
            else:
                all_keys = [k for _, its, _, keys in held for k in (keys or [None] * len(its))]
                results = await self.hub.publish_keyed(items, all_keys)
        except Unavailable as exc:
            for index, _, _, _ in held:
                replies[index] = error_reply("unavailable", str(exc))
        except Exception:
            log.exception("publish failed")
            for index, _, _, _ in held:
                replies[index] = error_reply("internal", "the hub failed to publish; see its log")
        else:
            pos = 0
            for index, its, single, keys in held:
                part = results[pos : pos + len(its)]
                pos += len(its)
                if keys is None:  # the hot path: no key, no duplicate
                    replies[index] = {"ok": True, "id": part[0].id} if single else {"ok": True, "ids": [ev.id for ev in part]}
                else:
                    replies[index] = _reply(part, single)
        held.clear()

    async def _run_op(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req["op"]
        try:
            if op == "status":
                self.count_op(op)
                return self.status()
            handler = self.ops.get(op)
            if handler is None:
                self.count_op("unknown")
                known = ", ".join(sorted({"publish", "status", *self.ops}))
                return error_reply("not_found", f"unknown op {op!r} (known: {known})")
            self.count_op(op)
            reply = await handler(req)
            return {"ok": True, **reply}
        except OperationFailed as exc:
            return error_reply(exc.code, exc.message)
        except Unavailable as exc:
            return error_reply("unavailable", str(exc))
        except Exception:
            log.exception("op %s failed", op)
            return error_reply("internal", f"the hub failed to handle {op!r}; see its log")
