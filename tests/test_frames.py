"""The fast /api frame parser is a pure function of bytes."""

from __future__ import annotations

import os

from norn_cli.hub.frames import PING, PONG, TEXT, parse_frames


def masked(first: int, payload: bytes, key: bytes = b"\x01\x02\x03\x04") -> bytes:
    n = len(payload)
    head = bytes((first, 0x80 | n)) if n < 126 else bytes((first, 0x80 | 126)) + n.to_bytes(2, "big")
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def parse(data: bytes, max_size: int = 1 << 16) -> tuple[list[tuple[int, bytes]], int, int]:
    out: list[tuple[int, bytes]] = []
    pos, need = parse_frames(data, max_size, out)
    return out, pos, need


def test_whole_frames_in_order() -> None:
    """Text frames, pings and pongs come out unmasked, in order, and everything is consumed."""
    big = os.urandom(300)
    data = masked(TEXT, b'{"op":"status"}') + masked(PING, b"hi") + masked(TEXT, big) + masked(PONG, b"")
    assert parse(data) == ([(TEXT, b'{"op":"status"}'), (PING, b"hi"), (TEXT, big), (PONG, b"")], len(data), 0)


def test_partial_frame_says_how_much_it_needs() -> None:
    """A frame cut anywhere stops at its start and names the bytes it needs from there."""
    one, two = masked(TEXT, b"a" * 10), masked(TEXT, b"b" * 200)
    data = one + two
    assert parse(data[: len(one) + 1]) == ([(TEXT, b"a" * 10)], len(one), 2)
    assert parse(data[: len(one) + 3]) == ([(TEXT, b"a" * 10)], len(one), 8)  # a 16-bit length: 8 header bytes
    assert parse(data[:-1]) == ([(TEXT, b"a" * 10)], len(one), len(two))


def test_frames_left_to_websockets() -> None:
    """Binary, close, fragments, unmasked and oversize frames stop the parser at their first byte."""
    text = masked(TEXT, b"x")
    for other in (masked(0x82, b"bin"), masked(0x88, b"\x03\xe8"), masked(0x01, b"frag"), b"\x81\x01x"):
        assert parse(text + other) == ([(TEXT, b"x")], len(text), 0)
    assert parse(masked(TEXT, b"y" * 200), max_size=100) == ([], 0, 0)
