"""The seed's origin policy and the same-origin rule, row by row, as a pure function."""

from __future__ import annotations

import pytest

from norn_cli.core.origin import origin_allowed, parse_origins

ALLOWED = frozenset({"https://norn.example.com"})


@pytest.mark.parametrize(
    ("origin", "ok"),
    [
        (None, True),  # 1. absent: CLI, curl, scripts
        ("https://norn.example.com", True),  # 2. configured
        ("http://localhost", True),  # 3. loopback hosts, any port or scheme
        ("http://localhost:5173", True),
        ("https://127.0.0.1:8800", True),
        ("http://[::1]:3000", True),
        ("https://evil.example.com", False),  # 4. anything else
        ("https://norn.example.com.evil.io", False),
        ("http://norn.example.com", False),  # configured is exact: scheme matters
        ("https://localhost.evil.io", False),
        ("null", False),  # sandboxed iframes, file:// pages
        ("", True),  # present but empty counts as absent, as in the seed's Go
        ("localhost", False),  # malformed: no scheme
        ("http://", False),
        ("http://localhost:notaport", False),
        ("file://localhost", False),
        ("http://user@localhost", False),
        ("http://localhost/path", False),
    ],
)
def test_origin_rows(origin: str | None, ok: bool) -> None:
    """Each origin gets exactly the seed's verdict."""
    assert origin_allowed(origin, ALLOWED) is ok


HOST = "norn.example.com:8800"


@pytest.mark.parametrize(
    ("origin", "host", "tls", "ok"),
    [
        ("http://norn.example.com:8800", HOST, False, True),  # the page this hub served
        ("https://norn.example.com:8800", HOST, True, True),  # ... over TLS (wss://)
        ("https://norn.example.com:8800", HOST, False, False),  # a plain hub's pages are http
        ("http://norn.example.com:8800", HOST, True, False),  # a TLS hub's pages are https
        ("http://NORN.Example.com:8800", "norn.example.COM:8800", False, True),  # host case does not matter
        ("http://dash.example.org", "dash.example.org:80", False, True),  # default ports are elided
        ("http://dash.example.org:80", "dash.example.org", False, True),
        ("https://dash.example.org", "dash.example.org:443", True, True),
        ("https://dash.example.org", "dash.example.org", True, True),
        ("http://dash.example.org", "dash.example.org:443", False, False),  # http's default is 80
        ("https://dash.example.org", "dash.example.org:80", True, False),
        ("http://norn.example.com", HOST, False, False),  # port 80 is not 8800
        ("http://norn.example.com:8801", HOST, False, False),
        ("http://other.example.com:8800", HOST, False, False),
        ("http://norn.example.com.:8800", HOST, False, False),  # a trailing dot is another name
        ("http://norn.example.com.evil.io:8800", HOST, False, False),
        ("http://10.0.0.5:8800", "10.0.0.5:8800", False, True),
        ("http://[2001:db8::1]:8800", "[2001:db8::1]:8800", False, True),  # IPv6
        ("http://[2001:DB8::1]:8800", "[2001:db8:0:0:0:0:0:1]:8800", False, True),  # one address, two spellings
        ("https://[2001:db8::1]", "[2001:db8::1]:443", True, True),
        ("http://[2001:db8::2]:8800", "[2001:db8::1]:8800", False, False),
        ("http://norn.example.com:8800", None, False, False),  # no Host: no same-origin rule
        ("http://norn.example.com:8800", "", False, False),
        ("http://norn.example.com:8800", "norn.example.com:8800, evil.io", False, False),  # malformed Host
        ("http://norn.example.com:8800", "norn example.com:8800", False, False),
        ("http://norn.example.com:8800", "user@norn.example.com:8800", False, False),
        ("http://norn.example.com:8800", "norn.example.com:99999", False, False),
        ("http://norn.example.com:8800", "[2001:db8::zz]:8800", False, False),
        ("http://user@norn.example.com:8800", HOST, False, False),  # malformed origins stay refused
        ("http://norn.example.com:8800/path", HOST, False, False),
        ("ftp://norn.example.com:8800", HOST, False, False),
        ("null", HOST, False, False),
        ("", HOST, False, True),  # empty: absent
        ("https://norn.example.com", HOST, False, True),  # configured: allowed whatever the Host
        ("http://localhost:5173", HOST, False, True),  # loopback: allowed whatever the Host
    ],
)
def test_same_origin_rows(origin: str, host: str | None, tls: bool, ok: bool) -> None:
    """An origin equal to the request's own Host, under the hub's scheme, is allowed; nothing else changes."""
    assert origin_allowed(origin, ALLOWED, host=host, tls=tls) is ok


def test_parse_origins_merges_flags_and_env_list() -> None:
    """Repeatable flags and comma-separated env values merge, trailing slashes dropped."""
    assert parse_origins(["https://a.example", "https://b.example/, https://c.example", ""]) == {
        "https://a.example",
        "https://b.example",
        "https://c.example",
    }
