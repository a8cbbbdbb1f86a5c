"""What the status page keeps beside the operator: usage records, the upstream's hour, the uptime."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from ..metrics import Metrics
from ..state import StateBackend
from .upstream_window import UpstreamWindow
from .usage import UsageRecorder

__all__ = ["StatusBoard"]


class StatusBoard:
    def __init__(self, state: StateBackend, metrics: Metrics, usage_days: int) -> None:
        self.usage = UsageRecorder(state, usage_days)
        self.upstream = UpstreamWindow(metrics)
        self._started = time.monotonic()

    def uptime_s(self) -> float:
        return time.monotonic() - self._started

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Sample the upstream each minute while the app runs; write pending usage at the end."""
        sampler = asyncio.get_running_loop().create_task(self.upstream.run())
        try:
            yield
        finally:
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)
            await self.usage.close()
