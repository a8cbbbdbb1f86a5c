"""Usage records by UTC day: the day names and when a day's record expires.

A day's record is kept ``--usage-days`` days counted from the day's start, in
every backend: memory drops it when it is next touched, Redis with ``EXPIREAT``
on the day's hash, so a fleet sharing Redis keeps exactly as many days as it
is told without anyone sweeping.
"""

from __future__ import annotations

import calendar
import time

__all__ = ["DAY_S", "UsageCounts", "day_of", "day_start_s", "days_back", "expires_at_s"]

DAY_S = 86_400

#: one day's usage: ``(kind, name, counter) → count``; kind ``key`` or ``account``.
UsageCounts = dict[tuple[str, str, str], int]


def day_of(epoch_s: float) -> str:
    """The UTC day of a wall-clock time, ``YYYY-MM-DD``."""
    return time.strftime("%Y-%m-%d", time.gmtime(epoch_s))


def day_start_s(day: str) -> int:
    """The epoch second a ``YYYY-MM-DD`` day begins (UTC); ValueError for anything else."""
    return calendar.timegm(time.strptime(day, "%Y-%m-%d"))


def expires_at_s(day: str, keep_days: int) -> int:
    """When the record of ``day`` goes away: ``keep_days`` whole days after it began."""
    return day_start_s(day) + keep_days * DAY_S


def days_back(today: str, count: int) -> list[str]:
    """``count`` days ending with ``today``, oldest first."""
    start = day_start_s(today)
    return [day_of(start - back * DAY_S) for back in range(count - 1, -1, -1)]
