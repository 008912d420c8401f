"""core.durations: what people type for a time, and the sentence they get when it is not one."""

from __future__ import annotations

import pytest

from norn_cli.core.durations import parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("10s", 10.0), ("2m", 120.0), ("1h30m", 5400.0), ("250ms", 0.25), ("30", 30.0), ("1.5", 1.5),
        ("1.5s", 1.5), ("2m5s", 125.0), ("1h", 3600.0), ("0", 0.0), (" 10S ", 10.0), ("1m 30s", 90.0),
        ("1s500ms", 1.5), (".5", 0.5), (7, 7.0), (2.5, 2.5),
    ],
)  # fmt: skip
def test_accepted(text: str | float, seconds: float) -> None:
    """Bare numbers are seconds; unit parts add up, largest first."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "s", "10x", "1m1h", "10s10s", "-5", "ten", "1e3", "nan", "inf", "5 m s"])
def test_refused(text: str) -> None:
    """Anything else is refused with the accepted forms."""
    with pytest.raises(ValueError, match=r"is not a duration"):
        parse_duration(text)


def test_refusal_sentence() -> None:
    """The message shows the forms that work."""
    with pytest.raises(ValueError) as info:
        parse_duration("10x")
    assert str(info.value) == "'10x' is not a duration: use seconds (30, 1.5) or units d, h, m, s, ms (10s, 2m, 1h30m, 250ms, 7d)"


def test_bool_and_negative_numbers() -> None:
    """TOML booleans and negative numbers are no duration."""
    with pytest.raises(ValueError):
        parse_duration(True)
    with pytest.raises(ValueError, match="expected 0 or more"):
        parse_duration(-1)
