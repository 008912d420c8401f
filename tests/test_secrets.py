"""core.secrets: a token file is read as written, minus one newline, with a warning when others can read it."""

from __future__ import annotations

from pathlib import Path

import pytest

from norn_cli.core.errors import ConfigError
from norn_cli.core.secrets import read_token_file


def write(tmp_path: Path, data: bytes, mode: int = 0o600) -> str:
    path = tmp_path / "token"
    path.write_bytes(data)
    path.chmod(mode)
    return str(path)


@pytest.mark.parametrize(("data", "token"), [(b"s3cret\n", "s3cret"), (b"s3cret", "s3cret"), (b"s3cret\r\n", "s3cret"), (b" a b \n", " a b ")])
def test_one_trailing_newline_is_stripped(tmp_path: Path, data: bytes, token: str) -> None:
    """Only the line ending goes; the rest is the token, spaces included."""
    assert read_token_file(write(tmp_path, data)) == (token, None)


def test_group_or_other_readable_warns(tmp_path: Path) -> None:
    """Mode 0644 works but says how to fix it."""
    path = write(tmp_path, b"s3cret\n", 0o644)
    assert read_token_file(path) == ("s3cret", f"the token file {path} is readable by other users; chmod 600 {path}")


@pytest.mark.parametrize(
    ("data", "problem"),
    [(b"\n", "is empty"), (b"", "is empty"), (b"a\nb\n", "has more than one line"), (b"\xff\n", "is not UTF-8 text")],
)
def test_bad_files_are_refused(tmp_path: Path, data: bytes, problem: str) -> None:
    """An empty, multi-line or binary file is a ConfigError naming the file."""
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        read_token_file(path)
    assert info.value.message.startswith(f"the token file {path} {problem}")


def test_missing_file(tmp_path: Path) -> None:
    """A file that is not there: exit 2 and the reason."""
    with pytest.raises(ConfigError) as info:
        read_token_file(str(tmp_path / "nope"))
    assert info.value.message == f"cannot read the token file {tmp_path / 'nope'}: No such file or directory"
    assert int(info.value.exit_code) == 2
