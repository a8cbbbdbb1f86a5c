"""Retry timing (relay/upstream/retry.py): exponential backoff with full jitter,
capped, and an upstream Retry-After honoured but never beyond the cap.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.upstream.retry import backoff_s, parse_retry_after

BASE = 0.25
MAX = 8.0


@settings(max_examples=200)
@given(st.integers(1, 64), st.floats(0.01, 2.0), st.floats(0.5, 60.0))
def test_backoff_is_within_half_ceiling_and_ceiling(attempt: int, base: float, max_s: float) -> None:
    """Full jitter over the upper half: ceiling/2 <= wait <= ceiling, where the
    ceiling is base·2^(attempt-1) capped at max."""
    ceiling = min(max_s, base * 2 ** (attempt - 1))
    wait = backoff_s(attempt, base, max_s, None)
    assert ceiling / 2 <= wait <= ceiling


@pytest.mark.parametrize(("attempt", "ceiling"), [(1, 0.25), (2, 0.5), (3, 1.0), (4, 2.0), (5, 4.0),
                                                  (6, 8.0), (7, 8.0), (30, 8.0), (64, 8.0)])
def test_backoff_doubles_then_caps(attempt: int, ceiling: float) -> None:
    """Each attempt doubles the ceiling until the backoff maximum, then stays there."""
    waits = [backoff_s(attempt, BASE, MAX, None) for _ in range(200)]
    assert all(ceiling / 2 <= w <= ceiling for w in waits)
    assert len(set(waits)) > 1, "jittered, not fixed"


def test_backoff_for_a_very_late_attempt_is_capped_not_an_overflow() -> None:
    """Config puts no upper bound on --retries, so attempt 1100 is reachable
    (``--retries 1100``); its wait is the cap, not an OverflowError from
    converting 2**1099 to float."""
    assert MAX / 2 <= backoff_s(1100, BASE, MAX, None) <= MAX


@pytest.mark.parametrize(("retry_after", "expected"), [(0.0, 0.0), (3.0, 3.0), (7.5, 7.5), (8.0, 8.0),
                                                       (120.0, MAX), (-4.0, 0.0)])
def test_retry_after_is_honoured_and_capped(retry_after: float, expected: float) -> None:
    """An upstream Retry-After replaces the backoff, capped at max and never negative."""
    for attempt in (1, 5):
        assert backoff_s(attempt, BASE, MAX, retry_after) == expected


@pytest.mark.parametrize(("value", "expected"), [
    ("0", 0.0), ("5", 5.0), (" 12 ", 12.0), ("1.5", 1.5), ("-5", 0.0),
])
def test_parse_retry_after_seconds(value: str, expected: float) -> None:
    """Delta-seconds parse as a float; a negative value never means a negative wait."""
    assert parse_retry_after(value) == expected


@pytest.mark.parametrize("value", [None, "", "soon", "Wed, 99 Foo 2015", "nan", "inf", "-inf", "1e999", "5s"])
def test_parse_retry_after_garbage_is_none(value: str | None) -> None:
    """Absent, unparsable or non-finite values mean "no hint"."""
    assert parse_retry_after(value) is None


def test_parse_retry_after_http_date_in_the_future() -> None:
    """An HTTP-date gives the seconds from now until then."""
    when = datetime.now(UTC) + timedelta(seconds=120)
    seconds = parse_retry_after(format_datetime(when, usegmt=True))
    assert seconds is not None and 100 <= seconds <= 120


def test_parse_retry_after_http_date_in_the_past_is_zero() -> None:
    """A date already past means retry now, not a negative wait."""
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


def test_parse_retry_after_date_without_zone_is_utc() -> None:
    """A ``-0000`` (unknown zone) date is read as UTC rather than crashing on a
    naive/aware comparison."""
    when = datetime.now(UTC) + timedelta(seconds=60)
    value = when.strftime("%a, %d %b %Y %H:%M:%S -0000")
    seconds = parse_retry_after(value)
    assert seconds is not None and 40 <= seconds <= 60
