"""norn.toml: apps and steps parsed with their defaults; bad files refused naming the file and key."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_norn

from norn_cli.core.config import find_config, load_config, parse_config
from norn_cli.core.errors import ConfigError, ExitCode

GOOD = """
[hub]  # other settings may live beside the apps
port = 8800

[apps.mail-agent]
workdir = "services/mail-agent"
env = { IMAGE = "mail-agent", PORT = 8080 }
health = "http://127.0.0.1:8080/healthz"
health_interval = 10
health_timeout = "1.5s"

[[apps.mail-agent.deploy]]
name = "build"
run = "docker build -t $IMAGE:$NORN_REF ."
timeout = "10m"

[[apps.mail-agent.deploy]]
name = "test"
run = "pytest -q"

[apps.bare]
[[apps.bare.forge]]
run = "make"
"""


def test_good_config(tmp_path: Path) -> None:
    """Steps keep their order; workdir is relative to the file; defaults fill the rest."""
    config = parse_config(GOOD, path=tmp_path / "norn.toml")
    app = config.apps["mail-agent"]
    assert app.workdir == tmp_path.resolve() / "services/mail-agent"
    assert app.env == {"IMAGE": "mail-agent", "PORT": "8080"}
    assert (app.health, app.health_interval, app.health_timeout, app.ref) == (
        "http://127.0.0.1:8080/healthz", 10.0, 1.5, "HEAD",
    )  # fmt: skip
    assert [(s.name, s.run, s.timeout) for s in app.steps("deploy")] == [
        ("build", "docker build -t $IMAGE:$NORN_REF .", 600.0),
        ("test", "pytest -q", None),
    ]
    assert app.steps("teardown") == ()
    bare = config.apps["bare"]
    assert bare.workdir == tmp_path.resolve() and bare.steps("forge")[0].name == "step-1"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[apps.a]\n[[apps.a.deploy]]\nname = 'x'\n", "apps.a.deploy[0] has no 'run'"),
        ("[apps.a]\nhealth_interval = 'often'\n", "apps.a.health_interval must be a positive duration"),
        ("[apps.a]\nworkdir = 3\n", "apps.a.workdir must be a string, got an integer"),
        ("[apps.a]\nenv = { X = [1] }\n", "apps.a.env.X must be a string or a number"),
        ("[apps.a]\nhelth = 'http://x'\n", "apps.a.helth is not a known key"),
        ("[apps.a]\nhealth = 'ftp://x'\n", "apps.a.health must be an http:// or https:// URL"),
        ("[apps.a]\ndeploy = 'make'\n", "apps.a.deploy must be an array of steps"),
        ("[apps.a]\n[[apps.a.deploy]]\nname='x'\nrun='a'\n[[apps.a.deploy]]\nname='x'\nrun='b'\n", "apps.a.deploy[1].name"),
        ("[apps.a]\n[[apps.a.deploy]]\nrun='a'\ntimeout=0\n", "apps.a.deploy[0].timeout must be a positive duration"),
        ("[apps.a]\n[[apps.a.deploy]]\nrun='a'\ntimeout='10 minutes'\n", "apps.a.deploy[0].timeout must be a positive duration (\"10s\", \"2m\", \"1h30m\", or seconds), got '10 minutes'"),
        ("[apps.'a b']\n", "apps.a b is not a usable app name"),
        ("[apps.a]\nrun = \n", "not valid TOML"),
        ("apps = 3\n", "apps must be a table"),
    ],
)
def test_bad_config(tmp_path: Path, text: str, words: str) -> None:
    """Each mistake is one ConfigError naming the file and the key (or the TOML line)."""
    path = tmp_path / "norn.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.message.startswith(f"{path}: ")
    assert words in info.value.message
    assert info.value.exit_code == ExitCode.USAGE


def test_broken_toml_names_the_line(tmp_path: Path) -> None:
    """A TOML syntax error says where it is."""
    with pytest.raises(ConfigError, match=r"line 3"):
        parse_config("[apps.a]\nenv = {}\nx = = 1\n", path=tmp_path / "norn.toml")


def test_find_config(tmp_path: Path) -> None:
    """An explicit path must exist; otherwise ./norn.toml is used when present, else nothing."""
    assert find_config(None, tmp_path) is None
    (tmp_path / "norn.toml").write_text("")
    assert find_config(None, tmp_path) == tmp_path / "norn.toml"
    with pytest.raises(ConfigError, match="does not exist"):
        find_config(str(tmp_path / "missing.toml"), tmp_path)
    assert load_config(None).apps == {}


def test_serve_refuses_a_bad_config(tmp_path: Path) -> None:
    """`norn serve --config` with a bad file exits 2 with one line naming file and key, no traceback."""
    bad = tmp_path / "norn.toml"
    bad.write_text("[apps.a]\n[[apps.a.deploy]]\nname = 'build'\n")
    result = run_norn("serve", "--port", "0", "--config", str(bad))
    assert result.returncode == 2
    assert result.stderr == f"norn: {bad}: apps.a.deploy[0] has no 'run' (the shell command of the step)\n"
    env_result = run_norn("serve", "--port", "0", NORN_CONFIG=str(bad))
    assert env_result.returncode == 2 and "apps.a.deploy[0]" in env_result.stderr


def test_serve_table(tmp_path: Path) -> None:
    """[serve] gives serve's settings by option name; files are relative to the config's folder."""
    cfg = parse_config(
        '[serve]\nhost = "0.0.0.0"\nport = 9000\ntoken = "t"\nallowed_origins = ["https://ui.example"]\n'
        'history = 50\nqueue_size = 8\nbroker = "redis://r:6379/0"\nredis_stream = "s"\ncertfile = "tls/c.pem"\n',
        path=tmp_path / "norn.toml",
    )
    assert dict(cfg.serve) == {
        "host": "0.0.0.0", "port": 9000, "token": "t", "allowed_origins": ["https://ui.example"], "history": 50,
        "queue_size": 8, "broker": "redis://r:6379/0", "redis_stream": "s", "certfile": str(tmp_path.resolve() / "tls/c.pem"),
    }  # fmt: skip
    assert parse_config("", path=tmp_path / "norn.toml").serve == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("serve = 3", "serve must be a table, like [serve]"),
        ("[serve]\nprot = 1", "serve.prot is not a known key (known: allowed_origins, broker, certfile, dedupe_window, fanout_threads, fsync, handshake_timeout, history, host, keyfile, max_connections, max_connections_per_ip, pin_cpu, port, queue_size, redis_stream, retention, token, token_file, ui)"),
        ("[serve]\nport = 70000", "serve.port must be a port number from 0 to 65535, got 70000"),
        ("[serve]\nhistory = true", "serve.history must be a whole number, 0 or more, got True"),
        ("[serve]\nqueue_size = 0", "serve.queue_size must be at least 1, got 0"),
        ("[serve]\nfanout_threads = 17", "serve.fanout_threads must be from 0 to 16, got 17"),
        ("[serve]\nfanout_threads = -1", "serve.fanout_threads must be a whole number, 0 or more, got -1"),
        ("[serve]\nallowed_origins = [1]", "serve.allowed_origins must be an array of strings"),
        ("[serve]\nhost = 1", "serve.host must be a string, got an integer"),
    ],
)
def test_bad_serve_table(tmp_path: Path, text: str, message: str) -> None:
    """Each wrong [serve] value is refused naming the file and the key."""
    path = tmp_path / "norn.toml"
    with pytest.raises(ConfigError) as info:
        parse_config(text, path=path)
    assert info.value.message == f"{path}: {message}"
