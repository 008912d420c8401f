"""How much do parallel writers speed up a fan-out to loopback sockets on this machine?

Stand-alone, no hub: 100 loopback TCP connections; one child process writes
a 250-byte chunk to all 100, or two child processes write to 50 each at the
same time (no Python lock shared between writers), and the same with threads
in one process (`os.write` drops the GIL, as norn's fan-out does). Prints the median
and p90 wall time of a round (the parent's go signal to both acks), with
the receiving ends either drained between rounds (`--no-reader`) or read
all the time by a third process, as a load generator's subscribers would.

    python benchmarks/parallel_writes.py            # with a reader process
    python benchmarks/parallel_writes.py --no-reader

Figures, not assertions (benchmarks/README.md, the p99 section).
"""

from __future__ import annotations

import os
import queue
import select
import signal
import socket
import statistics
import sys
import threading
import time

N = 100
ROUNDS = int(os.environ.get("ROUNDS", "400"))
CHUNK = b"x" * 250


def _child(body) -> int:  # type: ignore[no-untyped-def]
    pid = os.fork()
    if pid == 0:
        try:
            body()
        finally:
            os._exit(0)
    return pid


def main() -> None:
    reader = "--no-reader" not in sys.argv[1:]
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(N)
    clients, servers = [], []
    for _ in range(N):
        c = socket.create_connection(srv.getsockname())
        s, _ = srv.accept()
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        clients.append(c)
        servers.append(s)
    pids = []

    def read_forever() -> None:
        ep = select.epoll()
        by_fd = {c.fileno(): c for c in clients}
        for c in clients:
            c.setblocking(False)
            ep.register(c.fileno(), select.EPOLLIN)
        while True:
            for fd, _ in ep.poll():
                try:
                    by_fd[fd].recv(65536)
                except BlockingIOError:
                    pass

    def drain() -> None:
        for c in clients:
            c.setblocking(False)
            try:
                while c.recv(1 << 16):
                    pass
            except BlockingIOError:
                pass

    def writer(fds: list[int]) -> tuple[int, int]:
        go_r, go_w = os.pipe()
        ack_r, ack_w = os.pipe()

        def loop() -> None:
            while os.read(go_r, 1):
                for fd in fds:
                    os.write(fd, CHUNK)
                os.write(ack_w, b"k")

        pids.append(_child(loop))
        return go_w, ack_r

    def write_all(fds: list[int]) -> None:
        for fd in fds:
            os.write(fd, CHUNK)

    jobs: queue.SimpleQueue[list[int]] = queue.SimpleQueue()
    done: queue.SimpleQueue[bool] = queue.SimpleQueue()

    def helper() -> None:
        while True:
            write_all(jobs.get())
            done.put(True)

    threading.Thread(target=helper, daemon=True).start()

    try:
        if reader:
            pids.append(_child(read_forever))
        fds = [s.fileno() for s in servers]
        procs = {"1 process x 100": [writer(fds)], "2 processes x 50": [writer(fds[:50]), writer(fds[50:])]}

        def by_processes(name: str) -> None:
            for go, _ in procs[name]:
                os.write(go, b"g")
            for _, ack in procs[name]:
                os.read(ack, 1)

        def two_threads() -> None:
            jobs.put(fds[50:])
            write_all(fds[:50])
            done.get()

        setups = {
            **{name: (lambda name=name: by_processes(name)) for name in procs},
            "1 thread x 100": lambda: write_all(fds),
            "2 threads x 50": two_threads,
        }
        for name in [*setups, *setups]:  # twice, alternating
            round_ = setups[name]
            times = []
            for _ in range(ROUNDS):
                t0 = time.perf_counter()
                round_()
                times.append((time.perf_counter() - t0) * 1e6)
                if not reader:
                    drain()
                time.sleep(0.002)
            times.sort()
            label = "reader" if reader else "no reader"
            print(f"{label:9s} {name:17s} median {statistics.median(times):5.0f} us  p90 {times[int(ROUNDS * 0.9)]:5.0f} us")
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
