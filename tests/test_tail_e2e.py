"""`norn emit` to `norn tail` end to end: real hubs on free ports, real `norn` subprocesses, awaited lines."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import TIMEOUT, ThreadHub, norn_argv, norn_env, run_norn
from websockets.asyncio.client import connect

from norn_cli.hub.brokers.memory import MemoryBroker
from norn_cli.client.endpoint import Endpoint
from norn_cli.client.connect import ApiClient
from norn_cli.core.events import loads
from norn_cli.hub.server import HubServer


class Norn:
    """A `norn` subprocess whose output lines are awaited under a timeout, never slept for."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.errors: list[str] = []

    @classmethod
    async def start(cls, *args: str, stdout: Any = asyncio.subprocess.PIPE, **env: str) -> Norn:
        proc = await asyncio.create_subprocess_exec(
            *norn_argv(*args), stdout=stdout, stderr=asyncio.subprocess.PIPE, env=norn_env(**env)
        )
        return cls(proc)

    async def line(self) -> str:
        """The next stdout line, without its newline."""
        assert self.proc.stdout is not None
        async with asyncio.timeout(TIMEOUT):
            raw = await self.proc.stdout.readline()
        assert raw, f"norn closed stdout; stderr so far: {self.errors}"
        return raw.decode().rstrip("\n")

    async def lines(self, n: int) -> list[str]:
        return [await self.line() for _ in range(n)]

    async def stderr_until(self, text: str) -> str:
        """Read stderr lines until one contains `text`; return it."""
        assert self.proc.stderr is not None
        async with asyncio.timeout(TIMEOUT):
            while True:
                raw = await self.proc.stderr.readline()
                assert raw, f"norn closed stderr before saying {text!r}; it said {self.errors}"
                line = raw.decode().rstrip("\n")
                self.errors.append(line)
                if text in line:
                    return line

    async def finish(self) -> tuple[int, str, str]:
        """Wait for exit; return (code, rest of stdout, rest of stderr)."""
        async with asyncio.timeout(TIMEOUT):
            out, err = await self.proc.communicate()
        self.errors.extend(err.decode().splitlines())
        assert self.proc.returncode is not None
        return self.proc.returncode, out.decode() if out else "", err.decode()

    def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


@pytest.fixture
async def procs() -> AsyncIterator[list[Norn]]:
    """Subprocesses a test started, killed if still running when it ends."""
    started: list[Norn] = []
    yield started
    for p in started:
        p.stop()
        async with asyncio.timeout(TIMEOUT):
            await p.proc.wait()


async def tail(procs: list[Norn], url: str, *args: str, options: Sequence[str] = (), **env: str) -> Norn:
    """Start `norn -v [OPTIONS] tail ARGS` and return once it is subscribed."""
    p = await Norn.start("-v", "--url", url, *options, "tail", *args, **env)
    procs.append(p)
    await p.stderr_until("norn: subscribed to ")
    return p


async def publish(url: str, *events: dict[str, Any]) -> list[str]:
    """Publish events through the library, one request each; return their ids."""
    async with ApiClient(Endpoint.parse(url)) as api:
        return [(await api.request({"op": "publish", "event": ev}))["id"] for ev in events]


def step(app: str, name: str, status: str = "running") -> dict[str, Any]:
    return {"type": "deploy.step", "appId": app, "payload": {"step": name, "status": status}}


def deployment(kind: str, app: str, **extra: Any) -> dict[str, Any]:
    payload = {"id": "d1", "app": app, "ref": "abc123", "status": kind, "steps": [], "startedAt": "2026-11-27T13:27:16Z", **extra}
    return {"type": f"deploy.{kind}", "appId": app, "payload": payload}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# ------------------------------------------------------------------ emit to tail


