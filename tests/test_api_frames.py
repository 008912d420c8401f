"""/api framing on raw sockets: the hub's own parser for common frames and websockets for the rest agree."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
from typing import Any

from collections.abc import Sequence

from norn_cli.core.events import Event, Filter
from norn_cli.hub.brokers.base import Item
from norn_cli.hub.brokers.memory import MemoryBroker
from norn_cli.hub.server import HubServer
from tests.conftest import TIMEOUT


def frame(opcode: int, payload: bytes, *, fin: bool = True, masked: bool = True) -> bytes:
    """A client frame: masked unless told otherwise."""
    n = len(payload)
    head = bytes((0x80 * fin | opcode,))
    mbit = 0x80 if masked else 0
    if n < 126:
        head += bytes((mbit | n,))
    elif n < 65536:
        head += bytes((mbit | 126,)) + struct.pack("!H", n)
    else:
        head += bytes((mbit | 127,)) + struct.pack("!Q", n)
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def publish(k: int) -> bytes:
    return frame(0x1, json.dumps({"op": "publish", "event": {"type": "t.k", "appId": "a", "payload": {"k": k}}}).encode())


class Raw:
    """A hand-driven WebSocket client on /api."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, hub: HubServer, first: bytes = b"") -> Raw:
        reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET /api HTTP/1.1\r\nHost: 127.0.0.1:{hub.port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
            + first
        )
        async with asyncio.timeout(TIMEOUT):
            head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    async def send(self, data: bytes, *, split: int = 0) -> None:
        """Send bytes, optionally in pieces of `split` bytes, each flushed."""
        if not split:
            self.writer.write(data)
        else:
            for i in range(0, len(data), split):
                self.writer.write(data[i : i + split])
                await self.writer.drain()
        await self.writer.drain()

    async def recv(self) -> tuple[int, bytes]:
        """The next server frame: (opcode, payload)."""
        async with asyncio.timeout(TIMEOUT):
            b0, b1 = await self.reader.readexactly(2)
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
            return b0 & 0x0F, await self.reader.readexactly(n)

    async def reply(self) -> dict[str, Any]:
        op, data = await self.recv()
        assert op == 0x1
        out: dict[str, Any] = json.loads(data)
        return out

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass


async def test_pipelined_requests_split_anywhere(hub: HubServer) -> None:
    """Requests cut at every byte boundary still get one reply each, in order."""
    raw = await Raw.open(hub)
    data = b"".join(publish(k) for k in range(40))
    await raw.send(data, split=7)
    await raw.send(data[:-1] + b"", split=0)  # all but the last byte...
    await raw.send(data[-1:])  # ...then the last one
    ids = [(await raw.reply())["id"] for _ in range(80)]
    assert len(set(ids)) == 80
    assert hub.hub.published == 80
    # white box: these frames took the hub's own parser, not websockets'
    assert [c.fast for c in hub.conns if c.kind == "api"] == [True]
    await raw.close()


async def test_frames_trickling_in(hub: HubServer) -> None:
    """Small frames a byte at a time and a 20 KB frame in 97-byte pieces are each read whole."""
    raw = await Raw.open(hub)
    await raw.send(publish(1) + frame(0x9, b"p"), split=1)
    got = dict([await raw.recv(), await raw.recv()])  # a pong may overtake a reply
    assert got[0xA] == b"p"
    assert json.loads(got[0x1])["ok"] is True
    big = frame(0x1, json.dumps({"op": "publish", "event": {"type": "t.k", "appId": "a", "payload": {"pad": "x" * 20000}}}).encode())
    await raw.send(big, split=97)
    assert (await raw.reply())["ok"] is True
    assert [c.fast for c in hub.conns if c.kind == "api"] == [True]
    await raw.close()


async def test_ping_gets_pong_and_pong_is_quiet(hub: HubServer) -> None:
    """A client ping is answered with the same payload; a pong is swallowed."""
    raw = await Raw.open(hub)
    await raw.send(frame(0xA, b"unsolicited") + frame(0x9, b"hello") + publish(1))
    assert await raw.recv() == (0xA, b"hello")
    assert (await raw.reply())["ok"] is True
    await raw.close()


async def test_binary_then_text_fragments(hub: HubServer) -> None:
    """A binary frame is refused with an error reply, fragmented text still works, the link stays up."""
    raw = await Raw.open(hub)
    body = json.dumps({"op": "status"}).encode()
    await raw.send(frame(0x2, b"{}") + frame(0x1, body[:5], fin=False) + frame(0x0, body[5:]) + publish(2))
    first = await raw.reply()
    assert first["ok"] is False and first["error"]["code"] == "bad_request"
    assert (await raw.reply())["clients"] == 0
    assert (await raw.reply())["ok"] is True
    assert [c.fast for c in hub.conns if c.kind == "api"] == [False]  # websockets took over
    await raw.close()


