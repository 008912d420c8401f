"""Bad input at scale (hypothesis): generated /api requests, raw frames and /ws query strings each get their
documented answer, and a subscriber meanwhile receives exactly the valid events. Bounded for CI: 150 examples each, about 10 s (NORN_FUZZ_EXAMPLES for more)."""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import ClientConnection, connect

from conftest import TIMEOUT, ThreadHub

EXAMPLES = int(os.environ.get("NORN_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=False)
CODES = {"bad_request", "unauthorized", "not_found", "conflict", "unavailable", "internal"}
MAX = 64 * 1024


# ---------------------------------------------------------------- a shared hub and subscriber


class Session:
    def __init__(self) -> None:
        self.hub = ThreadHub(history=100_000).start()
        self.port = int(self.hub.url.rsplit(":", 1)[1])
        self.sub: ClientConnection = connect(f"{self.hub.url}/ws?app=fz", open_timeout=TIMEOUT).__enter__()
        self.api: ClientConnection = connect(f"{self.hub.url}/api", open_timeout=TIMEOUT, max_size=None).__enter__()
        self.marker = 0

    def request(self, frame: str | bytes) -> dict[str, Any]:
        self.api.send(frame)
        reply = json.loads(self.api.recv(timeout=TIMEOUT))
        assert isinstance(reply, dict)
        return reply

    def delivered_until_marker(self) -> list[str]:
        """Ids the subscriber got since the last call, up to a marker event published now."""
        self.marker += 1
        marker = self.request(json.dumps({"op": "publish", "event": {"type": "fz.marker", "appId": "fz", "payload": {"n": self.marker}}}))
        ids = []
        while True:
            env = json.loads(self.sub.recv(timeout=TIMEOUT))
            if env["id"] == marker["id"]:
                return ids
            ids.append(env["id"])

    def close(self) -> None:
        self.sub.close()
        self.api.close()
        self.hub.stop()


@pytest.fixture(scope="module")
def session() -> Iterator[Session]:
    s = Session()
    try:
        yield s
    finally:
        s.close()


# ---------------------------------------------------------------- strategies

edge_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]) | st.sampled_from(["\u0000", "\u202e", "\ufeff", "\U0010ffff", "\u2028"]),
    max_size=30,
)
numbers = st.integers(min_value=-(10**40), max_value=10**40) | st.floats(allow_nan=False, allow_infinity=False)
json_values = st.recursive(
    st.none() | st.booleans() | numbers | edge_text,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(edge_text, kids, max_size=4),
    max_leaves=20,
)
good_type = st.from_regex(r"\Afz\.[a-z0-9][a-z0-9_-]{0,10}\Z")
good_event = st.builds(
    lambda t, p: {"type": t, "appId": "fz", "payload": p},
    good_type, st.dictionaries(edge_text, json_values, max_size=4),
)  # fmt: skip
bad_event = st.one_of(
    st.builds(lambda t: {"type": t, "appId": "fz", "payload": {}}, edge_text.filter(lambda t: "." not in t)),
    st.builds(lambda a: {"type": "fz.x", "appId": a, "payload": {}}, st.one_of(st.just(""), st.text(min_size=65, max_size=70), numbers)),
    st.builds(lambda p: {"type": "fz.x", "appId": "fz", "payload": p}, st.one_of(st.none(), numbers, st.lists(json_values, max_size=2))),
    st.builds(lambda k: {"type": "fz.x", "appId": "fz", "payload": {}, k: 1}, st.sampled_from(["appid", "extra", "Type"])),
    st.builds(lambda: {"type": "deploy.step", "appId": "fz", "payload": {"step": "x"}}),  # catalogue field missing
)


def deep(n: int) -> str:
    return "[" * n + "]" * n


