"""`norn.toml`: the hub's `[serve]` settings and the apps, their steps, environment and health checks.

Settings resolve flag > environment (NORN_*) > `[serve]` > default; this
module only parses and checks, the CLI applies the order. Every key is
checked, so a typo (`helth = ...`) is refused at `norn serve` start instead
of silently ignored. Other top-level tables are left to whoever reads them.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from norn_cli.core.durations import parse_duration
from norn_cli.core.errors import ConfigError
from norn_cli.core.kinds import KINDS

__all__ = ["KINDS", "App", "Config", "Step", "find_config", "load_config", "parse_config"]

CONFIG_NAME = "norn.toml"

DEFAULT_REF = "HEAD"
_APP_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_APP_KEYS = frozenset({"workdir", "env", "health", "health_interval", "health_timeout", "ref", *KINDS})
_STEP_KEYS = frozenset({"name", "run", "timeout", "env"})
# `[serve]`: the `norn serve` options a file may set, and their TOML types.
SERVE_KEYS: dict[str, type] = {
    "host": str, "port": int, "token": str, "allowed_origins": list, "history": int,
    "queue_size": int, "fanout_threads": int, "broker": str, "redis_stream": str, "certfile": str, "keyfile": str,
    "dedupe_window": int,
    "token_file": str, "handshake_timeout": str, "max_connections": int, "max_connections_per_ip": int,
    "ui": bool, "retention": str, "fsync": str, "pin_cpu": bool,
}  # fmt: skip
FSYNC_MODES = ("normal", "always")


@dataclass(frozen=True)
class Step:
    """One step of a pipeline: a shell command run in the app's workdir."""

    name: str
    run: str
    timeout: float | None = None
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class App:
    """An app the hub can deploy, forge, tear down, restart, roll back and health-check."""

    name: str
    workdir: Path
    env: Mapping[str, str] = field(default_factory=dict)
    health: str | None = None
    health_interval: float = 10.0
    health_timeout: float = 5.0
    ref: str = DEFAULT_REF
    pipelines: Mapping[str, tuple[Step, ...]] = field(default_factory=dict)

    def steps(self, kind: str) -> tuple[Step, ...]:
        """The app's steps for `kind` (empty when it has none)."""
        return self.pipelines.get(kind, ())


@dataclass(frozen=True)
class Config:
    """The apps of one `norn.toml` (none when the hub runs without one)."""

    path: Path | None = None
    apps: Mapping[str, App] = field(default_factory=dict)
    serve: Mapping[str, Any] = field(default_factory=dict)
    """`[serve]` settings: option name -> value (paths made absolute)."""


def find_config(explicit: str | None, cwd: Path) -> Path | None:
    """The file to read: `explicit` (which must exist), else `./norn.toml` if present."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"config file {explicit} does not exist")
        return path
    default = cwd / CONFIG_NAME
    return default if default.is_file() else None


def load_config(path: Path | None) -> Config:
    """Read and check a config file; ConfigError names the file and the key or line."""
    if path is None:
        return Config()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    return parse_config(text, path=path)


def parse_config(text: str, *, path: Path) -> Config:
    """Parse `norn.toml` text; relative workdirs are taken from `path`'s folder."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    apps_doc = doc.get("apps", {})
    where = _Where(path)
    if not isinstance(apps_doc, dict):
        raise where.error("apps", "must be a table of apps, like [apps.mail-agent]")
    base = path.resolve().parent
    apps = {name: _parse_app(where, base, name, body) for name, body in apps_doc.items()}
    return Config(path=path, apps=apps, serve=_parse_serve(where, base, doc.get("serve", {})))