async def test_bad_json_is_an_error_reply(hub: HubServer) -> None:
    """Bad JSON and invalid UTF-8 get bad_request replies and never close the connection."""
    raw = await Raw.open(hub)
    await raw.send(frame(0x1, b"{nope") + frame(0x1, b'{"op":"\xff"}') + publish(3))
    assert (await raw.reply())["error"]["code"] == "bad_request"
    assert (await raw.reply())["error"]["code"] == "bad_request"
    assert (await raw.reply())["ok"] is True
    await raw.close()


async def test_oversize_frame_closes_1009(hub: HubServer) -> None:
    """A frame over the size limit closes the connection with 1009."""
    raw = await Raw.open(hub)
    await raw.send(publish(4))
    assert (await raw.reply())["ok"] is True
    await raw.send(frame(0x1, b" " * (hub.max_size + 1)))
    op, data = await raw.recv()
    assert op == 0x8 and struct.unpack("!H", data[:2])[0] == 1009
    await raw.close()


async def test_unmasked_frame_closes_1002(hub: HubServer) -> None:
    """A client frame without a mask is a protocol error: close 1002."""
    raw = await Raw.open(hub)
    await raw.send(frame(0x1, b"", masked=False))  # two bytes: refused at once
    op, data = await raw.recv()
    assert op == 0x8 and struct.unpack("!H", data[:2])[0] == 1002
    await raw.close()


async def test_close_is_answered(hub: HubServer) -> None:
    """A client close frame is echoed and the hub ends the connection."""
    raw = await Raw.open(hub)
    await raw.send(publish(5))
    assert (await raw.reply())["ok"] is True
    await raw.send(frame(0x8, struct.pack("!H", 1000)))
    op, data = await raw.recv()
    assert op == 0x8 and struct.unpack("!H", data[:2])[0] == 1000
    async with asyncio.timeout(TIMEOUT):
        assert await raw.reader.read() == b""
    await raw.close()


async def test_requests_before_a_close_frame_are_answered_first(hub: HubServer) -> None:
    """Publishes pipelined with a close frame in one packet are all acked, then the close is echoed."""
    raw = await Raw.open(hub)
    await raw.send(b"".join(publish(k) for k in range(3)) + frame(0x8, struct.pack("!H", 1000)))
    replies = [await raw.reply() for _ in range(3)]
    assert [r["ok"] for r in replies] == [True, True, True]
    op, data = await raw.recv()
    assert op == 0x8 and struct.unpack("!H", data[:2])[0] == 1000
    async with asyncio.timeout(TIMEOUT):
        assert await raw.reader.read() == b""
    await raw.close()
    assert hub.hub.published == 3


async def test_frames_in_the_handshake_packet(hub: HubServer) -> None:
    """Frames sent in the same packet as the upgrade request are served too."""
    second = publish(7)
    raw = await Raw.open(hub, first=publish(6) + second[:3])
    await raw.send(second[3:])
    assert (await raw.reply())["ok"] is True
    assert (await raw.reply())["ok"] is True
    await raw.close()


class SlowSecondCommit(MemoryBroker):
    """A broker whose second publish is stored only once `gate` is set: a commit that takes its time."""

    def __init__(self) -> None:
        super().__init__(100)
        self.calls = 0
        self.gate = asyncio.Event()

    async def publish(self, items: Sequence[Item]) -> list[Event]:
        self.calls += 1
        if self.calls == 2:
            await self.gate.wait()
        return await super().publish(items)


async def test_each_run_is_acked_before_the_next_is_stored() -> None:
    """Pipelined publishes folded into two broker calls: the first call's acks go out while the second still waits.

    Held back until the second was stored, they kept a publisher's window of
    unacknowledged requests full for a whole extra commit on the SQLite broker.
    """
    broker = SlowSecondCommit()
    async with HubServer(port=0, broker=broker, queue_size=4) as srv:  # calls of at most 2 events
        raw = await Raw.open(srv)
        await raw.send(publish(1) + publish(2) + publish(3))
        first = [await raw.reply() for _ in range(2)]
        assert [r["ok"] for r in first] == [True, True]
        assert broker.calls == 2 and not broker.gate.is_set()  # the third is still being stored
        broker.gate.set()
        third = await raw.reply()
        assert third["ok"] is True
        stored = broker.replay_now(since=None, last=10, flt=Filter()).events
        assert [r["id"] for r in first] + [third["id"]] == [ev.id for ev in stored]
        await raw.close()
