"""Write one chunk to many sockets using more than one core.

A fan-out to a hundred subscribers is a hundred `write` system calls, and on
loopback each costs microseconds of kernel time, most of the hub's work per
event. CPython releases the GIL for the duration of `os.write`, so the loop
thread and a few helper threads can each be inside the kernel writing to a
different socket at once.

The caller hands `write` a list of (key, fd) pairs for sockets with nothing
buffered in front of them, in non-blocking mode. Every thread takes the next
pair from one shared iterator, so a thread that is preempted simply takes
fewer, and a helper that has not woken up by the time the loop thread is done
is not waited for. `write` returns when every pair has been written, with the
pairs whose socket did not take the whole chunk and how much it took; the
caller queues the rest on the connection, after this write and before any
later one, so order is kept. What it buys, measured: benchmarks/README.md
("What changed" 6 and the p99 section).
"""

from __future__ import annotations

import os
import queue
import sys
import threading
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

from norn_cli.hub import cpus

__all__ = ["MIN_TARGETS", "FanoutWriter", "default_threads"]

K = TypeVar("K")
_Job = tuple[Iterator[tuple[Any, int]], bytes, list[tuple[Any, int]], threading.Lock, threading.Lock]

MIN_TARGETS = 16
"""Fewer sockets than this are written by the caller: waking a helper would cost
more than it saves."""


def default_threads() -> int:
    """One helper thread when this process may run on two or more CPUs, else none
    (and none on Windows, where a socket is not a file descriptor `os.write` takes)."""
    if sys.platform == "win32":
        return 0
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return 1 if cpus > 1 else 0


def _write_each(targets: Iterator[tuple[K, int]], data: bytes, short: list[tuple[K, int]]) -> None:
    write = os.write
    size = len(data)
    for key, fd in targets:
        try:
            sent = write(fd, data)
        except OSError:  # full (EAGAIN) or broken: the connection's own write finds out which
            sent = 0
        if sent != size:
            short.append((key, sent))


class FanoutWriter(Generic[K]):
    """The loop thread plus `threads` helpers writing one chunk to many sockets."""

    def __init__(self, threads: int) -> None:
        if threads < 0:
            raise ValueError("threads must be >= 0")
        self.threads = threads
        self.min_targets = MIN_TARGETS
        self.short_writes = 0  # sockets that did not take a whole chunk (for tests and metrics)
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._helpers: list[threading.Thread] = []

    @property
    def enabled(self) -> bool:
        return self.threads > 0

    def write(self, targets: list[tuple[K, int]], data: bytes) -> list[tuple[K, int]]:
        """Write `data` to every fd in `targets`; return (key, bytes taken) for each
        socket that took less than all of it (0 when it was full or broken)."""
        items = iter(targets)
        short: list[tuple[K, int]] = []
        if len(targets) < self.min_targets:  # not worth waking anyone
            _write_each(items, data, short)
            self.short_writes += len(short)
            return short
        if not self._helpers and self.threads:
            self._start()
        waits = []
        for _ in self._helpers:
            claim, done = threading.Lock(), threading.Lock()
            done.acquire()
            self._jobs.put((items, data, short, claim, done))
            waits.append((claim, done))
        _write_each(items, data, short)
        for claim, done in waits:
            if not claim.acquire(blocking=False):  # the helper took the job: wait for it
                done.acquire()
        self.short_writes += len(short)
        return short

    def close(self) -> None:
        """Stop the helper threads (the writer can be used again; it restarts them)."""
        for _ in self._helpers:
            self._jobs.put(None)
        for t in self._helpers:
            t.join()
        self._helpers = []

    def _start(self) -> None:
        for i in range(self.threads):
            t = threading.Thread(target=self._run, name=f"norn-fanout-{i}", daemon=True)
            t.start()
            self._helpers.append(t)

    def _run(self) -> None:
        cpus.run_elsewhere()  # a helper is there to use another CPU than the loop's
        jobs = self._jobs
        while True:
            job = jobs.get()
            if job is None:
                return
            items, data, short, claim, done = job
            if claim.acquire(blocking=False):  # else the loop thread finished without us
                try:
                    _write_each(items, data, short)
                finally:
                    done.release()
