"""`norn completion SHELL`: the completion script, from the installed Click (completion_files.py writes completions/)."""

from __future__ import annotations

import click

from norn_cli.cli.common import NornCommand, with_global_options

__all__ = ["SHELLS", "completion"]

SHELLS = ("bash", "zsh", "fish")


@with_global_options("verbose", "no_color")
@click.command(cls=NornCommand, exit_codes={0: "the script was printed", 2: "SHELL is not bash, zsh or fish"})
@click.argument("shell", metavar="SHELL", type=click.Choice(SHELLS))
@click.pass_context
def completion(ctx: click.Context, shell: str) -> None:
    """Print the completion script for SHELL, from the installed Click.

    The script calls `norn` itself to complete, so commands and options stay
    current; values come from the hub the line names (--url, else NORN_URL):
    `tail --app` and `emit --app` offer the apps among its recent events,
    `deploy APP` (and forge, teardown, restart, rollback) its configured apps,
    `watch` its recent run ids; `emit TYPE` and `tail --type` offer the
    catalogue's types. bash's script keeps words with ':' and '=' whole.

    \b
    Examples:
      source <(norn completion bash)                # in ~/.bashrc
      norn completion zsh > ~/.zfunc/_norn          # with fpath+=~/.zfunc before compinit
      norn completion fish > ~/.config/fish/completions/norn.fish
    """
    from click.shell_completion import get_completion_class

    from norn_cli.cli.bash_completion import register

    register()  # bash: norn's script, which keeps words with ':' and '=' whole
    shell_complete = get_completion_class(shell)
    assert shell_complete is not None  # Click ships all three
    root = ctx.find_root().command
    # What `_NORN_COMPLETE={shell}_source norn` prints, written as bytes like Click
    # does, so that Windows does not turn its LFs into CRLFs.
    click.echo(shell_complete(root, {}, "norn", "_NORN_COMPLETE").source().encode(), nl=False)