async def test_emit_to_tail_json_is_exactly_what_the_hub_sent(hub: HubServer, procs: list[Norn]) -> None:
    """`tail --json` prints each frame byte for byte as a plain /ws subscriber receives it, and nothing else."""
    async with connect(hub.url + "/ws") as plain:
        t = await tail(procs, hub.url, "--json", "--count", "2")
        emit = await asyncio.to_thread(
            run_norn, "--url", hub.url, "emit", "deploy.step", "--app", "mail-agent",
            "-p", "step=build", "-p", "status=building", "-p", "note=ünï \"q\"\\n",
        )  # fmt: skip
        assert emit.returncode == 0, emit.stderr
        event_id = emit.stdout.strip()
        await publish(hub.url, {"type": "backup.completed", "appId": "db", "payload": {"sizeMb": 1.5, "deep": {"a": [1, None]}}})
        async with asyncio.timeout(TIMEOUT):
            frames = [await plain.recv(), await plain.recv()]
        assert await t.lines(2) == frames
        code, rest, _ = await t.finish()
    assert (code, rest) == (0, "")
    first = loads(frames[0])
    assert first["id"] == event_id
    assert first["payload"] == {"step": "build", "status": "building", "note": 'ünï "q"\\n'}


async def test_tail_human_lines_when_piped(hub: HubServer, procs: list[Norn]) -> None:
    """Without --json, one plain line per event when stdout is a pipe."""
    t = await tail(procs, hub.url, "--count", "1", TZ="UTC")
    await publish(hub.url, step("mail-agent", "build", "failed") | {"payload": {"step": "build", "status": "failed", "durationMs": 1500, "output": "boom\nmore"}})
    line = await t.line()
    assert line.split(" ", 1)[1] == "mail-agent     deploy.step        build failed 1.5s boom …"
    assert (await t.finish())[0] == 0


async def test_count_exits_after_n_events(hub: HubServer, procs: list[Norn]) -> None:
    """--count N: exit 0 after N events, however many more follow."""
    t = await tail(procs, hub.url, "--json", "--count", "3", "--app", "a")
    await publish(hub.url, step("b", "x"), *[step("a", f"s{i}") for i in range(5)])
    lines = await t.lines(3)
    code, rest, _ = await t.finish()
    assert code == 0 and rest == ""
    assert [loads(line)["payload"]["step"] for line in lines] == ["s0", "s1", "s2"]


async def test_until_completed_exits_0(hub: HubServer, procs: list[Norn]) -> None:
    """--until TYPE: exit 0 at the first event of that type, even through a --type filter."""
    t = await tail(procs, hub.url, "--json", "--app", "a", "--type", "deploy.step", "--until", "deploy.completed")
    await publish(hub.url, step("a", "build"), deployment("completed", "b"), step("a", "test"), deployment("completed", "a"), step("a", "late"))
    lines = await t.lines(3)
    code, rest, _ = await t.finish()
    assert (code, rest) == (0, "")
    assert [loads(line)["type"] for line in lines] == ["deploy.step", "deploy.step", "deploy.completed"]


async def test_until_completed_exits_1_when_failed_comes_first(hub: HubServer, procs: list[Norn]) -> None:
    """--until X.completed: the matching X.failed first is exit 1, with one sentence."""
    t = await tail(procs, hub.url, "--json", "--app", "a", "--until", "deploy.completed")
    await publish(hub.url, step("a", "build"), deployment("failed", "a", error="image push denied"), deployment("completed", "a"))
    lines = await t.lines(2)
    code, rest, err = await t.finish()
    assert code == 1 and rest == ""
    assert loads(lines[1])["type"] == "deploy.failed"
    assert t.errors[-1] == "norn: a: deploy.failed arrived before deploy.completed"


async def test_timeout_exits_5_when_unsatisfied(hub: HubServer, procs: list[Norn]) -> None:
    """--timeout: exit 5 when --count is not met in time, naming what was missing."""
    t = await tail(procs, hub.url, "--json", "--count", "2", "--timeout", "0.5")
    await publish(hub.url, step("a", "only"))
    assert loads(await t.line())["payload"]["step"] == "only"
    code, rest, _ = await t.finish()
    assert (code, rest) == (5, "")
    assert t.errors[-1] == "norn: 1 of 2 events arrived within 0.5s"


