"""Plain text for output without rich: control-character escaping, durations and `--format` templates."""

from __future__ import annotations

import math
import re
import string
from collections.abc import Mapping
from typing import Any

from norn_cli.core.events import dumps

__all__ = ["ENVELOPE_FIELDS", "Template", "TemplateError", "escape_control", "first_line", "format_duration"]

ENVELOPE_FIELDS = ("type", "appId", "payload", "id", "ts")

# C0 (newline and tab included), DEL, C1, the Unicode line and paragraph
# separators, and every bidirectional control (the marks ALM, LRM, RLM; the
# embeddings and overrides LRE..RLO; the isolates LRI..PDI), which can make a
# line read differently from what it holds.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\x1b": "\\e"}
# The escape sequences programs print for a terminal (ECMA-48): CSI (colours,
# cursor moves), OSC (titles, links), and ESC with a final byte, after any
# intermediates (ESC c, ESC 7, ESC ( B).
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[ -/]*[0-~])")
_TAB_WIDTH = 4  # spaces for a tab in program output


def _escape_one(m: re.Match[str]) -> str:
    ch = m.group()
    named = _NAMED.get(ch)
    if named is not None:
        return named
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_control(text: str, *, program_output: bool = False) -> str:
    """Untrusted text made safe for a terminal: control characters shown as escapes.

    A newline, a tab, ESC and U+202E become the visible `\\n`, `\\t`, `\\e` and
    `\\u202e`; other C0 and C1 controls `\\xNN`. With `program_output` (a
    step's output: what a build tool printed for a terminal), escape
    sequences are dropped and tabs become spaces first, so its colours do not
    show as `\\e[32m`; whatever control characters remain are escaped the same.
    """
    if program_output:
        text = _ANSI.sub("", text).replace("\t", " " * _TAB_WIDTH)
    return _CONTROL.sub(_escape_one, text)


def _half_up(x: float) -> int:
    """x rounded to the nearest whole number, halves away from zero (x >= 0)."""
    return math.floor(x + 0.5)


def format_duration(ms: float) -> str:
    """A duration in milliseconds as people say it: `350ms`, `1.2s`, `1m05s`, `1h02m`.

    The unit is chosen after rounding, so a value that rounds up to the next
    unit carries into it: 999.6 ms is `1.0s`, 59.95 s is `1m00s`, 119.6 s is
    `2m00s`, 3599.5 s is `1h00m`; halves round up. A negative duration (a
    clock that went back) keeps its sign, `-1.2s`, unless it rounds to `0ms`;
    NaN and infinities, which are no duration, are `?`.
    """
    if not math.isfinite(ms):
        return "?"
    if ms < 0:
        shown = format_duration(-ms)
        return shown if shown == "0ms" else "-" + shown
    if _half_up(ms) < 1000:
        return f"{_half_up(ms)}ms"
    tenths = _half_up(ms / 100)
    if tenths < 600:
        return f"{tenths // 10}.{tenths % 10}s"
    seconds = _half_up(ms / 1000)
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    minutes = _half_up(ms / 60_000)
    return f"{minutes // 60}h{minutes % 60:02d}m"


def first_line(text: str) -> str:
    """The first non-empty line, with an ellipsis when more follow."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return ""
    return lines[0].rstrip() + (" …" if len(lines) > 1 else "")


class TemplateError(ValueError):
    """A `--format` template that cannot work, whatever the events."""


class _Missing:
    """A field the event does not have: renders empty."""


_MISSING = _Missing()
_Piece = tuple[str, str | None, list[str], str | None, str]


def _split_field(field: str) -> tuple[str, list[str]]:
    """`payload[step].x` -> ("payload", ["step", "x"]); attribute and item access mean the same."""
    first, rest = field, ""
    for i, ch in enumerate(field):
        if ch in ".[":
            first, rest = field[:i], field[i:]
            break
    keys: list[str] = []
    pos = 0
    while pos < len(rest):
        if rest[pos] == ".":
            end = min((j for j in (rest.find(".", pos + 1), rest.find("[", pos + 1)) if j != -1), default=len(rest))
            key = rest[pos + 1 : end]
            pos = end
        else:  # "["
            end = rest.find("]", pos)
            if end == -1:
                raise TemplateError(f"missing ']' in field {{{field}}}")
            key = rest[pos + 1 : end]
            pos = end + 1
        if not key:
            raise TemplateError(f"empty key in field {{{field}}}")
        keys.append(key)
    return first, keys


class Template:
    """A `--format` template over the envelope, like `'{ts} {appId} {type} {payload[step]}'`.

    Fields are the envelope's `type`, `appId`, `payload`, `id` and `ts`;
    `payload[key]` and `payload.key` both look inside. A key an event lacks
    renders empty (payloads differ by type); a name outside the envelope is
    an error up front. Strings render as they are (control characters
    escaped), anything else as compact JSON. Format specs (`{type:<16}`)
    and conversions (`!r`) work as in Python.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self._pieces: list[_Piece] = []
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as exc:
            raise TemplateError(f"bad template: {exc}") from None
        for literal, field, spec, conversion in parsed:
            if field is None:
                self._pieces.append((literal, None, [], None, ""))
                continue
            if field == "" or field.isdigit():
                raise TemplateError(
                    "template fields need a name: " + ", ".join("{" + f + "}" for f in ENVELOPE_FIELDS)
                )
            first, keys = _split_field(field)
            if first not in ENVELOPE_FIELDS:
                raise TemplateError(
                    f"unknown field {{{field}}}; use " + ", ".join("{" + f + "}" for f in ENVELOPE_FIELDS)
                    + " or {payload[KEY]}"
                )
            if spec and "{" in spec:
                raise TemplateError(f"nested fields are not supported in {{{field}:{spec}}}")
            self._pieces.append((literal, first, keys, conversion, spec or ""))

    def render(self, envelope: Mapping[str, Any]) -> str:
        """One line for one event."""
        out: list[str] = []
        for literal, first, keys, conversion, spec in self._pieces:
            out.append(literal)
            if first is None:
                continue
            value = _lookup(envelope, first, keys)
            if isinstance(value, _Missing):
                continue
            out.append(escape_control(_format(value, conversion, spec)))
        return "".join(out)


def _lookup(envelope: Mapping[str, Any], first: str, keys: list[str]) -> Any:
    value: Any = envelope.get(first, _MISSING)
    for key in keys:
        if isinstance(value, Mapping):
            value = value.get(key, _MISSING)
        elif isinstance(value, list) and key.lstrip("-").isdigit() and -len(value) <= int(key) < len(value):
            value = value[int(key)]
        else:
            return _MISSING
    return value


def _format(value: Any, conversion: str | None, spec: str) -> str:
    if conversion == "r":
        value = repr(value)
    elif conversion == "a":
        value = ascii(value)
    text = value if isinstance(value, str) else dumps(value).decode()
    if not spec:
        return text
    target = value if isinstance(value, (int, float)) and not isinstance(value, bool) else text
    try:
        return format(target, spec)
    except (ValueError, TypeError):
        return text
