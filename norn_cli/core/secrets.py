"""Secrets kept in files: reading a token file the way `--token-file` (client and hub) promises."""

from __future__ import annotations

import os
import stat

from norn_cli.core.errors import ConfigError

__all__ = ["read_token_file"]


def read_token_file(path: str) -> tuple[str, str | None]:
    """The token in `path` (one trailing newline stripped) and a warning sentence when others may read the file.

    Raises ConfigError (exit 2) when the file cannot be read or holds no token.
    """
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            raw = f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read the token file {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"the token file {path} is not UTF-8 text") from None
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    if not text.strip():
        raise ConfigError(f"the token file {path} is empty")
    if "\n" in text:
        raise ConfigError(f"the token file {path} has more than one line; it should hold the token alone")
    warning = None
    if stat.S_ISREG(mode) and mode & (stat.S_IRGRP | stat.S_IROTH):
        warning = f"the token file {path} is readable by other users; chmod 600 {path}"
    return text, warning
