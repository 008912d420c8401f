"""Shell completion: `norn completion SHELL` prints Click's script, and real bash, zsh and fish complete with it."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
from click.shell_completion import get_completion_class
from click.testing import CliRunner
from conftest import ROOT, TIMEOUT, ThreadHub, norn_env, run_norn

from norn_cli.cli import norn
from norn_cli.cli.bash_completion import NornBashComplete
from norn_cli.cli.completion import SHELLS
from norn_cli.cli.completion_files import main

COMMITTED = ROOT / "completions"
# (what is typed, the word TAB completes it to)
LINES = [("norn ta", "tail"), ("norn tail --ap", "--app")]


def need(shell: str) -> str:
    """The shell's path; a missing shell skips the test, or fails it when NORN_REQUIRE_SHELLS=1 (CI)."""
    path = shutil.which(shell)
    if path is None:
        if os.environ.get("NORN_REQUIRE_SHELLS") == "1":
            pytest.fail(f"NORN_REQUIRE_SHELLS=1 but {shell} is not on PATH")
        pytest.skip(f"{shell} is not on PATH")
    return path


@pytest.fixture
def shell_env(tmp_path: Path) -> dict[str, str]:
    """An environment whose `norn` on PATH is this checkout's, with an empty home for the shells."""
    bin_dir, home = tmp_path / "bin", tmp_path / "home"
    bin_dir.mkdir()
    home.mkdir()
    wrapper = bin_dir / "norn"
    wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m norn_cli "$@"\n')
    wrapper.chmod(0o755)
    env = norn_env(HOME=str(home), PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    for name in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME", "ZDOTDIR"):
        env.pop(name, None)
    return env


# ------------------------------------------------------------------ the command


@pytest.mark.parametrize("shell", SHELLS)
def test_completion_prints_clicks_script(shell: str) -> None:
    """`norn completion SHELL` prints the script the installed Click generates for `norn`, and exits 0."""
    result = CliRunner().invoke(norn, ["completion", shell])
    assert result.exit_code == 0, result.output
    cls = NornBashComplete if shell == "bash" else get_completion_class(shell)
    assert cls is not None
    assert result.stdout == cls(norn, {}, "norn", "_NORN_COMPLETE").source()
    assert "_NORN_COMPLETE" in result.stdout


def test_completion_for_an_unknown_shell_is_a_usage_error() -> None:
    """`norn completion tcsh`: exit 2, nothing on stdout, and stderr names the shells there are."""
    done = run_norn("completion", "tcsh")
    assert done.returncode == 2
    assert done.stdout == ""
    assert "'tcsh' is not one of 'bash', 'zsh', 'fish'" in done.stderr


def test_one_command_writes_the_committed_copies(tmp_path: Path) -> None:
    """`python -m norn_cli.cli.completion_files DIR` writes norn.<shell> as `norn completion SHELL` prints it."""
    assert main([str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"norn.{shell}" for shell in SHELLS)
    for shell in SHELLS:
        assert (tmp_path / f"norn.{shell}").read_text() == run_norn("completion", shell).stdout
    assert main(["--check"]) == 2
    assert sorted(p.name for p in COMMITTED.iterdir()) == sorted(f"norn.{shell}" for shell in SHELLS)


# ------------------------------------------------------------------ bash


BASH_DRIVER = r"""
eval "$1" || exit 1
spec=($(complete -p norn)) || exit 1
for i in "${!spec[@]}"; do [[ ${spec[i]} == -F ]] && fn=${spec[i+1]}; done
COMP_LINE=$2
COMP_POINT=${#COMP_LINE}
read -ra COMP_WORDS <<< "$COMP_LINE"
[[ $COMP_LINE == *' ' ]] && COMP_WORDS+=('')
COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
COMPREPLY=()
"$fn" norn "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}" || exit 1
printf '%s\n' "${COMPREPLY[@]}"
"""


def bash_complete(load: str, line: str, env: dict[str, str]) -> list[str]:
    """COMPREPLY from the function `complete -p norn` names, after LOAD, for the command line LINE."""
    done = subprocess.run(
        [need("bash"), "--norc", "--noprofile", "-c", BASH_DRIVER, "bash", load, line],
        capture_output=True, text=True, env=env, timeout=TIMEOUT * 3,
    )  # fmt: skip
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return [word for word in done.stdout.splitlines() if word]


BASH_LOADS = {
    "printed": "source <(norn completion bash)",
    "committed": f"source {shlex.quote(str(COMMITTED / 'norn.bash'))}",
}


@pytest.mark.parametrize("load", BASH_LOADS.values(), ids=BASH_LOADS.keys())
@pytest.mark.parametrize(("line", "word"), LINES)
def test_bash_completes(shell_env: dict[str, str], load: str, line: str, word: str) -> None:
    """bash, with the script sourced, completes `norn ta` to `tail` and `norn tail --ap` to `--app`."""
    assert bash_complete(load, line, shell_env) == [word]


def test_bash_completes_apps_from_the_hub(shell_env: dict[str, str], thread_hub: ThreadHub) -> None:
    """Through bash, `norn tail --app m<TAB>` offers the apps the hub has seen."""
    for app in ("mail-agent", "metrics", "db"):
        assert run_norn("--url", thread_hub.url, "emit", "a.b", "--app", app).returncode == 0
    # The hub comes from NORN_URL: on a real command line bash would split a typed URL at its colons.
    env = {**shell_env, "NORN_URL": thread_hub.url}
    assert bash_complete(BASH_LOADS["printed"], "norn tail --app m", env) == ["mail-agent", "metrics"]


def test_bash_completes_values_after_a_url_typed_on_the_line(shell_env: dict[str, str], thread_hub: ThreadHub) -> None:
    """`norn --url ws://127.0.0.1:PORT tail --app <TAB>` offers the hub's apps, not subcommand names."""
    for app in ("mail-agent", "db"):
        assert run_norn("--url", thread_hub.url, "emit", "a.b", "--app", app).returncode == 0
    assert bash_complete(BASH_LOADS["printed"], f"norn --url {thread_hub.url} tail --app ", shell_env) == ["db", "mail-agent"]
    assert bash_complete(BASH_LOADS["printed"], f"norn --url={thread_hub.url} emit x.y --app=m", shell_env) == ["mail-agent"]


@pytest.mark.parametrize(("line", "words"), [
    ("norn emit deploy.c", ["deploy.completed"]),
    ("norn emit forge.", ["forge.completed", "forge.failed", "forge.queued", "forge.step"]),
    ("norn tail --type dep", ["deploy.*", "deploy.completed", "deploy.failed", "deploy.queued", "deploy.rollback", "deploy.step"]),
    ("norn tail --type=deploy.f", ["deploy.failed"]),
])  # fmt: skip
def test_bash_completes_catalogue_types(shell_env: dict[str, str], line: str, words: list[str]) -> None:
    """`emit TYPE` and `tail --type` (also as --type=) complete the catalogue's types; tail also its families."""
    assert bash_complete(BASH_LOADS["printed"], line, shell_env) == words


def test_bash_completes_configured_apps_and_run_ids(shell_env: dict[str, str], tmp_path: Path) -> None:
    """`deploy <TAB>` (and the other run commands) offer the hub's configured apps; `watch <TAB>` its recent run ids, newest first."""
    from pipeline_support import runner_hub

    toml = '[apps.mail-agent]\n[[apps.mail-agent.deploy]]\nname = "x"\nrun = "true"\n[apps.db]\n[[apps.db.forge]]\nname = "x"\nrun = "true"\n'
    with runner_hub(toml, tmp_path) as th:
        env = {**shell_env, "NORN_URL": th.url}
        for command in ("deploy", "forge", "teardown", "restart", "rollback"):
            assert bash_complete(BASH_LOADS["printed"], f"norn {command} ", env) == ["db", "mail-agent"], command
        assert bash_complete(BASH_LOADS["printed"], f"norn --url {th.url} deploy m", shell_env) == ["mail-agent"]
        first = run_norn("--url", th.url, "deploy", "mail-agent", "--json")
        second = run_norn("--url", th.url, "forge", "db", "--json")
        assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
        ids = [json.loads(done.stdout.splitlines()[0])["payload"]["runId"] for done in (second, first)]
        assert bash_complete(BASH_LOADS["printed"], "norn watch ", env) == ids
        assert bash_complete(BASH_LOADS["printed"], f"norn watch {ids[1][:6]}", env) == [ids[1]]


def test_run_commands_fall_back_to_recent_apps(shell_env: dict[str, str], thread_hub: ThreadHub) -> None:
    """A hub without pipelines (no `apps` op): `deploy <TAB>` offers the apps among its recent events."""
    assert run_norn("--url", thread_hub.url, "emit", "a.b", "--app", "web").returncode == 0
    assert bash_complete(BASH_LOADS["printed"], f"norn --url {thread_hub.url} restart ", shell_env) == ["web"]


def bash_tab(load: str, line: str, env: dict[str, str]) -> str:
    """The command line after typing LINE and TAB into an interactive bash (readline) whose completion LOAD ran."""
    term = Terminal([need("bash"), "--norc", "--noprofile", "-i"], {**env, "TERM": "dumb", "PS1": "> ", "INPUTRC": "/dev/null"})
    try:
        # The markers are spelt with quotes inside, so the terminal's echo of these commands does not match them.
        term.send(
            f"{load}; "
            """bind -x '"\\C-x": printf "<""<%s>"">\\n" "$READLINE_LINE"; READLINE_LINE='; echo RE''ADY\n"""
        )
        term.expect(rb"READY\r?\n")
        term.send(f"{line}\t\x18")
        shown = term.expect(rb"<<(.*?)>>").group(1).decode()
        term.send("exit\n")
        assert term.proc.wait(TIMEOUT) == 0
        return shown
    finally:
        term.close()


@pytest.mark.parametrize("load", BASH_LOADS.values(), ids=BASH_LOADS.keys())
def test_real_bash_tab_keeps_words_with_colons_and_equals(shell_env: dict[str, str], thread_hub: ThreadHub, load: str) -> None:
    """Typed into bash's readline, TAB after a URL with ':' completes the app, and `--type=deploy.comp` the type."""
    assert run_norn("--url", thread_hub.url, "emit", "a.b", "--app", "mail-agent").returncode == 0
    line = f"norn --url {thread_hub.url} tail --app ma"
    assert bash_tab(load, line, shell_env) == f"norn --url {thread_hub.url} tail --app mail-agent "
    assert bash_tab(load, "norn tail --type=deploy.comp", shell_env) == "norn tail --type=deploy.completed "
    assert bash_tab(load, f"norn --url={thread_hub.url} tail --ap", shell_env) == f"norn --url={thread_hub.url} tail --app "


# ------------------------------------------------------------------ zsh


class Terminal:
    """An interactive program on a pseudo-terminal: type into it and read its screen output."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.fd, child = pty.openpty()
        self.proc = subprocess.Popen(argv, stdin=child, stdout=child, stderr=child, env=env, start_new_session=True)
        os.close(child)
        self.transcript = b""

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def expect(self, pattern: bytes) -> re.Match[bytes]:
        """Read until PATTERN shows up in what the program wrote, within the test timeout."""
        deadline = time.monotonic() + TIMEOUT * 3
        while (found := re.search(pattern, self.transcript)) is None:
            ready, _, _ = select.select([self.fd], [], [], max(0.0, deadline - time.monotonic()))
            try:
                chunk = os.read(self.fd, 4096) if ready else b""
            except OSError:  # EIO: the program exited and closed the terminal
                chunk = b""
            if not chunk:
                screen = self.transcript.decode(errors="replace")
                raise AssertionError(f"no {pattern!r} on the terminal; it shows:\n{screen}")
            self.transcript += chunk
        return found

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(TIMEOUT)
        finally:
            os.close(self.fd)


def zsh_complete(setup: str, line: str, env: dict[str, str]) -> str:
    """The command line after typing LINE and TAB into an interactive zsh whose completion SETUP ran."""
    term = Terminal([need("zsh"), "-f", "-i"], {**env, "TERM": "dumb", "PS1": "> "})
    try:
        # The markers are spelt with quotes inside, so the terminal's echo of these commands does not match them.
        term.send(
            f"{setup}; "
            """show-line() { print -r -- "<""<$BUFFER>"">"; BUFFER=; zle accept-line }; """
            "zle -N show-line; bindkey '^X' show-line; print RE''ADY\n"
        )
        term.expect(rb"READY\r?\n")
        # Keys typed ahead wait while the completion widget runs; ^X then shows the line TAB left.
        term.send(f"{line}\t\x18")
        shown = term.expect(rb"<<(.*?)>>").group(1).decode()
        term.send("exit\n")
        assert term.proc.wait(TIMEOUT) == 0
        screen = term.transcript.decode(errors="replace")
        assert "command not found" not in screen and "no such" not in screen.lower(), screen
        return shown
    finally:
        term.close()


COMPINIT = "autoload -Uz compinit && compinit -u -D"


@pytest.fixture(params=["printed", "committed", "fpath"])
def zsh_setup(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Completion set up as README says: the printed script sourced, the committed copy sourced, or _norn on $fpath."""
    if request.param == "printed":
        return f"{COMPINIT} && source <(norn completion zsh)"
    if request.param == "committed":
        return f"{COMPINIT} && source {shlex.quote(str(COMMITTED / 'norn.zsh'))}"
    # Autoloaded from $fpath, the script takes its other branch; fpath must be set before compinit.
    zfunc = tmp_path / "zfunc"
    zfunc.mkdir()
    (zfunc / "_norn").write_text(run_norn("completion", "zsh").stdout)
    return f"fpath=({shlex.quote(str(zfunc))} $fpath) && {COMPINIT}"


@pytest.mark.parametrize(("line", "word"), LINES)
def test_zsh_completes(shell_env: dict[str, str], zsh_setup: str, line: str, word: str) -> None:
    """zsh's completion system, with the script loaded, turns `norn ta<TAB>` into `norn tail `."""
    typed = line.rsplit(" ", 1)[0]
    assert zsh_complete(zsh_setup, line, shell_env) == f"{typed} {word} "


# ------------------------------------------------------------------ fish


def fish_complete(load: str, line: str, env: dict[str, str]) -> list[str]:
    """The candidates fish's `complete -C LINE` offers after LOAD (without their descriptions)."""
    done = subprocess.run(
        [need("fish"), "--no-config", "-c", "eval $argv[1]; and complete -C $argv[2]", load, line],
        capture_output=True, text=True, env=env, timeout=TIMEOUT * 3,
    )  # fmt: skip
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return [candidate.split("\t")[0] for candidate in done.stdout.splitlines() if candidate]


FISH_LOADS = {
    "printed": "norn completion fish | source",
    "committed": f"source {shlex.quote(str(COMMITTED / 'norn.fish'))}",
}


@pytest.mark.parametrize("load", FISH_LOADS.values(), ids=FISH_LOADS.keys())
@pytest.mark.parametrize(("line", "word"), LINES)
def test_fish_completes(shell_env: dict[str, str], load: str, line: str, word: str) -> None:
    """fish, with the script sourced, completes `norn ta` to `tail` and `norn tail --ap` to `--app`."""
    assert fish_complete(load, line, shell_env) == [word]


# ------------------------------------------------------------------ what norn answers the scripts


def _complete(url: str, words: str, cword: int) -> list[str]:
    done = run_norn(_NORN_COMPLETE="bash_complete", COMP_WORDS=f"norn --url {url} {words}", COMP_CWORD=str(cword + 2))
    assert done.returncode == 0 and done.stderr == ""
    return [line for line in done.stdout.splitlines() if line]


def test_app_completes_from_the_hubs_recent_events(thread_hub: ThreadHub) -> None:
    """`norn tail --app m<TAB>` offers the apps the hub has seen."""
    for app in ("mail-agent", "metrics", "db"):
        assert run_norn("--url", thread_hub.url, "emit", "a.b", "--app", app).returncode == 0
    assert _complete(thread_hub.url, "tail --app m", 3) == ["plain,mail-agent", "plain,metrics"]
    assert _complete(thread_hub.url, "emit x.y --app ", 4) == ["plain,db", "plain,mail-agent", "plain,metrics"]


def test_app_completion_is_empty_without_a_hub() -> None:
    """No hub: no suggestions, no noise."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert _complete(f"ws://127.0.0.1:{port}", "tail --app ", 3) == []
