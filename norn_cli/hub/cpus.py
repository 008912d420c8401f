"""Which CPUs a thread of the hub runs on.

The SQLite broker hands every commit from the event loop to its writer
thread and back. On two CPUs each hand-off costs a wake-up of the other
CPU; on one CPU it is a switch between two threads that share the GIL
anyway. So that broker pins the loop thread and its writer to the CPU the
loop runs on (`pin_here`), and everything that should use the other CPUs
asks for them: the fan-out helper threads, there to write beside the loop
thread, take every other CPU (`run_elsewhere`); the replay readers and the
checkpointer take them all back (`run_anywhere`), and so do the processes
the hub starts, such as pipeline steps (`anywhere`), which would otherwise
inherit one CPU.

Linux only (os.sched_setaffinity); elsewhere nothing is pinned.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["anywhere", "pin_here", "run_anywhere", "run_elsewhere", "unpin"]

_everywhere: frozenset[int] | None = None  # the CPUs the process had before a thread was pinned
_pinned: int | None = None  # the CPU a thread was pinned to


def _cpu_now() -> int | None:
    """The CPU the calling thread is running on, from /proc/thread-self/stat (field 39)."""
    try:
        with open("/proc/thread-self/stat", "rb") as f:
            return int(f.read().rpartition(b")")[2].split()[36])
    except (OSError, ValueError, IndexError):
        return None


def pin_here() -> frozenset[int] | None:
    """Pin the calling thread to the CPU it runs on; return the CPUs it had (for `unpin`).

    None when there is nothing to gain or no way to do it: one CPU allowed,
    or a system without thread affinity.
    """
    global _everywhere, _pinned
    if not hasattr(os, "sched_setaffinity"):
        return None
    had = frozenset(os.sched_getaffinity(0))
    cpu = _cpu_now()
    if len(had) < 2 or cpu not in had:
        return None
    os.sched_setaffinity(0, {cpu})
    if _everywhere is None:
        _everywhere, _pinned = had, cpu
    return had


def unpin(had: frozenset[int] | None) -> None:
    """Give the calling thread back the CPUs `pin_here` returned."""
    global _everywhere, _pinned
    if had is not None:
        os.sched_setaffinity(0, had)
        if _everywhere == had:
            _everywhere = _pinned = None


def run_anywhere() -> None:
    """Let the calling thread run on every CPU the process had before a thread was pinned (called first by threads that should)."""
    if _everywhere is not None:
        os.sched_setaffinity(0, _everywhere)


def run_elsewhere() -> None:
    """Let the calling thread run on every CPU the process had except the pinned one (or on every one
    when nothing is pinned): a thread there to work beside the loop thread, not to take turns with it."""
    if _everywhere is not None:
        os.sched_setaffinity(0, _everywhere - {_pinned} or _everywhere)


@contextmanager
def anywhere() -> Iterator[None]:
    """Processes started inside inherit every CPU, not the pinned loop thread's one."""
    if _everywhere is None:
        yield
        return
    had = os.sched_getaffinity(0)
    os.sched_setaffinity(0, _everywhere)
    try:
        yield
    finally:
        os.sched_setaffinity(0, had)
