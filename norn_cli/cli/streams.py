"""The process's standard streams: present before anything opens a file, and failures to write them as one line.

A command started with stdin, stdout or stderr closed (`<&-`, as some
service managers do) would otherwise hand out fd 0, 1 or 2 to the first
socket it opens; libuv (uvloop) asserts that it never closes one of those
(`uv__close: Assertion 'fd > STDERR_FILENO' failed`) and aborts the process,
and any later `print` would write into that socket. So missing standard
descriptors are opened on /dev/null first: a closed stdin reads as empty, a
closed stdout or stderr discards what is written to it.

Output that cannot be written (stdout on /dev/full, a disk that filled up)
ends the command with one line on stderr and exit 1, never a traceback; an
unwritable stderr is given up on silently, since there is nowhere to say so.
"""

from __future__ import annotations

import errno
import os
import sys

__all__ = ["ensure_standard_fds", "finish_output", "output_error", "silence"]


def ensure_standard_fds() -> None:
    """Open each closed fd among 0, 1, 2 on /dev/null, and give Python a stream for it."""
    for fd, mode in ((0, os.O_RDONLY), (1, os.O_WRONLY), (2, os.O_WRONLY)):
        try:
            os.fstat(fd)
            continue
        except OSError as exc:
            if exc.errno != errno.EBADF:
                continue
        opened = os.open(os.devnull, mode)  # the lowest free descriptor: `fd` itself
        if opened != fd:
            os.dup2(opened, fd)
            os.close(opened)
        name = ("stdin", "stdout", "stderr")[fd]
        if getattr(sys, name) is None:  # Python found the fd closed at startup
            setattr(sys, name, open(fd, "r" if fd == 0 else "w", closefd=False, encoding="utf-8", errors="backslashreplace"))


def silence(fd: int) -> None:
    """Point `fd` at /dev/null, so nothing more is written where writing failed (nor at exit)."""
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, fd)
    os.close(null)


def output_error(exc: OSError) -> str:
    """The one line for an output that could not be written."""
    return f"cannot write the output: {exc.strerror or exc}"


def finish_output() -> str | None:
    """Flush stdout and stderr before exit; the problem with stdout, if any (stderr's is dropped)."""
    problem = None
    for stream in (sys.stdout, sys.stderr):
        if stream is None:
            continue
        try:
            stream.flush()
        except (OSError, ValueError) as exc:
            if stream is sys.stdout and isinstance(exc, OSError):
                problem = output_error(exc)
            try:
                silence(stream.fileno())
            except (OSError, ValueError):
                pass
            # What is still buffered would fail again at interpreter exit.
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
    return problem
