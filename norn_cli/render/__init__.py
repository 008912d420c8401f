"""Output for people and pipes: event lines, the pipeline view, plain text and templates.

The renderers are the only modules that import rich.
"""

from __future__ import annotations

__all__: list[str] = []