async def test_timeout_without_a_condition(hub: HubServer, procs: list[Norn]) -> None:
    """Open-ended tail with --timeout: exit 0 if any event came, 5 if none."""
    quiet = await tail(procs, hub.url, "--timeout", "0.3", "--app", "nobody")
    busy = await tail(procs, hub.url, "--timeout", "0.5", "--json")
    await publish(hub.url, step("a", "x"))
    assert (await quiet.finish())[0] == 5
    assert quiet.errors[-1] == "norn: no event arrived within 0.3s"
    code, _, _ = await busy.finish()
    assert code == 0


async def test_since_and_last_replay(hub: HubServer, procs: list[Norn]) -> None:
    """--since ID replays what followed it; --last N the last N; then live."""
    ids = await publish(hub.url, *[step("a", f"s{i}") for i in range(5)])
    since = await Norn.start("--url", hub.url, "tail", "--json", "--since", ids[2], "--count", "2")
    last = await Norn.start("--url", hub.url, "tail", "--json", "--last", "3", "--count", "3")
    procs.extend([since, last])
    assert [loads(x)["id"] for x in await since.lines(2)] == ids[3:]
    assert [loads(x)["id"] for x in await last.lines(3)] == ids[2:]


# ------------------------------------------------------------------ bulk


async def test_bulk_emit_of_10000_events_all_arrive_in_order(tmp_path: Path, procs: list[Norn]) -> None:
    """10,000 NDJSON events from a file: one connection, all delivered, in order, exactly once."""
    n = 10_000
    path = tmp_path / "events.ndjson"
    path.write_text("".join(f'{{"type":"bulk.item","appId":"bulk","payload":{{"n":{i}}}}}\n' for i in range(n)))
    async with HubServer(host="127.0.0.1", port=0, history=2 * n) as srv:
        t = await tail(procs, srv.url, "--json", "--count", str(n), "--app", "bulk")
        emit = await Norn.start("--url", srv.url, "emit", "--file", str(path))
        procs.append(emit)
        received = await t.lines(n)
        code, out, err = await emit.finish()
        assert code == 0, err
        assert srv.op_counts.get("publish", 0) < n // 100  # batched, not one request per event
        assert srv.hub.published == n
        tail_code, rest, _ = await t.finish()
    envs = [loads(line) for line in received]
    assert [e["payload"]["n"] for e in envs] == list(range(n))
    assert [e["id"] for e in envs] == out.split()
    assert (tail_code, rest) == (0, "")


# ------------------------------------------------------------------ losing the hub


async def test_resume_across_a_hub_restart_sharing_history(procs: list[Norn]) -> None:
    """Events published while tail was away arrive exactly once after the hub comes back.

    The restarted hub shares the first one's broker (as hubs sharing Redis
    do), so its history survives; the events are published into that broker
    while no hub serves the port, so tail can only get them by resuming.
    """
    broker = MemoryBroker(1000)
    hub1 = HubServer(host="127.0.0.1", port=0, broker=broker)
    await hub1.start()
    port = hub1.port
    t = await tail(procs, hub1.url, "--json", "--count", "4")
    [first] = await publish(hub1.url, step("a", "before"))
    assert loads(await t.line())["id"] == first
    await hub1.close()
    await t.stderr_until("lost the hub")
    away = await broker.publish([("deploy.step", "a", {"step": f"away{i}", "status": "running"}) for i in range(2)])
    hub2 = HubServer(host="127.0.0.1", port=port, broker=broker)
    await hub2.start()
    try:
        resumed = await t.stderr_until("reconnected")
        assert re.fullmatch(rf"norn: reconnected to ws://127\.0\.0\.1:{port} after \d+ attempts?, resuming after {first}", resumed)
        [after] = await publish(hub2.url, step("a", "after"))
        ids = [loads(line)["id"] for line in await t.lines(3)]
        code, rest, _ = await t.finish()
    finally:
        await hub2.close()
    assert ids == [away[0].id, away[1].id, after]
    assert (code, rest) == (0, "")
    assert not any("warning" in line for line in t.errors)


