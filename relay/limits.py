"""The concurrency gate: in-flight chat completions, held until the last byte.

The original Worker released its count when the response headers went out, so a
relay full of long streams still accepted more. Here the slot is taken before
the upstream request and given back in ``finally`` after the stream's last
write, whatever ends it (done, error, client gone, cancelled). When every slot
is taken the caller waits in line for ``--queue-timeout`` (translation plugins
send bursts), then gets 429 with ``Retry-After`` instead of waiting without bound.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

from .errors import Overloaded

__all__ = ["RETRY_AFTER_FULL_S", "ConcurrencyGate"]

#: a relay-side 429 clears as soon as one stream ends; 1 s keeps SDK backoff short.
RETRY_AFTER_FULL_S = 1


class ConcurrencyGate:
    """An ``asyncio.Semaphore`` that refuses instead of queueing when full."""

    __slots__ = ("_idle", "_semaphore", "capacity", "in_flight", "rejected")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._semaphore = asyncio.Semaphore(capacity)
        self.in_flight = 0
        self.rejected = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def wait_idle(self) -> None:
        """Return once no request holds a slot (the drain waits on this)."""
        await self._idle.wait()

    def slot(self, wait_s: float = 0.0) -> _Slot:
        """Hold a slot for the block; wait up to ``wait_s`` for one (FIFO), else 429."""
        return _Slot(self, wait_s)

    async def _acquire(self, wait_s: float) -> None:
        if self._semaphore.locked():
            if wait_s <= 0:
                self._reject()
            try:
                async with asyncio.timeout(wait_s):
                    await self._semaphore.acquire()
            except TimeoutError:
                self._reject()
        else:
            await self._semaphore.acquire()
        self.in_flight += 1
        self._idle.clear()

    def _release(self) -> None:
        self.in_flight -= 1
        self._semaphore.release()
        if not self.in_flight:
            self._idle.set()

    def _reject(self) -> None:
        self.rejected += 1
        raise Overloaded(
            f"The relay is at its limit of {self.capacity} concurrent requests "
            "(--max-concurrency); retry shortly.",
            retry_after_s=RETRY_AFTER_FULL_S,
        )


class _Slot:
    """``async with gate.slot():`` a class rather than a generator: one per request."""

    __slots__ = ("_gate", "_wait_s")

    def __init__(self, gate: ConcurrencyGate, wait_s: float) -> None:
        self._gate = gate
        self._wait_s = wait_s

    async def __aenter__(self) -> None:
        await self._gate._acquire(self._wait_s)

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        traceback: TracebackType | None) -> None:
        self._gate._release()
