"""The upstream's last hour: errors by code and the retry rate, from the /metrics counters.

The counters (``Metrics.upstream_attempts``, ``upstream_retries``,
``upstream_errors``) only ever grow, so an hour's worth is their value now
minus their value an hour ago. A snapshot is kept each minute (61 at most), and
the hour is measured from the oldest one still within it: exact to a minute,
with no per-request work and memory bounded by the number of error codes.
Per process: under ``--workers`` each worker reports its own traffic.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..metrics import Metrics

__all__ = ["SAMPLE_INTERVAL_S", "WINDOW_S", "UpstreamWindow"]

#: one snapshot a minute: the hour is exact to a minute.
SAMPLE_INTERVAL_S = 60.0
#: "the last hour" of the status page.
WINDOW_S = 3600.0


@dataclass(frozen=True, slots=True)
class _Snapshot:
    at: float
    attempts: int
    retries: int
    errors: dict[str, int]


class UpstreamWindow:
    def __init__(self, metrics: Metrics, clock: Callable[[], float] = time.monotonic) -> None:
        self._metrics = metrics
        self._clock = clock
        self._snapshots: collections.deque[_Snapshot] = collections.deque(
            maxlen=int(WINDOW_S / SAMPLE_INTERVAL_S) + 1)
        self.sample()

    def sample(self) -> None:
        """Keep the counters as they are now (each minute, and at start)."""
        self._snapshots.append(self._now())

    async def run(self) -> None:
        """Sample each minute until cancelled (one task per process, in the app's cleanup context)."""
        while True:
            await asyncio.sleep(SAMPLE_INTERVAL_S)
            self.sample()

    def summary(self) -> dict[str, Any]:
        """``{"errors_by_code": {code: n}, "retry_rate": retries / attempts}`` over the last hour."""
        now = self._now()
        base = next((snap for snap in self._snapshots if snap.at >= now.at - WINDOW_S), now)
        errors = {code: count - base.errors.get(code, 0) for code, count in sorted(now.errors.items())}
        attempts = now.attempts - base.attempts
        retries = now.retries - base.retries
        return {"errors_by_code": {code: count for code, count in errors.items() if count > 0},
                "retry_rate": round(retries / attempts, 4) if attempts > 0 else 0.0}

    def _now(self) -> _Snapshot:
        metrics = self._metrics
        return _Snapshot(self._clock(), metrics.upstream_attempts, sum(metrics.upstream_retries.values()),
                         dict(metrics.upstream_errors))