@st.composite
def api_requests(draw: st.DrawFn) -> tuple[str | bytes, str]:
    """A request frame and what it must get: "ok" (and publish its events) or "error"."""
    kind = draw(st.sampled_from(["good", "batch", "bad", "badbatch", "junk", "deep", "bigint", "notjson", "badutf8", "op"]))
    if kind == "good":
        return json.dumps({"op": "publish", "event": draw(good_event)}), "ok"
    if kind == "batch":
        return json.dumps({"op": "publish", "events": draw(st.lists(good_event, min_size=1, max_size=5))}), "ok"
    if kind == "bad":
        return json.dumps({"op": "publish", "event": draw(bad_event)}), "error"
    if kind == "badbatch":
        events = draw(st.lists(good_event, min_size=0, max_size=3)) + [draw(bad_event)]
        return json.dumps({"op": "publish", "events": draw(st.permutations(events))}), "error"
    if kind == "junk":
        value = draw(json_values)
        return json.dumps(value), "error"  # never a dict with a known op: random keys
    if kind == "deep":
        n = draw(st.integers(1, 5000))
        return json.dumps({"op": "publish", "event": json.loads('{"type":"fz.d","appId":"fz","payload":{"x":' + deep(min(n, 400)) + "}}")}) if n < 400 else '{"op":"publish","event":{"type":"fz.d","appId":"fz","payload":{"x":' + deep(n) + "}}}", "deep"
    if kind == "bigint":
        return '{"op":"publish","event":{"type":"fz.n","appId":"fz","payload":{"n":' + str(draw(st.integers(10**19, 10**400))) + "}}}", "big"
    if kind == "notjson":
        return draw(st.text(max_size=40).filter(lambda t: not _is_json(t))), "error"
    if kind == "badutf8":
        return b'{"op":"status","x":"\xff\xfe' + draw(st.binary(max_size=10)) + b'"}', "error"
    return json.dumps({"op": draw(edge_text.filter(lambda o: o not in ("publish", "status", *_RUN_OPS)))}), "error"


_RUN_OPS = ("deploy", "forge", "teardown", "restart", "rollback", "runinfo")


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------- /api requests


@FUZZ
@given(reqs=st.lists(api_requests(), min_size=1, max_size=6))
def test_api_requests_get_their_documented_answer(session: Session, reqs: list[tuple[str | bytes, str]]) -> None:
    """Valid publishes are acked and delivered; everything else gets an `ok:false` with a documented code."""
    published: list[str] = []
    for frame, expect in reqs:
        reply = session.request(frame)
        if reply.get("ok") is True:
            assert expect in ("ok", "deep", "big"), (frame[:200], reply)
            published += reply["ids"] if "ids" in reply else [reply["id"]]
        else:
            assert expect != "ok", (frame[:200], reply)
            assert reply["ok"] is False and reply["error"]["code"] in CODES, reply
            assert isinstance(reply["error"]["message"], str) and "\n" not in reply["error"]["message"]
    assert session.delivered_until_marker() == published


# ---------------------------------------------------------------- raw frames


def raw_api(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /api HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        assert chunk, "the hub closed during the handshake"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def frame(opcode: int, payload: bytes, *, fin: bool = True, masked: bool = True, rsv: int = 0, declared: int | None = None) -> bytes:
    n = len(payload) if declared is None else declared
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    mask_bit = 0x80 if masked else 0
    if n < 126:
        head = struct.pack("!BB", first, mask_bit | n)
    elif n < 65536:
        head = struct.pack("!BBH", first, mask_bit | 126, n)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, n)
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def read_frames(sock: socket.socket) -> Iterator[tuple[int, bytes]]:
    """Server frames (unmasked) until the hub closes the TCP connection."""
    buf = b""
    while True:
        while True:
            if len(buf) >= 2:
                n = buf[1] & 0x7F
                off = 2
                if n == 126 and len(buf) >= 4:
                    n, off = struct.unpack("!H", buf[2:4])[0], 4
                elif n == 127 and len(buf) >= 10:
                    n, off = struct.unpack("!Q", buf[2:10])[0], 10
                if n < 126 or off > 2:
                    if len(buf) >= off + n:
                        yield buf[0] & 0x0F, buf[off : off + n]
                        buf = buf[off + n :]
                        continue
            break
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return
        if not chunk:
            return
        buf += chunk


class Raw(bytes):
    """Frame bytes that print short (hypothesis prints the failing example)."""

    def __repr__(self) -> str:
        return f"<frame {bytes(self[:12])!r}... {len(self)} bytes>"


@st.composite
def raw_frames(draw: st.DrawFn) -> tuple[bytes, str]:
    data, expect = draw(_raw_frames())
    return Raw(data), expect


