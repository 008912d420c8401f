"""The pipeline kinds an app may define, and what a run request of each takes (cheap to import: the CLI builds its commands from it)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["KINDS", "RUN_KINDS", "Kind"]

KINDS = ("deploy", "forge", "teardown", "restart", "rollback")
"""The pipelines an app may define, each an ordered array of steps."""


@dataclass(frozen=True)
class Kind:
    """A pipeline kind as a run request sees it: the value it takes besides the app."""

    name: str
    summary: str  # what a run of this kind does, one sentence
    arg: str | None = None  # "ref" or "tag": the request field of the optional second argument
    arg_required: bool = False  # the hub refuses the request without it
    example: str = ""


RUN_KINDS = (
    Kind("deploy", "Deploy APP at REF (default: the app's configured ref, else HEAD) and watch it live.", "ref", example="mail-agent 3f2a9c1"),
    Kind("forge", "Run APP's forge steps (set it up) and watch them live.", "ref", example="mail-agent"),
    Kind("teardown", "Run APP's teardown steps and watch them live.", example="mail-agent"),
    Kind("restart", "Restart APP (its restart steps, if any) and announce app.restarted.", example="mail-agent"),
    Kind("rollback", "Roll APP back to image TAG (its rollback steps, if any) and watch it live.", "tag", True, "mail-agent 2026-11-26.3"),
)
"""Each of KINDS, in order, with what a request for it takes."""