async def test_resume_before_any_event_loses_nothing(procs: list[Norn]) -> None:
    """A tail that had printed nothing still gets what was published while it was away."""
    broker = MemoryBroker(1000)
    hub1 = HubServer(host="127.0.0.1", port=0, broker=broker)
    await hub1.start()
    port = hub1.port
    t = await tail(procs, hub1.url, "--json", "--count", "1")
    await hub1.close()
    await t.stderr_until("lost the hub")
    [away] = await broker.publish([("deploy.step", "a", {"step": "away", "status": "running"})])
    async with HubServer(host="127.0.0.1", port=port, broker=broker):
        env = loads(await t.line())
        if env["type"] == "hub.gap":  # the resume point is only known to the second: maybe before the broker began
            env = loads(await t.line())
        assert env["id"] == away.id
        assert (await t.finish())[0] == 0


async def test_slow_consumer_drop_resumes_exactly_once(hub: HubServer, procs: list[Norn]) -> None:
    """A 1013 drop is reported, and tail resumes after the last event it printed."""
    t = await tail(procs, hub.url, "--json", "--count", "3")
    [first] = await publish(hub.url, step("a", "one"))
    assert loads(await t.line())["id"] == first
    [conn] = [c for c in hub.conns if c.member is not None]
    hub.hub.drop(conn.member, 1013, "slow consumer")  # what an overflowing queue does
    rest_ids = await publish(hub.url, step("a", "two"), step("a", "three"))
    assert await t.stderr_until("slow consumer") == (
        f"norn: lost the hub at {hub.url} (it dropped us as a slow consumer); reconnecting"
    )
    assert [loads(line)["id"] for line in await t.lines(2)] == rest_ids
    code, rest, _ = await t.finish()
    assert (code, rest) == (0, "")


async def test_gap_after_an_in_memory_restart_is_reported(procs: list[Norn]) -> None:
    """A restarted in-memory hub lost its history: a stderr warning, and the hub.gap frame in --json."""
    hub1 = HubServer(host="127.0.0.1", port=0)
    await hub1.start()
    port = hub1.port
    t = await tail(procs, hub1.url, "--json", "--count", "2")
    [first] = await publish(hub1.url, step("a", "one"))
    assert loads(await t.line())["id"] == first
    await hub1.close()
    await t.stderr_until("lost the hub")
    async with HubServer(host="127.0.0.1", port=port) as hub2:
        warning = await t.stderr_until("warning")
        assert warning == (
            f"norn: warning: events after {first} may be missing: the hub at {hub1.url} has nothing from before it "
            "reconnected us (it restarted or trimmed its history)"
        )
        gap = loads(await t.line())
        assert gap == {"type": "hub.gap", "appId": "", "payload": {"since": first, "oldest": ""}}
        [after] = await publish(hub2.url, step("a", "two"))
        assert loads(await t.line())["id"] == after
        assert (await t.finish())[0] == 0


async def test_no_reconnect_exits_3(procs: list[Norn]) -> None:
    """--no-reconnect: a lost hub is exit 3 and one sentence."""
    hub1 = HubServer(host="127.0.0.1", port=0)
    await hub1.start()
    t = await tail(procs, hub1.url, "--no-reconnect")
    await hub1.close()
    code, out, err = await t.finish()
    assert (code, out) == (3, "")
    assert t.errors[-1] == f"norn: lost the hub at {hub1.url}: it is shutting down"


@pytest.mark.parametrize("command", [["tail"], ["tail", "--json"], ["emit", "a.b", "--app", "x"]])
def test_dead_hub_is_exit_3_one_sentence(command: Sequence[str]) -> None:
    """Nothing listening: exit 3, one sentence on stderr, no traceback."""
    port = free_port()
    done = run_norn("--url", f"ws://127.0.0.1:{port}", *command)
    assert done.returncode == 3
    assert done.stdout == ""
    assert done.stderr == f"norn: cannot reach the hub at ws://127.0.0.1:{port}: connection refused\n"


