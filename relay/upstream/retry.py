"""When to try the upstream again, and how long to wait first.

Retries happen only before the first byte reaches the client (the handler has
not prepared its response while ``UpstreamClient.open`` is still trying), only
for faults another attempt can fix: an HTML challenge page, a 5xx, a refused or
reset connection. Never for a 4xx: the same request would fail the same way.
"""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

__all__ = ["backoff_s", "parse_retry_after"]


def backoff_s(attempt: int, base_s: float, max_s: float, retry_after_s: float | None) -> float:
    """Seconds to wait before attempt ``attempt + 1``.

    Exponential with full jitter (AWS architecture blog, "Exponential Backoff And
    Jitter"): spreads a burst of failing requests instead of retrying in lockstep.
    An upstream ``Retry-After`` is honoured, capped at ``max_s``.
    """
    if retry_after_s is not None:
        return min(max(retry_after_s, 0.0), max_s)
    ceiling = min(max_s, base_s * 2.0 ** min(attempt - 1, 64))  # the exponent cap avoids float overflow
    return random.uniform(ceiling / 2, ceiling)


def parse_retry_after(value: str | None) -> float | None:
    """Parse ``Retry-After`` as delta-seconds or an HTTP date; None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return max(seconds, 0.0) if math.isfinite(seconds) else None
