"""The dashboard over plain HTTP: its files, headers and caching, `--no-ui`, and what a wheel ships."""

from __future__ import annotations

import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT, TIMEOUT, run_norn
from helpers import http_get

from norn_cli.hub import ui
from norn_cli.hub.server import HubServer

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self' ws://127.0.0.1:{port} wss://127.0.0.1:{port}; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)


def test_pure_answers() -> None:
    """`/` is the page, `/ui/NAME` its files, other /ui/ names 404, every other path is not the dashboard's."""
    page = ui.respond("/", host="127.0.0.1:8800")
    assert page is not None and (page.status, dict(page.headers)["Content-Type"]) == (200, "text/html; charset=utf-8")
    for name, ctype in ui.ASSETS.items():
        answer = ui.respond(ui.PREFIX + name)
        assert answer is not None and answer.status == 200 and dict(answer.headers)["Content-Type"] == ctype
    assert ui.respond("/ui/secret.py") is not None and ui.respond("/ui/secret.py").status == 404  # type: ignore[union-attr]
    assert ui.respond("/ui/../__init__.py").status == 404  # type: ignore[union-attr]
    for other in ("/ws", "/api", "/healthz", "/index.html", "/ui", ""):
        assert ui.respond(other) is None


def test_policy_names_the_hub_only() -> None:
    """The CSP allows this hub's ws:/wss: address beside 'self'; a malformed Host adds nothing."""
    assert ui.content_security_policy("127.0.0.1:8800", tls=False) == CSP.format(port=8800)
    assert "connect-src 'self' wss://[::1]:9000;" in ui.content_security_policy("[::1]:9000", tls=True)
    for bad in (None, "", "a b", "evil.io; script-src *", "h:1:2", "x/y"):
        assert "connect-src 'self';" in ui.content_security_policy(bad, tls=False)


def test_page_and_files_fit_the_budget() -> None:
    """HTML, CSS and JS (and the icon) together stay under 100 KB, and the page links each file by version."""
    assert ui.total_size() < 100 * 1024
    page = ui.respond("/")
    assert page is not None
    html = page.body.decode()
    for name in ui.ASSETS:
        version = dict(ui.respond(ui.PREFIX + name).headers)["ETag"].strip('"')  # type: ignore[union-attr]
        assert f'"{ui.PREFIX}{name}?v={version}"' in html
    assert "<script>" not in html and "style=" not in html and "http" not in html.replace("http-equiv", "")


def test_caching() -> None:
    """Files revalidate by ETag (304); a file asked for by its current version may be kept for good."""
    first = ui.respond("/ui/app.js")
    assert first is not None
    headers = dict(first.headers)
    assert headers["Cache-Control"] == "no-cache"
    etag = headers["ETag"]
    again = ui.respond("/ui/app.js", if_none_match=f'W/{etag}, "other"')
    assert again is not None and (again.status, again.body) == (304, b"")
    assert "Content-Length" not in dict(again.headers)
    versioned = ui.respond("/ui/app.js", f"v={etag.strip(chr(34))}")
    assert versioned is not None and dict(versioned.headers)["Cache-Control"] == "public, max-age=31536000, immutable"
    stale = ui.respond("/ui/app.js", "v=0123456789abcdef")
    assert stale is not None and dict(stale.headers)["Cache-Control"] == "no-cache"
    assert ui.respond("/", if_none_match="*").status == 304  # type: ignore[union-attr]


async def test_hub_serves_the_page(hub: HubServer) -> None:
    """GET / on a hub: the page with its policy and headers; a file; 404 for unknown files."""
    status, headers, body = await http_get(hub.port, "/")
    assert (status, headers["content-type"]) == (200, "text/html; charset=utf-8")
    assert headers["content-security-policy"] == CSP.format(port=hub.port)
    assert headers["x-content-type-options"] == "nosniff" and headers["x-frame-options"] == "DENY"
    assert headers["connection"] == "close" and int(headers["content-length"]) == len(body)
    assert b'<div id="events"' in body
    status, headers, body = await http_get(hub.port, "/ui/app.css?v=whatever")
    assert (status, headers["content-type"], headers["cache-control"]) == (200, "text/css; charset=utf-8", "no-cache")
    status, _, _ = await http_get(hub.port, "/ui/app.css", {"If-None-Match": headers["etag"]})
    assert status == 304
    assert (await http_get(hub.port, "/ui/nope.js"))[0] == 404
    assert (await http_get(hub.port, "/?app=web&type=deploy.*"))[0] == 200  # the page keeps its filters in the query


async def test_no_ui_is_404() -> None:
    """With ui=False the hub answers / and /ui/ files 404, as for any unknown path."""
    async with HubServer(port=0, ui=False) as srv:
        for path in ("/", "/ui/app.js"):
            status, _, body = await http_get(srv.port, path)
            assert status == 404 and body.startswith(b"no such endpoint")


@pytest.mark.parametrize(
    ("args", "env", "toml", "on"),
    [
        ((), {}, "", True),
        (("--no-ui",), {}, "", False),
        ((), {"NORN_UI": "0"}, "", False),
        ((), {}, "[serve]\nui = false\n", False),
        (("--ui",), {}, "[serve]\nui = false\n", True),  # a flag wins over the file
    ],
)
def test_serve_ui_setting(tmp_path: Path, args: tuple[str, ...], env: dict[str, str], toml: str, on: bool) -> None:
    """`--ui/--no-ui`, NORN_UI and `[serve] ui` turn the dashboard on and off; its address is the startup's last line."""
    from test_serve_cli import Served

    if toml:
        (tmp_path / "norn.toml").write_text(toml)
    served = Served("serve", "--port", "0", *args, cwd=tmp_path, **env)
    assert served.proc.stderr is not None
    served.proc.send_signal(signal.SIGTERM)
    rest = served.proc.stderr.read()  # through the reader that may hold the next line already
    served.proc.communicate(timeout=TIMEOUT)  # and close the pipes
    assert served.proc.returncode == 0
    assert (rest.splitlines()[-1:] == [f"dashboard: http://127.0.0.1:{served.port}/"]) is on


def test_serve_no_ui_answers_404(tmp_path: Path) -> None:
    """A `norn serve --no-ui` answers GET / with 404; without the flag, the page."""
    import asyncio

    from test_serve_cli import Served

    for args, status in ((("--no-ui",), 404), ((), 200)):
        served = Served("serve", "--port", "0", *args, cwd=tmp_path)
        try:
            assert asyncio.run(http_get(served.port, "/"))[0] == status
        finally:
            served.stop()


def test_bad_ui_value_in_norn_toml(tmp_path: Path) -> None:
    """`[serve] ui` must be a boolean, said with the file and the key."""
    (tmp_path / "norn.toml").write_text('[serve]\nui = "yes"\n')
    result = run_norn("serve", "--config", str(tmp_path / "norn.toml"))
    assert (result.returncode, result.stderr) == (
        2, f"norn: {tmp_path / 'norn.toml'}: serve.ui must be a boolean, got a string\n",
    )  # fmt: skip


def test_wheel_ships_the_files(tmp_path: Path) -> None:
    """A non-editable build (`pip install .`) carries index.html, the CSS, the JS and the icon."""
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=TIMEOUT * 6,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    [wheel] = tmp_path.glob("norn_cli-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("index.html", *ui.ASSETS):
        assert f"norn_cli/hub/ui/{name}" in names
