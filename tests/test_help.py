"""Every command has help with an example, and `norn --help` lists the exit codes."""

from __future__ import annotations

import re

import click
import pytest
from click.testing import CliRunner

from norn_cli.cli.main import norn
from norn_cli.core.errors import EXIT_CODE_HELP, ExitCode


def commands() -> list[str]:
    return norn.list_commands(click.Context(norn))


@pytest.mark.parametrize("name", commands())
def test_every_command_has_help_with_an_example(name: str) -> None:
    """`norn CMD --help` exits 0 and shows an example invocation."""
    result = CliRunner().invoke(norn, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert norn.get_command(click.Context(norn), name).help, f"{name} has no help"
    # Not merely "norn NAME" somewhere: Click's own usage line always says that.
    examples = re.search(r"^  Examples?:\n((?:    .+\n)+)", result.output, re.MULTILINE)
    assert examples is not None, f"{name} help has no example"
    assert f"norn {name}" in examples.group(1), f"{name} help's examples do not run it"


def test_group_help_lists_every_exit_code() -> None:
    """The top-level help documents each exit code."""
    result = CliRunner().invoke(norn, ["--help"])
    assert result.exit_code == 0
    for code, text in EXIT_CODE_HELP.items():
        assert f"{int(code):<4} {text}" in result.output
    assert {int(c) for c in ExitCode} == {0, 1, 2, 3, 4, 5, 130}


def test_version() -> None:
    """--version prints the package version."""
    from norn_cli import __version__

    result = CliRunner().invoke(norn, ["--version"])
    assert result.output == f"norn, version {__version__}\n"


def test_unknown_command_is_a_usage_error() -> None:
    """A typo is Click's usage error, exit 2."""
    result = CliRunner().invoke(norn, ["serv"])
    assert result.exit_code == 2
    assert "Error: No such command 'serv'." in result.output


def test_top_level_list_does_not_truncate_summaries() -> None:
    """`norn --help` shows each command's whole first sentence, with no '...'."""
    out = CliRunner().invoke(norn, ["--help"], terminal_width=80).output
    listing = out.split("Commands:\n", 1)[1]
    assert "..." not in listing
    assert " ".join(listing.split()).count("Measure a hub: publish rate, delivery rate, completeness, drops and latency.") == 1


@pytest.mark.parametrize("name", commands())
def test_every_command_lists_its_exit_codes(name: str) -> None:
    """`norn CMD --help` ends with the exit codes that command can give."""
    out = CliRunner().invoke(norn, [name, "--help"]).output
    assert re.search(r"^Exit codes:\n  0 ", out, re.MULTILINE), out
