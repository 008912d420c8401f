"""Output for people and pipes: event lines (rich), plain text and templates."""

from __future__ import annotations

__all__: list[str] = []
