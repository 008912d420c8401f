"""`norn serve` with the hardening options: --token-file (and its warning), limits from flags, env and norn.toml."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from conftest import TIMEOUT, norn_argv, norn_env, run_norn
from helpers import http_get
from test_drills import Hub


async def test_token_file_is_required_on_api_and_a_shared_file_warns(tmp_path: Path) -> None:
    """The file's token guards /api; a world-readable file gets one warning line at startup."""
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    os.chmod(token, 0o644)
    h = Hub("serve", "--port", "0", "--token-file", str(token))
    try:
        assert h.log[0] == f"norn: warning: the token file {token} is readable by other users; chmod 600 {token}\n"
        with pytest.raises(InvalidStatus) as refused:
            await connect(f"ws://127.0.0.1:{h.port}/api", open_timeout=TIMEOUT).__aenter__()
        assert refused.value.response.status_code == 401
        async with connect(f"ws://127.0.0.1:{h.port}/api", open_timeout=TIMEOUT,
                           additional_headers={"Authorization": "Bearer s3cret"}):  # fmt: skip
            pass
    finally:
        h.stop()


def test_token_and_token_file_together_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "t").write_text("x")
    result = run_norn("serve", "--port", "0", "--token", "a", "--token-file", str(tmp_path / "t"))
    assert result.returncode == 2 and "give --token (or NORN_TOKEN) or --token-file, not both" in result.stderr


def test_missing_token_file_is_one_line_exit_2(tmp_path: Path) -> None:
    result = run_norn("serve", "--port", "0", "--token-file", str(tmp_path / "nope"))
    assert result.returncode == 2
    assert result.stderr == f"norn: cannot read the token file {tmp_path / 'nope'}: No such file or directory\n"


async def test_limits_from_norn_toml_and_environment(tmp_path: Path) -> None:
    """[serve] handshake_timeout and max_connections, NORN_MAX_CONNECTIONS_PER_IP: all in /metrics."""
    (tmp_path / "norn.toml").write_text('[serve]\nhandshake_timeout = "1500ms"\nmax_connections = 7\n')
    proc = subprocess.Popen(
        norn_argv("serve", "--port", "0"), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env=norn_env(NORN_MAX_CONNECTIONS_PER_IP="3"),
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        banner = proc.stderr.readline()
        port = int(banner.split("listening on ", 1)[1].split(" ", 1)[0].rsplit(":", 1)[1])
        _, _, body = await http_get(port, "/metrics")
        text = body.decode()
        assert "norn_max_connections 7\n" in text and "norn_max_connections_per_ip 3\n" in text
        idle = await asyncio.open_connection("127.0.0.1", port)
        async with asyncio.timeout(TIMEOUT):
            assert await idle[0].read() == b""  # closed at the 1.5 s deadline
        idle[1].close()
    finally:
        proc.terminate()
        proc.communicate(timeout=TIMEOUT)


def test_bad_handshake_timeout_is_a_usage_error(tmp_path: Path) -> None:
    result = run_norn("serve", "--handshake-timeout", "soon")
    assert result.returncode == 2 and "'soon' is not a duration" in result.stderr
    (tmp_path / "norn.toml").write_text('[serve]\nhandshake_timeout = "soon"\n')
    result = subprocess.run(norn_argv("serve"), cwd=tmp_path, capture_output=True, text=True, env=norn_env(), timeout=TIMEOUT)
    assert result.returncode == 2 and "serve.handshake_timeout" in result.stderr