@st.composite
def _raw_frames(draw: st.DrawFn) -> tuple[bytes, str]:
    """A frame and the documented answer: "reply" (ok:false), "pong", "none" (ignored), or "close:CODES"."""
    opcode = draw(st.integers(0, 15))
    size = draw(st.sampled_from([0, 1, 10, 125, 126, 200, 65535, MAX + 1]))
    payload = draw(st.binary(min_size=min(size, 64), max_size=min(size, 64))) * (size // 64 + 1) if size else b""
    payload = payload[:size]
    variant = draw(st.sampled_from(["plain", "plain", "plain", "unmasked", "rsv", "unfinished"]))
    if variant == "unmasked":
        return frame(opcode, payload[:100], masked=False), "close:1002"
    if variant == "rsv":
        return frame(opcode, payload[:100], rsv=draw(st.integers(1, 7))), "close:1002"
    if opcode in (3, 4, 5, 6, 7, 11, 12, 13, 14, 15) or opcode == 0:
        return frame(opcode, payload[:100], fin=variant != "unfinished"), "close:1002"
    if opcode >= 8 and (len(payload) > 125 or variant == "unfinished"):  # control frames: short and whole
        return frame(opcode, payload, fin=variant != "unfinished"), "close:1002,1009" if len(payload) > MAX else "close:1002"
    if len(payload) > MAX:
        return frame(opcode, payload), "close:1009"
    if variant == "unfinished":  # a fragmented message's start, then our status frame: not a continuation
        # (a start that with our frame is over the size limit may be refused as too big first)
        return frame(opcode, payload, fin=False), "close:1002,1009" if len(payload) + 15 > MAX else "close:1002"
    if opcode == 8:
        return frame(8, b""), "close:1000,1005"
    if opcode == 9:
        return frame(9, payload), "pong"
    if opcode == 10:
        return frame(10, payload), "none"
    return frame(opcode, payload), "reply"


@FUZZ
@given(case=raw_frames())
def test_raw_frames_get_their_documented_answer(session: Session, case: tuple[bytes, str]) -> None:
    """Each frame, followed by a status request, gets its answer; the hub and its subscriber are untouched."""
    data, expect = case
    sock = raw_api(session.port)
    try:
        sock.sendall(data + frame(1, b'{"op":"status"}'))
        got = list(_answers(sock))
    finally:
        sock.close()
    status = [p for op, p in got if op == 1 and b'"clients"' in p]
    if expect.startswith("close:"):
        closes = [p for op, p in got if op == 8]
        assert closes, (expect, got)
        code = struct.unpack("!H", closes[0][:2])[0] if len(closes[0]) >= 2 else 1005  # 1005: no code
        assert code in {int(c) for c in expect[6:].split(",")}, (expect, got)
    else:
        first = got[0]
        if expect == "reply":
            assert first[0] == 1 and json.loads(first[1])["error"]["code"] == "bad_request", got
        elif expect == "pong":
            assert first[0] == 10, got
        assert status, (expect, got)
    assert session.delivered_until_marker() == []


def _answers(sock: socket.socket) -> Iterator[tuple[int, bytes]]:
    """Frames up to the status reply or the close frame."""
    for op, payload in read_frames(sock):
        yield op, payload
        if op == 8 or (op == 1 and b'"clients"' in payload):
            return


# ---------------------------------------------------------------- /ws query strings


query_text = st.text(alphabet=st.sampled_from(list("appsincetylmt=&*,.-_%0123456789xé\u0000 ")), max_size=40)


@FUZZ
@given(query=query_text)
def test_ws_query_strings_get_101_or_a_one_line_400(session: Session, query: str) -> None:
    """Any query string is a subscription (101) or a 400 with one line saying why; nothing else."""
    from urllib.parse import quote

    target = "/ws?" + quote(query, safe="=&*,%")
    sock = socket.create_connection(("127.0.0.1", session.port), timeout=TIMEOUT)
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            f"GET {target} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            assert chunk
            head += chunk
        status = int(head.split()[1])
        assert status in (101, 400), head
        if status == 400:
            body = head.split(b"\r\n\r\n", 1)[1]
            while len(body) < int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]):
                body += sock.recv(4096)
            assert body.endswith(b"\n") and body.count(b"\n") == 1, body
    finally:
        sock.close()
