"""Secrets kept off the command line: a token read from a file, and a warning when others can read it."""

from __future__ import annotations

import os
import stat

from norn_cli.core.errors import ConfigError

__all__ = ["read_token_file"]


def read_token_file(path: str) -> tuple[str, str | None]:
    """The token in `path` (its first line, stripped) and a warning sentence when the
    file is readable by its group or others; ConfigError when it cannot be read or is empty."""
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            raw = f.read(64 * 1024)
    except OSError as exc:
        raise ConfigError(f"cannot read the token file {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"the token file {path} is not UTF-8 text") from None
    lines = text.strip().splitlines()
    token = lines[0].strip() if lines else ""
    if not token:
        raise ConfigError(f"the token file {path} is empty")
    warning = None
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        warning = f"the token file {path} is readable by others (mode {stat.S_IMODE(mode):o}); chmod 600 it"
    return token, warning
