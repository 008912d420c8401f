"""Durations as people type them, and token files (with the warning for ones others can read)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from norn_cli.core.durations import parse_duration
from norn_cli.core.errors import ConfigError
from norn_cli.core.secrets import read_token_file


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10s", 10), ("2m", 120), ("1h30m", 5400), ("250ms", 0.25), ("1.5", 1.5), ("0", 0), (" 3S ", 3), ("1m30s", 90)],
)
def test_durations_parse(text: str, seconds: float) -> None:
    """Each spelling gives its number of seconds."""
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "10x", "-1", "nan", "inf", "m5", "10s10"])
def test_bad_durations_are_refused(text: str) -> None:
    """Anything else is a ValueError, not a guess."""
    with pytest.raises(ValueError):
        parse_duration(text)


def test_token_file_private_and_shared(tmp_path: Path) -> None:
    """The first line is the token; group- or world-readable files come with a warning."""
    path = tmp_path / "token"
    path.write_text("s3cret\n")
    os.chmod(path, 0o600)
    assert read_token_file(str(path)) == ("s3cret", None)
    os.chmod(path, 0o644)
    token, warning = read_token_file(str(path))
    assert token == "s3cret" and warning is not None and "readable by other users" in warning


def test_token_file_missing_or_empty(tmp_path: Path) -> None:
    """A missing or empty file is a ConfigError (exit 2), never an empty token."""
    with pytest.raises(ConfigError, match="cannot read"):
        read_token_file(str(tmp_path / "nope"))
    (tmp_path / "empty").write_text("\n\n")
    with pytest.raises(ConfigError, match="empty"):
        read_token_file(str(tmp_path / "empty"))
