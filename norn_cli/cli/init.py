"""`norn init`: write a commented norn.toml for the current folder."""

from __future__ import annotations

import os
import sys

import click

from norn_cli.cli.common import NornCommand, fail, stderr, with_global_options
from norn_cli.core.errors import ExitCode

__all__ = ["INIT_TOML", "init"]

INIT_TOML = """\
# norn.toml: what `norn serve` reads from this folder (or: norn serve --config PATH).
# Every key is optional; flags and NORN_* environment variables win over this file.
# Durations take "10s", "2m", "1h30m" or bare seconds. More: docs/pipelines.md.

[serve]
# host = "127.0.0.1"              # a non-loopback address needs a token
# port = 8800                     # 0: any free port
# token_file = "norn.token"       # the bearer token for /api, out of `ps`
# allowed_origins = []            # browser origins besides localhost
# history = 10000                 # events kept for `tail --since/--last`
# queue_size = 64                 # events per subscriber before a slow one is dropped (1013)
# handshake_timeout = "10s"
# broker = "memory"               # or redis://HOST:PORT/DB for several hubs

# One app: `norn deploy {app}` runs its deploy steps in order, in this folder.
[apps.{app}]
env = {{ PORT = "8080" }}           # added to each step's environment (with NORN_REF, NORN_RUN_ID)
health = "http://127.0.0.1:8080/healthz"   # polled by the hub; app.status events
health_interval = "10s"
# ref = "main"                    # the ref when `norn deploy {app}` names none

[[apps.{app}.deploy]]
name = "build"
run = "echo building $NORN_REF"   # a shell command; its output streams to `norn deploy`

[[apps.{app}.deploy]]
name = "test"
run = "echo testing"
timeout = "5m"

[[apps.{app}.deploy]]
name = "release"
run = "echo released $NORN_REF"

# forge, teardown, restart and rollback steps are tables like deploy:
# [[apps.{app}.forge]]
"""


def _app_name(folder: str) -> str:
    """The folder's name as an app name (letters, digits, . _ -), or `my-app`."""
    name = "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in folder).strip("-._")
    return name[:64] if name and name[0].isalnum() else "my-app"


@with_global_options("verbose", "no_color")
@click.command(cls=NornCommand, exit_codes={0: "norn.toml was written", 1: "norn.toml exists already (left as it is) or cannot be written"})
@click.option("--app", metavar="NAME", help="The example app's name [default: the folder's name].")
def init(app: str | None) -> None:
    """Write a commented norn.toml in the current folder: [serve] defaults and one example app.

    An existing norn.toml is never overwritten.

    \b
    Example:
      norn init && norn serve          # then: norn deploy <the folder's name>
    """
    name = app or _app_name(os.path.basename(os.getcwd()))
    path = "norn.toml"
    try:
        with open(path, "x", encoding="utf-8") as out:
            out.write(INIT_TOML.format(app=name))
    except FileExistsError:
        fail(f"{os.path.abspath(path)} exists already; left as it is (remove it, or edit it)", int(ExitCode.FAILED))
    except OSError as exc:
        fail(f"cannot write {os.path.abspath(path)}: {exc.strerror or exc}", int(ExitCode.FAILED))
    stderr(f"norn: wrote {os.path.abspath(path)} with app {name}; try: norn serve, then norn deploy {name}")
    sys.exit(int(ExitCode.OK))
