"""FanoutWriter on real socket pairs: every socket gets the chunk whole, once, or the
writer says exactly how much it took."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from norn_cli.hub.writer import MIN_TARGETS, FanoutWriter


def _pair(sndbuf: int | None = None) -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    if sndbuf is not None:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, sndbuf)
    a.setblocking(False)  # as a transport's socket is
    return a, b


def _read_all(sock: socket.socket) -> bytes:
    """Everything already sent to `sock`, without waiting for more."""
    sock.setblocking(False)
    out = bytearray()
    while True:
        try:
            data = sock.recv(1 << 20)
        except BlockingIOError:
            return bytes(out)
        if not data:
            return bytes(out)
        out += data


@pytest.fixture
def pairs() -> Iterator[list[tuple[socket.socket, socket.socket]]]:
    made: list[tuple[socket.socket, socket.socket]] = []
    yield made
    for a, b in made:
        a.close()
        b.close()


@pytest.mark.parametrize("threads", [0, 1, 3])
def test_every_socket_gets_each_chunk_whole_and_in_order(threads: int, pairs: list) -> None:
    pairs += [_pair() for _ in range(40)]
    writer: FanoutWriter[int] = FanoutWriter(threads)
    try:
        for chunk in (b"first|", b"second|" * 50, b"third"):
            assert writer.write([(i, a.fileno()) for i, (a, _) in enumerate(pairs)], chunk) == []
    finally:
        writer.close()
    expected = b"first|" + b"second|" * 50 + b"third"
    assert [_read_all(b) for _, b in pairs] == [expected] * 40
    assert writer.short_writes == 0


def test_a_full_socket_reports_exactly_what_it_took(pairs: list) -> None:
    pairs += [_pair() for _ in range(20)]
    full_a, full_b = _pair(sndbuf=4096)
    pairs.append((full_a, full_b))
    writer: FanoutWriter[str] = FanoutWriter(1)
    chunk = bytes(range(256)) * 4096  # 1 MiB: more than the small socket holds
    try:
        targets = [(f"ok{i}", a.fileno()) for i, (a, _) in enumerate(pairs[:20])] + [("full", full_a.fileno())]
        # The healthy sockets take a small chunk whole; the full one takes part of the big one.
        assert writer.write(targets, b"hello") == []
        short = writer.write([("full", full_a.fileno())], chunk)
        assert len(short) == 1 and short[0][0] == "full"
        took = short[0][1]
        assert 0 < took < len(chunk)
        # Nothing fits now: a full socket took nothing.
        assert writer.write([("full", full_a.fileno())], b"more") == [("full", 0)]
    finally:
        writer.close()
    assert _read_all(full_b) == b"hello" + chunk[:took]
    assert [_read_all(b) for _, b in pairs[:20]] == [b"hello"] * 20
    assert writer.short_writes == 2


def test_a_broken_socket_reports_zero_and_the_rest_are_written(pairs: list) -> None:
    pairs += [_pair() for _ in range(20)]
    broken_a, broken_b = _pair()
    broken_b.close()
    writer: FanoutWriter[int] = FanoutWriter(1)
    try:
        targets = [(i, a.fileno()) for i, (a, _) in enumerate(pairs)] + [(99, broken_a.fileno())]
        assert writer.write(targets, b"event") == [(99, 0)]
    finally:
        writer.close()
        broken_a.close()
    assert [_read_all(b) for _, b in pairs] == [b"event"] * 20


def helpers() -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("norn-fanout-"))


def test_a_write_to_few_sockets_wakes_no_helper(pairs: list) -> None:
    before = helpers()
    pairs += [_pair() for _ in range(MIN_TARGETS - 1)]
    writer: FanoutWriter[int] = FanoutWriter(2)
    assert writer.write([(i, a.fileno()) for i, (a, _) in enumerate(pairs)], b"few") == []
    assert helpers() == before
    writer.close()
    assert [_read_all(b) for _, b in pairs] == [b"few"] * (MIN_TARGETS - 1)


def test_close_stops_the_helpers_and_a_later_write_restarts_them(pairs: list) -> None:
    before = helpers()
    pairs += [_pair() for _ in range(20)]
    targets = [(i, a.fileno()) for i, (a, _) in enumerate(pairs)]
    writer: FanoutWriter[int] = FanoutWriter(2)
    assert helpers() == before  # started on first use, not before
    writer.write(targets, b"a")
    assert len(helpers()) == len(before) + 2
    writer.close()
    assert helpers() == before
    assert writer.write(targets, b"b") == []
    writer.close()
    assert helpers() == before
    assert [_read_all(b) for _, b in pairs] == [b"ab"] * 20


def test_negative_thread_count_is_refused() -> None:
    with pytest.raises(ValueError, match="threads must be >= 0"):
        FanoutWriter(-1)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is Linux-only")
def test_default_is_one_helper_with_two_cpus_and_none_with_one() -> None:
    probe = "import os, sys; from norn_cli.hub.writer import default_threads; {pin}print(default_threads())"
    one_cpu = subprocess.run(
        [sys.executable, "-c", probe.format(pin="os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); ")],
        capture_output=True, text=True, check=True,
    )
    assert one_cpu.stdout == "0\n"
    if len(os.sched_getaffinity(0)) >= 2:
        every_cpu = subprocess.run([sys.executable, "-c", probe.format(pin="")], capture_output=True, text=True, check=True)
        assert every_cpu.stdout == "1\n"
