"""`norn serve` as a user runs it: a real subprocess, its startup line, signals, TLS, errors."""

from __future__ import annotations

import asyncio
import datetime
import json
import re
import signal
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from conftest import TIMEOUT, norn_argv, norn_env, run_norn


class Served:
    """A `norn serve` subprocess whose stderr we read line by line."""

    def __init__(self, *args: str, cwd: Path | None = None, **env: str) -> None:
        self.proc = subprocess.Popen(
            norn_argv(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=norn_env(**env), cwd=cwd
        )
        assert self.proc.stderr is not None
        self.banner = self.proc.stderr.readline().strip()
        if "listening on" not in self.banner:
            self.proc.kill()
            raise AssertionError(f"no startup line: {self.banner!r} {self.proc.stderr.read()}")
        self.url = self.banner.split("listening on ", 1)[1].split(" ", 1)[0]
        self.port = int(self.url.rsplit(":", 1)[1])

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        _, err = self.proc.communicate(timeout=TIMEOUT)
        return self.proc.returncode, err


@pytest.fixture
def served() -> Iterator[Served]:
    s = Served("-v", "serve", "--port", "0")
    try:
        yield s
    finally:
        s.stop(signal.SIGKILL)


def test_startup_line_says_where_and_how(served: Served) -> None:
    """One line on stderr names the URL, both endpoints and the broker."""
    url = served.url  # read from the banner itself, so checked on its own
    assert re.fullmatch(r"ws://127\.0\.0\.1:[1-9][0-9]*", url), url
    assert served.banner == (
        f"norn hub listening on {url} (subscribe: {url}/ws, publish: {url}/api, broker: memory); Ctrl-C to stop"
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_closes_clients_with_1001_and_exits_0(served: Served, sig: int) -> None:
    """SIGTERM or SIGINT closes every client with 1001 (going away) and exits 0; -v logs the connection."""

    async def scenario() -> int:
        async with connect(f"ws://127.0.0.1:{served.port}/ws") as sub:
            await sub.ping()
            served.proc.send_signal(sig)
            with pytest.raises(ConnectionClosed) as info:
                async with asyncio.timeout(TIMEOUT):
                    await sub.recv()
            assert info.value.rcvd is not None
            return info.value.rcvd.code

    assert asyncio.run(scenario()) == 1001
    _, err = served.proc.communicate(timeout=TIMEOUT)
    assert served.proc.returncode == 0
    assert "subscriber 127.0.0.1:" in err and "connected (all events)" in err
    assert "Traceback" not in err


def _loops() -> list[str]:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return ["asyncio"]
    return ["uvloop", "asyncio"]


@pytest.mark.parametrize("loop", _loops())
@pytest.mark.parametrize("threads", ["0", "2"])
def test_every_subscriber_of_a_big_group_gets_every_event(loop: str, threads: str) -> None:
    """24 subscribers (a group big enough for the parallel fan-out) each get 600 events in order,
    with and without fan-out threads, on each event loop `norn serve` can use."""
    env = {"NORN_LOOP": loop} if loop == "asyncio" else {}
    served = Served("serve", "--port", "0", "--fanout-threads", threads, **env)
    total = 600

    async def scenario() -> list[list[int]]:
        subs = [await connect(f"ws://127.0.0.1:{served.port}/ws").__aenter__() for _ in range(24)]
        try:
            async def drain(sub: ClientConnection) -> list[int]:
                return [json.loads(await sub.recv())["payload"]["n"] for _ in range(total)]

            async with asyncio.timeout(TIMEOUT):
                readers = [asyncio.create_task(drain(s)) for s in subs]
                async with connect(f"ws://127.0.0.1:{served.port}/api") as api:
                    for start in range(0, total, 5):
                        batch = [{"type": "x.y", "appId": "a", "payload": {"n": n}} for n in range(start, start + 5)]
                        await api.send(json.dumps({"op": "publish", "events": batch}))
                        assert json.loads(await api.recv())["ok"] is True
                return await asyncio.gather(*readers)
        finally:
            await asyncio.gather(*[s.close() for s in subs])

    try:
        assert asyncio.run(scenario()) == [list(range(total))] * 24
    finally:
        code, err = served.stop()
    assert code == 0 and "Traceback" not in err


def test_fanout_threads_out_of_range_is_a_usage_error() -> None:
    result = run_norn("serve", "--fanout-threads", "17")
    assert result.returncode == 2
    assert "Invalid value for '--fanout-threads': 17 is not in the range 0<=x<=16." in result.stderr


def test_public_bind_without_token_is_refused() -> None:
    """Binding a non-loopback address with no token exits 2 with one sentence saying why."""
    result = run_norn("serve", "--host", "0.0.0.0", "--port", "0")
    assert result.returncode == 2
    assert result.stderr == (
        "norn: refusing to serve /api on non-loopback address 0.0.0.0 without a token; "
        "set --token or NORN_TOKEN, or bind 127.0.0.1\n"
    )


def test_port_in_use_is_one_sentence(served: Served) -> None:
    """A busy port is reported plainly, not as a traceback."""
    result = run_norn("serve", "--port", str(served.port))
    assert result.returncode == 2
    assert result.stderr.startswith(f"norn: cannot listen on 127.0.0.1:{served.port}: ")
    assert result.stderr.count("\n") == 1


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    certfile, keyfile = tmp / "cert.pem", tmp / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return certfile, keyfile


def test_tls_serves_wss(tmp_path: Path) -> None:
    """--certfile/--keyfile serve wss:// that a client trusting the CA can use, and a
    group big enough for the parallel fan-out gets every event intact (never raw bytes)."""
    certfile, keyfile = _self_signed(tmp_path)
    s = Served("serve", "--port", "0", "--certfile", str(certfile), "--keyfile", str(keyfile), "--fanout-threads", "1")
    try:
        assert s.url.startswith("wss://")

        async def scenario() -> tuple[str, list[list[int]]]:
            ctx = ssl.create_default_context(cafile=str(certfile))
            subs = [await connect(f"wss://localhost:{s.port}/ws", ssl=ctx).__aenter__() for _ in range(20)]
            try:
                async with connect(f"wss://localhost:{s.port}/api", ssl=ctx) as api, asyncio.timeout(TIMEOUT):
                    await api.send('{"op":"status"}')
                    status = str(await api.recv())
                    for n in range(50):
                        await api.send(json.dumps({"op": "publish", "event": {"type": "x.y", "appId": "a", "payload": {"n": n}}}))
                        assert json.loads(await api.recv())["ok"] is True
                    got = [[json.loads(await sub.recv())["payload"]["n"] for _ in range(50)] for sub in subs]
                return status, got
            finally:
                await asyncio.gather(*[sub.close() for sub in subs])

        status, got = asyncio.run(scenario())
        assert '"ok":true' in status
        assert got == [list(range(50))] * 20
    finally:
        assert s.stop()[0] == 0


def test_bad_certificate_is_one_sentence(tmp_path: Path) -> None:
    """An unreadable certificate is reported with its path, exit 2."""
    bogus = tmp_path / "bogus.pem"
    bogus.write_text("not a certificate")
    result = run_norn("serve", "--port", "0", "--certfile", str(bogus))
    assert result.returncode == 2
    assert result.stderr.startswith(f"norn: cannot load the TLS certificate {bogus}: ")
    assert "Traceback" not in result.stderr


def _origin_allowed(port: int, origin: str) -> bool:
    async def attempt() -> bool:
        try:
            async with connect(f"ws://127.0.0.1:{port}/ws", origin=origin, open_timeout=TIMEOUT):
                return True
        except InvalidStatus as exc:
            assert exc.response.status_code == 403
            return False

    return asyncio.run(attempt())


def test_serve_table_in_norn_toml_fills_unset_options(tmp_path: Path) -> None:
    """[serve] in norn.toml sets options no flag or NORN_* variable set; the environment wins over it."""
    (tmp_path / "norn.toml").write_text('[serve]\nport = 0\nallowed_origins = ["https://ui.example"]\n')
    from_file = Served("serve", cwd=tmp_path)
    try:
        assert _origin_allowed(from_file.port, "https://ui.example")
    finally:
        assert from_file.stop()[0] == 0
    from_env = Served("serve", cwd=tmp_path, NORN_ALLOWED_ORIGINS="https://other.example")
    try:
        assert not _origin_allowed(from_env.port, "https://ui.example")
        assert _origin_allowed(from_env.port, "https://other.example")
    finally:
        assert from_env.stop()[0] == 0


def test_bad_serve_table_is_one_sentence(tmp_path: Path) -> None:
    """A wrong [serve] value stops `norn serve` with the file and the key, exit 2."""
    (tmp_path / "norn.toml").write_text('[serve]\nport = "eighty"\n')
    result = run_norn("serve", "--config", str(tmp_path / "norn.toml"))
    assert (result.returncode, result.stderr) == (2, f"norn: {tmp_path / 'norn.toml'}: serve.port must be an integer, got a string\n")
