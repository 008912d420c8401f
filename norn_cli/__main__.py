"""`python -m norn_cli`: the same entry point as the `norn` script."""

from norn_cli.cli.main import main

main()
