"""bash completion that keeps words whole: norn splits the typed line itself, as bash's COMP_WORDS breaks at `:` and `=`.

Click's own bash script hands norn `COMP_WORDS`, which bash has already cut
at every character of `COMP_WORDBREAKS`: `--url ws://127.0.0.1:8910` arrives
as `ws`, `:`, `//127.0.0.1`, `:`, `8910`, so Click sees a subcommand where the
URL was. This script passes the line up to the cursor instead, and norn
answers each candidate trimmed to the part bash's readline replaces (the
text after the word's last break character), as bash-completion's
`__ltrim_colon_completions` does.
"""

from __future__ import annotations

import os
from typing import Any

from click.shell_completion import BashComplete, CompletionItem, add_completion_class, split_arg_string

__all__ = ["NornBashComplete", "register"]

_SOURCE = """\
%(complete_func)s() {
    local IFS=$'\\n'
    local response

    # The line up to the cursor, not COMP_WORDS: bash splits those at ':' and '='.
    response=$(env COMP_LINE="${COMP_LINE:0:COMP_POINT}" COMP_WORDBREAKS="$COMP_WORDBREAKS" \\
%(complete_var)s=bash_complete $1)

    for completion in $response; do
        IFS=',' read type value <<< "$completion"

        if [[ $type == 'dir' ]]; then
            COMPREPLY=()
            compopt -o dirnames
        elif [[ $type == 'file' ]]; then
            COMPREPLY=()
            compopt -o default
        elif [[ $type == 'plain' ]]; then
            COMPREPLY+=($value)
        fi
    done

    return 0
}

%(complete_func)s_setup() {
    complete -o nosort -F %(complete_func)s %(prog_name)s
}

%(complete_func)s_setup;
"""

# Quotes and blanks end words for the shell's own reasons; the rest break words only for readline.
_NOT_BREAKS = " \t\n\"'"
_DEFAULT_BREAKS = "\"'><=;|&(:"


class NornBashComplete(BashComplete):
    """Click's bash completion, fed the typed line (COMP_LINE) so words with `:` and `=` stay whole."""

    source_template = _SOURCE

    def _line(self) -> str | None:
        return os.environ.get("COMP_LINE")

    def get_completion_args(self) -> tuple[list[str], str]:
        line = self._line()
        if line is None:  # an older script that sends COMP_WORDS
            return super().get_completion_args()
        words = split_arg_string(line)
        incomplete = "" if not words or line[-1:].isspace() else words.pop()
        return words[1:], incomplete

    def complete(self) -> str:
        args, incomplete = self.get_completion_args()
        items = self.get_completions(args, incomplete)
        if self._line() is not None:
            items = self._trimmed(items, incomplete)
        return "\n".join(self.format_completion(item) for item in items)

    @staticmethod
    def _trimmed(items: list[CompletionItem], word: str) -> list[CompletionItem]:
        """Each candidate as the text after the word's last break character: the part readline replaces."""
        breaks = set(os.environ.get("COMP_WORDBREAKS", _DEFAULT_BREAKS)) - set(_NOT_BREAKS)
        cut = max((i + 1 for i, ch in enumerate(word) if ch in breaks), default=0)
        if cut == 0:
            return items
        # What a candidate replaces: Click completes `--opt=val` as the value after the first '='.
        head = "=" if word == "=" else word.partition("=")[0] + "=" if word[:1] == "-" and "=" in word else ""
        kept = []
        for item in items:
            if item.type != "plain":
                kept.append(item)
                continue
            whole = head + str(item.value)
            if whole.startswith(word[:cut]):
                kept.append(_with_value(item, whole[cut:]))
        return kept


def _with_value(item: CompletionItem, value: Any) -> CompletionItem:
    return CompletionItem(value, type=item.type, help=item.help)


def register() -> None:
    """Make `bash` mean this class for every Click completion in this process."""
    add_completion_class(NornBashComplete, "bash")