def _parse_serve(where: _Where, base: Path, body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise where.error("serve", "must be a table, like [serve]")
    _no_unknown(where, "serve", body, frozenset(SERVE_KEYS))
    timeout = body.get("handshake_timeout")
    if isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
        body = {**body, "handshake_timeout": str(timeout)}  # seconds, or a duration string like "10s"
    if isinstance(body.get("handshake_timeout"), str):
        try:
            parse_duration(body["handshake_timeout"])
        except ValueError as exc:
            raise where.error("serve.handshake_timeout", str(exc)) from None
    out: dict[str, Any] = {}
    for name, kind in SERVE_KEYS.items():
        value = _get(where, "serve", body, name, kind, None)
        if value is None:
            continue
        if name == "port" and (isinstance(value, bool) or not 0 <= value <= 65535):
            raise where.error("serve.port", f"must be a port number from 0 to 65535, got {value!r}")
        if kind is int and (isinstance(value, bool) or value < 0):
            raise where.error(f"serve.{name}", f"must be a whole number, 0 or more, got {value!r}")
        if name == "queue_size" and value < 1:
            raise where.error("serve.queue_size", f"must be at least 1, got {value!r}")
        if name == "dedupe_window" and value < 1:
            raise where.error("serve.dedupe_window", f"must be at least 1 (seconds), got {value!r}")
        if name == "fanout_threads" and value > 16:
            raise where.error("serve.fanout_threads", f"must be from 0 to 16, got {value!r}")
        if name == "allowed_origins" and not all(isinstance(o, str) for o in value):
            raise where.error("serve.allowed_origins", "must be an array of strings")
        if name in ("certfile", "keyfile", "token_file"):
            value = str(base / value)
        if name == "broker" and value.startswith("sqlite://"):
            path = value[len("sqlite://") :]
            if path and not Path(path).is_absolute():  # sqlite://events.db: beside this file
                value = f"sqlite://{base / path}"
        if name == "retention":
            try:
                if parse_duration(value) <= 0:
                    raise ValueError(f"{value!r} is not a duration: expected more than 0")
            except ValueError as exc:
                raise where.error("serve.retention", str(exc)) from None
        if name == "fsync" and value not in FSYNC_MODES:
            raise where.error("serve.fsync", f"must be one of {', '.join(FSYNC_MODES)}, got {value!r}")
        out[name] = value
    return out


class _Where:
    """Builds errors that name the file and the key."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.path}: {key} {problem}")


def _parse_app(where: _Where, base: Path, name: str, body: Any) -> App:
    key = f"apps.{name}"
    if not _APP_RE.match(name):
        raise where.error(key, "is not a usable app name (letters, digits, '.', '_', '-'; at most 64)")
    if not isinstance(body, dict):
        raise where.error(key, "must be a table")
    _no_unknown(where, key, body, _APP_KEYS)
    workdir = base / _get(where, key, body, "workdir", str, ".")
    env = _env(where, f"{key}.env", body.get("env", {}))
    health = _get(where, key, body, "health", str, None)
    if health is not None and not health.startswith(("http://", "https://")):
        raise where.error(f"{key}.health", f"must be an http:// or https:// URL, got {health!r}")
    interval = _positive(where, key, body, "health_interval", 10.0)
    timeout = _positive(where, key, body, "health_timeout", 5.0)
    ref = _get(where, key, body, "ref", str, DEFAULT_REF)
    pipelines = {kind: _parse_steps(where, f"{key}.{kind}", body[kind]) for kind in KINDS if kind in body}
    return App(name, workdir, env, health, interval, timeout, ref, pipelines)


def _parse_steps(where: _Where, key: str, value: Any) -> tuple[Step, ...]:
    if not isinstance(value, list):
        raise where.error(key, f"must be an array of steps, like [[{key}]]")
    steps: list[Step] = []
    seen: set[str] = set()
    for i, body in enumerate(value):
        skey = f"{key}[{i}]"
        if not isinstance(body, dict):
            raise where.error(skey, "must be a table with name and run")
        _no_unknown(where, skey, body, _STEP_KEYS)
        if "run" not in body:
            raise where.error(skey, "has no 'run' (the shell command of the step)")
        run = _get(where, skey, body, "run", str, "")
        if not run.strip():
            raise where.error(f"{skey}.run", "is empty")
        name = _get(where, skey, body, "name", str, f"step-{i + 1}")
        if not name.strip() or name in seen:
            raise where.error(f"{skey}.name", f"{name!r} is empty or names another step too")
        seen.add(name)
        timeout = _positive(where, skey, body, "timeout", None)
        steps.append(Step(name, run, timeout, _env(where, f"{skey}.env", body.get("env", {}))))
    return tuple(steps)


def _no_unknown(where: _Where, key: str, body: dict[str, Any], known: frozenset[str]) -> None:
    for name in body:
        if name not in known:
            raise where.error(f"{key}.{name}", f"is not a known key (known: {', '.join(sorted(known))})")


def _get(where: _Where, key: str, body: dict[str, Any], name: str, kind: type, default: Any) -> Any:
    if name not in body:
        return default
    value = body[name]
    if not isinstance(value, kind):
        raise where.error(f"{key}.{name}", f"must be {_TOML_NAMES[kind]}, got {_toml_kind(value)}")
    return value


def _positive(where: _Where, key: str, body: dict[str, Any], name: str, default: float | None) -> Any:
    if name not in body:
        return default
    value = body[name]
    try:
        seconds = parse_duration(value) if isinstance(value, (str, int, float)) else -1.0
    except ValueError:
        seconds = -1.0
    if seconds <= 0:
        raise where.error(
            f"{key}.{name}", f"must be a positive duration (\"10s\", \"2m\", \"1h30m\", or seconds), got {value!r}"
        )
    return seconds


def _env(where: _Where, key: str, value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise where.error(key, f"must be a table like {{ NAME = \"value\" }}, got {_toml_kind(value)}")
    out: dict[str, str] = {}
    for name, v in value.items():
        if not _ENV_RE.match(name):
            raise where.error(f"{key}.{name}", "is not a valid environment variable name")
        if isinstance(v, bool) or not isinstance(v, (str, int, float)):
            raise where.error(f"{key}.{name}", f"must be a string or a number, got {_toml_kind(v)}")
        out[name] = str(v)
    return out


_TOML_NAMES = {str: "a string", int: "an integer", float: "a number", list: "an array", dict: "a table", bool: "a boolean"}


def _toml_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    return _TOML_NAMES.get(type(value)) or f"a {type(value).__name__}"
