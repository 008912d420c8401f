"""Every command with stdin, stdout or stderr closed or on /dev/full: its normal answer, or one line and a documented code."""

from __future__ import annotations

import shlex
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import TIMEOUT, ThreadHub, norn_argv, norn_env

DEAD = "ws://127.0.0.1:1"  # nothing listens on port 1
REDIRECTS = {"stdin closed": "<&-", "stdout closed": ">&-", "stderr closed": "2>&-",
             "stdout full": ">/dev/full", "stderr full": "2>/dev/full"}  # fmt: skip


def _run(args: list[str], redirect: str) -> subprocess.CompletedProcess[str]:
    """`norn ARGS` under bash with one standard stream closed or full; the others captured."""
    # The captured stream a redirect replaces reads as empty.
    script = f"exec {shlex.join(norn_argv(*args))} {redirect}"
    return subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, timeout=TIMEOUT * 3, env=norn_env(),
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


def _check(args: list[str], code: int, writes_stdout: bool) -> None:
    cases = list(REDIRECTS.items())
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda c: _run(args, c[1]), cases))
    for (name, redirect), res in zip(cases, results):
        where = f"norn {' '.join(args)} {redirect} ({name})"
        assert res.returncode >= 0, f"{where}: killed by signal {-res.returncode}: {res.stderr}"
        assert "Traceback" not in res.stderr and "Assertion" not in res.stderr, f"{where}: {res.stderr}"
        expected = 1 if (redirect == ">/dev/full" and writes_stdout) else code
        assert res.returncode == expected, f"{where}: exit {res.returncode}, stderr {res.stderr!r}"
        if redirect == ">/dev/full" and writes_stdout:
            assert res.stderr == "norn: cannot write the output: No space left on device\n", where
        elif "2>" not in redirect and code != 0:
            last = res.stderr.splitlines()[-1]
            assert last.startswith(("norn: ", "Error: ")), f"{where}: {res.stderr!r}"


@pytest.mark.parametrize(
    ("args", "code", "writes_stdout"),
    [
        (["--version"], 0, True),
        (["--help"], 0, True),
        (["tail", "--help"], 0, True),
        (["nosuch"], 2, False),
        (["serve", "--port", "99999"], 2, False),
        (["--url", DEAD, "tail", "--no-reconnect"], 3, False),
        (["--url", DEAD, "emit", "deploy.step", "--app", "a", "-p", "step=x", "-p", "status=y"], 3, False),
        (["--url", DEAD, "deploy", "a"], 3, False),
        (["--url", DEAD, "watch", "abc"], 3, False),
    ],
)
def test_commands_without_a_hub_survive_closed_and_full_streams(args: list[str], code: int, writes_stdout: bool) -> None:
    """Each command gives its usual exit code (1 when its stdout is full) and never aborts or prints a traceback."""
    _check(args, code, writes_stdout)


def test_emit_and_tail_against_a_hub_survive_closed_and_full_streams() -> None:
    """`norn emit <&-` prints its id (the uvloop abort of issue 12), and so does every other stream case."""
    hub = ThreadHub(history=1000).start()
    try:
        emit = ["--url", hub.url, "emit", "deploy.step", "--app", "a", "-p", "step=x", "-p", "status=y"]
        res = _run(emit, "<&-")
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip().count("-") == 1  # the id the hub assigned
        _check(emit, 0, True)
        _check(["--url", hub.url, "tail", "--last", "1", "--count", "1", "--json"], 0, True)
    finally:
        hub.stop()


@pytest.mark.parametrize("redirect", ["<&-", ">&-", ">/dev/full"])
def test_serve_with_a_closed_stream_serves_and_stops_cleanly(redirect: str) -> None:
    """`norn serve <&-` (as under a service manager) serves an emit and exits 0 on SIGTERM."""
    import signal

    proc = subprocess.Popen(
        ["bash", "-c", f"exec {shlex.join(norn_argv('serve', '--port', '0'))} {redirect}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=norn_env(), stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        banner = proc.stderr.readline()
        url = banner.split("listening on ", 1)[1].split(" ", 1)[0]
        res = _run(["--url", url, "emit", "deploy.step", "--app", "a", "-p", "step=x", "-p", "status=y"], "<&-")
        assert res.returncode == 0, res.stderr
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, err
        assert "Traceback" not in err and "Assertion" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_demo_survives_closed_and_full_streams() -> None:
    """`norn demo` (an embedded hub and a run) under each closed or full stream."""
    _check(["demo", "--json"], 0, True)
