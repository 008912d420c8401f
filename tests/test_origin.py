"""The seed's origin policy, row by row, as a pure function."""

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
        ("", False),
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


def test_parse_origins_merges_flags_and_env_list() -> None:
    """Repeatable flags and comma-separated env values merge, trailing slashes dropped."""
    assert parse_origins(["https://a.example", "https://b.example/, https://c.example", ""]) == {
        "https://a.example",
        "https://b.example",
        "https://c.example",
    }