@pytest.mark.parametrize("mode", [["--json"], [], ["--format", "{id}"]], ids=["json", "lines", "format"])
async def test_tail_into_head_ends_quietly(hub: HubServer, procs: list[Norn], mode: list[str]) -> None:
    """`norn tail --json | head -1` ends with exit 0 and nothing on stderr but its own notices."""
    read_end, write_end = os.pipe()
    t = await Norn.start("-v", "--url", hub.url, "tail", *mode, stdout=write_end)
    procs.append(t)
    os.close(write_end)
    head = await asyncio.create_subprocess_exec("head", "-1", stdin=read_end, stdout=asyncio.subprocess.PIPE)
    os.close(read_end)
    await t.stderr_until("subscribed")
    [first] = await publish(hub.url, step("a", "one"))
    async with asyncio.timeout(TIMEOUT):
        out, _ = await head.communicate()
    assert out.count(b"\n") == 1
    if mode == ["--json"]:
        assert loads(out)["id"] == first
    await publish(hub.url, step("a", "two"))  # tail's next write meets the closed pipe
    code, _, err = await t.finish()
    assert code == 0
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err


# ------------------------------------------------------------------ TLS with a private CA


def _make_ca_and_server_cert(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a certificate it signs for 127.0.0.1 and localhost."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "norn test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
        ), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
        ), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    ca_path, cert_path, key_path = directory / "ca.pem", directory / "hub.pem", directory / "hub.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ))  # fmt: skip
    return ca_path, cert_path, key_path


async def test_cafile_trusts_a_private_ca_for_wss(tmp_path: Path, procs: list[Norn]) -> None:
    """`norn serve --certfile/--keyfile` with a private CA: emit and tail need --cafile, and work with it."""
    pytest.importorskip("cryptography")
    ca, cert, key = _make_ca_and_server_cert(tmp_path)
    serve = await Norn.start("serve", "--port", "0", "--certfile", str(cert), "--keyfile", str(key), stdout=subprocess.DEVNULL)
    procs.append(serve)
    ready = await serve.stderr_until("listening on")
    url = ready.split("listening on ", 1)[1].split(" ", 1)[0]
    assert url.startswith("wss://127.0.0.1:")

    untrusted = await asyncio.to_thread(run_norn, "--url", url, "emit", "a.b", "--app", "x")
    assert untrusted.returncode == 3
    assert untrusted.stderr.startswith(f"norn: cannot verify the TLS certificate of the hub at {url} (")
    assert untrusted.stderr.endswith("pass --cafile CA.pem\n")
    assert untrusted.stderr.count("\n") == 1

    t = await tail(procs, url, "--json", "--count", "1", options=["--cafile", str(ca)])
    emitted = await asyncio.to_thread(run_norn, "--cafile", str(ca), "--url", url.replace("wss://", "https://"), "emit", "a.b", "--app", "x")
    assert emitted.returncode == 0, emitted.stderr
    assert loads(await t.line())["id"] == emitted.stdout.strip()
    assert (await t.finish())[0] == 0


async def test_ctrl_c_is_exit_130(hub: HubServer, procs: list[Norn]) -> None:
    """Ctrl-C ends tail with 130 and one word on stderr, no traceback."""
    import signal

    t = await tail(procs, hub.url, "--json")
    t.proc.send_signal(signal.SIGINT)
    code, out, err = await t.finish()
    assert (code, out) == (130, "")
    assert err == "norn: interrupted\n"


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_tail_ends_when_its_reader_goes_even_on_a_quiet_hub(thread_hub: ThreadHub, loop: str) -> None:
    """`norn tail --json --last 100 | head -1`: once the reader closes the pipe, tail exits 0 quietly,
    without waiting for another event to write."""
    for n in range(3):
        assert run_norn("--url", thread_hub.url, "emit", "a.b", "--app", "x", "-p", f"n={n}").returncode == 0
    env = norn_env(**({"NORN_LOOP": "asyncio"} if loop == "asyncio" else {}))
    with subprocess.Popen(norn_argv("--url", thread_hub.url, "tail", "--json", "--last", "100"),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) as proc:  # fmt: skip
        assert proc.stdout is not None and proc.stderr is not None
        assert b'"n":0' in proc.stdout.readline()
        proc.stdout.close()  # like head -1 leaving
        assert proc.wait(TIMEOUT) == 0
        assert proc.stderr.read() == b""
