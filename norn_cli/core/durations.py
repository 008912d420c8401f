"""Durations as people type them: `10s`, `2m`, `1h30m`, `250ms`, `7d`, `1.5`, one parser for flags and norn.toml."""

from __future__ import annotations

import math
import re

__all__ = ["parse_duration"]

_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|d|h|m|s)")
_SPACE_BETWEEN_PARTS = re.compile(r"(?<=[a-z])\s+(?=[\d.])")
_NUMBER = re.compile(r"\d+(?:\.\d*)?|\.\d+")


def parse_duration(text: str | float) -> float:
    """Seconds in `text`: a bare number (seconds) or unit parts in order, d, h, m, s, ms (`1h30m`, `2m5s`, `250ms`, `7d`).

    Raises ValueError with a sentence saying what is accepted; the result is finite and not negative.
    """
    if isinstance(text, bool):
        raise ValueError(f"{text!r} is not a duration")
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        s = _SPACE_BETWEEN_PARTS.sub("", text.strip().lower())
        if _NUMBER.fullmatch(s):
            value = float(s)
        else:
            value = _parse_parts(s, text)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{text!r} is not a duration: expected 0 or more")
    return value


def _parse_parts(s: str, original: str) -> float:
    total = 0.0
    pos = 0
    order = ["d", "h", "m", "s", "ms"]
    last = -1
    for match in _PART.finditer(s):
        unit = match.group(2)
        if match.start() != pos or order.index(unit) <= last:
            break
        last = order.index(unit)
        total += float(match.group(1)) * _UNIT_SECONDS[unit]
        pos = match.end()
    if pos != len(s) or not s:
        raise ValueError(
            f"{original!r} is not a duration: use seconds (30, 1.5) or units d, h, m, s, ms (10s, 2m, 1h30m, 250ms, 7d)"
        )
    return total
