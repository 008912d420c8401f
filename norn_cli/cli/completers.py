"""Shell completion of values: apps, run ids and catalogue types, asked of the hub the command line names."""

from __future__ import annotations

from typing import Any

import click

from norn_cli.cli.common import peek_hub, run

__all__ = ["complete_apps", "complete_configured_apps", "complete_run_ids", "complete_type_patterns", "complete_types"]


def _ask(ctx: click.Context, lookup: str, **kw: Any) -> list[str]:
    """`client.lookup.<lookup>` against the hub typed so far (or NORN_URL); [] for a URL that does not parse."""
    from norn_cli.client import lookup as looking
    from norn_cli.client.endpoint import Endpoint
    from norn_cli.core.errors import NornError

    url, token, cafile = peek_hub(ctx)
    try:
        endpoint = Endpoint.parse(url)
    except NornError:
        return []
    found: list[str] = run(getattr(looking, lookup)(endpoint, cafile=cafile, **kw), interrupted=None)
    return found


def complete_apps(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """Apps among the hub's recent events (`tail --app`, `emit --app`)."""
    return [app for app in _ask(ctx, "recent_apps") if app.startswith(incomplete)]


def complete_configured_apps(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """The apps the hub runs pipelines for (the `apps` op), else its recent events' apps (deploy, forge, ... APP)."""
    token = peek_hub(ctx)[1]
    return [app for app in _ask(ctx, "configured_apps", token=token) if app.startswith(incomplete)]


def complete_run_ids(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """Run ids of the hub's recent runs, newest first (`watch RUN_ID`)."""
    return [run_id for run_id in _ask(ctx, "recent_run_ids") if run_id.startswith(incomplete)]


def complete_types(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """Catalogue types (`emit TYPE`)."""
    from norn_cli.core.events import CATALOGUE

    return [t for t in sorted(CATALOGUE) if t.startswith(incomplete)]


def complete_type_patterns(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """Catalogue types and their families as globs, `deploy.*` first (`tail --type`)."""
    from norn_cli.core.events import CATALOGUE

    families = sorted({f"{t.split('.', 1)[0]}.*" for t in CATALOGUE})
    return [t for t in (*families, *sorted(CATALOGUE)) if t.startswith(incomplete)]
