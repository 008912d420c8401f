"""The committed completion scripts: `python -m norn_cli.cli.completion_files` writes what `norn completion SHELL` prints.

The copies in completions/ are a convenience for people who install files
rather than source the command's output; regenerate them from the
repository root after a Click upgrade. The tests check that the scripts
complete, not their bytes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from norn_cli.cli.completion import SHELLS

__all__ = ["generate", "main", "write"]

_CHECKOUT = Path(__file__).resolve().parents[2]


def generate(shell: str) -> str:
    """What this checkout's `norn completion SHELL` prints, with this Python's Click."""
    if shell not in SHELLS:
        raise ValueError(f"no completion for {shell!r}; choose one of {', '.join(SHELLS)}")
    env = dict(os.environ)  # this checkout's norn_cli first, whatever else is installed
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_CHECKOUT), env.get("PYTHONPATH", "")) if p)
    done = subprocess.run(
        [sys.executable, "-m", "norn_cli", "completion", shell],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return done.stdout


def write(target: Path) -> list[Path]:
    """Write TARGET/norn.<shell> for every shell; return the paths written."""
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for shell in SHELLS:
        path = target / f"norn.{shell}"
        path.write_text(generate(shell))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    """`python -m norn_cli.cli.completion_files [DIR]`: write DIR/norn.{bash,zsh,fish} (DIR defaults to ./completions)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) > 1 or any(a.startswith("-") for a in args):
        sys.stderr.write("usage: python -m norn_cli.cli.completion_files [DIR]  (DIR defaults to ./completions)\n")
        return 2
    for path in write(Path(args[0] if args else "completions")):
        sys.stderr.write(f"wrote {path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
