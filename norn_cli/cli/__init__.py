"""The `norn` command line: Click adapters that parse, call one library function and render."""

from norn_cli.cli.main import main, norn

__all__ = ["main", "norn"]
