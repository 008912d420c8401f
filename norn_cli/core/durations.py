"""Durations people type: `10s`, `2m`, `1h30m`, `250ms`, or a bare number of seconds."""

from __future__ import annotations

import math
import re

__all__ = ["parse_duration"]

_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds in `text`; ValueError with a one-line reason for anything else (or a negative)."""
    s = text.strip().lower()
    try:
        value = float(s)
    except ValueError:
        pass
    else:
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"a duration must be a finite number of seconds, 0 or more, got {text!r}")
        return value
    pos, total = 0, 0.0
    for m in _PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not s or pos != len(s):
        raise ValueError(f"not a duration: {text!r} (try 10s, 2m, 1h30m, 250ms or a number of seconds)")
    return total
