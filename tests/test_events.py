"""The envelope, ids, catalogue validation and filters, without I/O."""

from __future__ import annotations

import json

import pytest

from norn_cli.core.errors import EventError
from norn_cli.core.events import Filter, format_id, make_event, now_ts, parse_id, validate_event

DEPLOYMENT = {
    "id": "d1", "app": "mail-agent", "ref": "abc123", "status": "queued",
    "steps": [], "startedAt": "2026-11-27T13:27:16.123Z",
}  # fmt: skip


def test_envelope_is_the_seeds_plus_id_and_ts() -> None:
    """The encoded envelope keeps the seed's keys and adds id and ts."""
    ev = make_event((1764250036123, 0), "deploy.step", "mail-agent", {"step": "build", "status": "building"}, 1764250036123)
    assert json.loads(ev.data) == {
        "type": "deploy.step",
        "appId": "mail-agent",
        "payload": {"step": "build", "status": "building"},
        "id": "1764250036123-0",
        "ts": "2025-11-27T13:27:16.123Z",
    }


def test_ids_round_trip_and_order() -> None:
    """Ids parse to pairs that order numerically, not as strings."""
    assert parse_id("1764250036123-0") == (1764250036123, 0)
    assert format_id((5, 12)) == "5-12"
    assert parse_id("9-10") > parse_id("9-9")
    for bad in ["", "abc", "1-", "-1", "1-2-3", "1.5-0"]:
        with pytest.raises(ValueError):
            parse_id(bad)


def test_timestamps_have_milliseconds() -> None:
    """ts is RFC 3339 UTC with exactly three fractional digits."""
    assert now_ts(1764250036007) == "2025-11-27T13:27:16.007Z"
    assert now_ts(1764250037000) == "2025-11-27T13:27:17.000Z"


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ([], "an event must be a JSON object, got an array"),
        ({"appId": "a"}, "event needs field 'type'"),
        ({"type": 3, "appId": "a"}, "event 'type' must be a string, got a number"),
        ({"type": "Deploy.Step", "appId": "a"}, "event type 'Deploy.Step' is not a dotted lower-case name like 'deploy.step'"),
        ({"type": "deploy", "appId": "a"}, "event type 'deploy' is not a dotted lower-case name like 'deploy.step'"),
        ({"type": "hub.gap", "appId": "a"}, "event type 'hub.gap' is reserved for the hub"),
        ({"type": "x.y"}, "event needs field 'appId'"),
        ({"type": "x.y", "appId": "has space"}, "event appId 'has space' is not a short slug (letters, digits, '.', '_', '-'; at most 64)"),
        ({"type": "x.y", "appId": "a", "payload": []}, "event 'payload' must be a JSON object, got an array"),
        ({"type": "x.y", "appId": "a", "payload": None}, "event 'payload' must be a JSON object, got null"),
        ({"type": "x.y", "appId": "a", "appid": "b"}, "unknown event field 'appid' (allowed: type, appId, payload, key)"),
        ({"type": "deploy.step", "appId": "a", "payload": {"step": "build"}}, "deploy.step payload needs field 'status'"),
        ({"type": "deploy.step", "appId": "a", "payload": {"step": "b", "status": 1}}, "deploy.step payload field 'status' must be a string, got a number"),
        ({"type": "forge.step", "appId": "a", "payload": {"step": "b", "status": "x", "durationMs": True}}, "forge.step payload field 'durationMs' must be a number or a string, got a boolean"),
        ({"type": "deploy.rollback", "appId": "a", "payload": {}}, "deploy.rollback payload needs field 'imageTag'"),
        ({"type": "forge.failed", "appId": "a", "payload": {"step": "x"}}, "forge.failed payload needs field 'error'"),
        ({"type": "deploy.queued", "appId": "a", "payload": {**DEPLOYMENT, "ref": 1}}, "deploy.queued payload needs field 'ref' or 'commitSha' (a string)"),
        ({"type": "deploy.failed", "appId": "a", "payload": DEPLOYMENT}, "deploy.failed payload needs field 'error'"),
        ({"type": "app.restarted", "appId": "a", "payload": {}}, "app.restarted payload needs field 'appId'"),
    ],
)
def test_bad_events_say_exactly_what_is_wrong(event: object, message: str) -> None:
    """Every invalid event is refused with one precise sentence."""
    with pytest.raises(EventError) as info:
        validate_event(event)
    assert info.value.message == message


def test_valid_events_pass_and_extra_fields_are_welcome() -> None:
    """Known types accept extra payload fields; unknown types need only an object; id/ts are ignored."""
    assert validate_event({"type": "deploy.queued", "appId": "mail-agent", "payload": {**DEPLOYMENT, "runId": "r1"}})[0] == "deploy.queued"
    assert validate_event({"type": "deploy.step", "appId": "a", "payload": {"step": "b", "status": "deployed", "durationMs": "1.2s"}})[2]["durationMs"] == "1.2s"
    assert validate_event({"type": "backup.completed", "appId": "a"}) == ("backup.completed", "a", {})
    assert validate_event({"type": "forge.completed", "appId": "a", "payload": {}, "id": "1-0", "ts": "x"}) == ("forge.completed", "a", {})


def test_filter_matches_apps_and_type_globs() -> None:
    """Apps are any-of, types are any-of with * wildcards, both must match."""
    f = Filter(["mail-agent", "blog"], ["deploy.*", "app.status"])
    assert f.match("deploy.step", "mail-agent")
    assert f.match("app.status", "blog")
    assert not f.match("forge.step", "mail-agent")
    assert not f.match("deploy.step", "other")
    assert not f.match("deployment.x", "blog")
    assert Filter().match("anything.at-all", "x")
    assert Filter(types=["*.failed"]).match("forge.failed", "x")
