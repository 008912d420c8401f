"""client/emit.py: payloads from flags, NDJSON input and local validation, without a hub."""

from __future__ import annotations

import pytest

from norn_cli.client.emit import MAX_EVENT_BYTES, build_event, build_payload, read_ndjson
from norn_cli.core.errors import EventError, ExitCode


def test_pairs_parse_json_values_and_fall_back_to_strings() -> None:
    """A value that parses as JSON is JSON; anything else is the text itself."""
    payload = build_payload(None, ["n=3", "ok=true", "none=null", "tags=[1,2]", "step=build", 'ref="123"', "empty="])
    assert payload == {"n": 3, "ok": True, "none": None, "tags": [1, 2], "step": "build", "ref": "123", "empty": ""}


def test_dotted_keys_nest_and_merge_into_data() -> None:
    """Dotted keys build nested objects on top of --data."""
    payload = build_payload('{"a": {"x": 1}, "b": 2}', ["a.y=2", "c.d.e=deep", "b=3"])
    assert payload == {"a": {"x": 1, "y": 2}, "b": 3, "c": {"d": {"e": "deep"}}}


@pytest.mark.parametrize(
    ("data", "pairs", "message"),
    [
        (None, ["noequals"], "-p 'noequals': expected KEY=VALUE"),
        (None, ["a..b=1"], "-p 'a..b=1': 'a..b' is not a key (dotted keys nest, like a.b=1)"),
        (None, ["a=1", "a.b=2"], "-p 'a.b=2': 'a' is already set to a value that is not an object"),
        ("[1]", [], "--data must be a JSON object, like '{\"step\": \"build\"}'"),
    ],
)
def test_bad_flags_are_usage_errors(data: str | None, pairs: list[str], message: str) -> None:
    """Each bad flag gets one sentence and exit code 2."""
    with pytest.raises(EventError) as err:
        build_payload(data, pairs)
    assert err.value.message == message
    assert err.value.exit_code is ExitCode.USAGE


def test_build_event_uses_the_hubs_rules() -> None:
    """A catalogue type with a wrong payload is refused locally."""
    assert build_event("deploy.step", "mail-agent", {"step": "build", "status": "building"}) == {
        "type": "deploy.step", "appId": "mail-agent", "payload": {"step": "build", "status": "building"},
    }  # fmt: skip
    with pytest.raises(EventError, match="deploy.step payload needs field 'status'"):
        build_event("deploy.step", "mail-agent", {"step": "build"})
    with pytest.raises(EventError, match="reserved for the hub"):
        build_event("hub.gap", "x", {})


def test_oversized_event_is_refused_before_sending() -> None:
    """An event the hub could never take is refused locally."""
    with pytest.raises(EventError, match=f"at most {MAX_EVENT_BYTES}"):
        build_event("big.one", "x", {"blob": "x" * MAX_EVENT_BYTES})


def test_ndjson_skips_blank_lines_drops_id_and_ts_and_fills_defaults() -> None:
    """`norn tail --json` output can be fed back; TYPE and --app fill gaps."""
    lines = [
        b'{"type":"a.b","appId":"x","payload":{"n":1},"id":"1-0","ts":"2026-01-01T00:00:00.000Z"}\n',
        b"\n",
        b'{"payload":{"n":2}}\n',
        '{"type":"c.d","appId":"y"}',
    ]
    events = read_ndjson(lines, source="in.ndjson", default_type="dflt.type", default_app="dflt")
    assert events == [
        {"type": "a.b", "appId": "x", "payload": {"n": 1}},
        {"type": "dflt.type", "appId": "dflt", "payload": {"n": 2}},
        {"type": "c.d", "appId": "y", "payload": {}},
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"not json", "in.ndjson line 3: not valid JSON"),
        (b'{"type":"a.b"}', "in.ndjson line 3: event needs field 'appId'; nothing was sent"),
        (b'{"type":"deploy.step","appId":"x","payload":{"step":"s"}}', "in.ndjson line 3: deploy.step payload needs field 'status'"),
        (b"[1]", "in.ndjson line 3: an event must be a JSON object, got an array; nothing was sent"),
        (b'{"type":"a.b","appId":"x","extra":1}', "in.ndjson line 3: unknown event field 'extra'"),
    ],
)
def test_ndjson_errors_name_the_line(line: bytes, message: str) -> None:
    """A bad line is reported by number (blank lines count) and nothing is sent."""
    good = b'{"type":"a.b","appId":"x"}'
    with pytest.raises(EventError) as err:
        read_ndjson([good, b"", line, good], source="in.ndjson")
    assert err.value.message.startswith(message)
    assert err.value.exit_code is ExitCode.USAGE


async def test_losing_the_hub_mid_file_says_how_many_got_through() -> None:
    """A hub that closes mid-publish (here: its frame limit) is exit 3 with a count."""
    from norn_cli.client.endpoint import Endpoint
    from norn_cli.client.emit import emit_events
    from norn_cli.core.errors import HubUnreachable
    from norn_cli.hub.server import HubServer

    events = [{"type": "a.b", "appId": "x", "payload": {"n": i, "pad": "x" * 50}} for i in range(200)]
    async with HubServer(host="127.0.0.1", port=0, max_size=4000) as srv:
        with pytest.raises(HubUnreachable) as err:
            await emit_events(Endpoint.parse(srv.url), events, on_ack=lambda _id, _dup: None)
        assert srv.hub.published == 0
    assert err.value.message.endswith("(0 of 200 events were published)")
    assert "1009" in err.value.message
