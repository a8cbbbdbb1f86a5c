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
import collections
from types import TracebackType
from typing import NoReturn

from .errors import Overloaded

__all__ = ["RETRY_AFTER_FULL_S", "ConcurrencyGate", "GateSlot"]

#: a relay-side 429 clears as soon as one stream ends; 1 s keeps SDK backoff short.
RETRY_AFTER_FULL_S = 1


class ConcurrencyGate:
    """A counting gate that refuses instead of queueing without bound when full.

    A plain counter and a FIFO of waiters rather than an ``asyncio.Semaphore``:
    ``try_enter`` takes a free slot without a coroutine (the common case, once
    per request), and ``leave`` hands a slot straight to the first waiter, so a
    newcomer can never overtake the line.
    """

    __slots__ = ("_idle", "_waiters", "capacity", "in_flight", "rejected")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_flight = 0
        self.rejected = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._idle = asyncio.Event()
        self._idle.set()

    async def wait_idle(self) -> None:
        """Return once no request holds a slot (the drain waits on this)."""
        await self._idle.wait()

    def try_enter(self) -> bool:
        """Take a free slot now, if there is one and nobody is waiting for it."""
        if self.in_flight >= self.capacity or self._waiters:
            return False
        if not self.in_flight:
            self._idle.clear()
        self.in_flight += 1
        return True

    async def enter(self, wait_s: float) -> None:
        """Take a slot, waiting up to ``wait_s`` in line for one; else raise ``Overloaded`` (429)."""
        if self.try_enter():
            return
        if wait_s <= 0:
            self._reject()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(wait_s):
                await waiter
        except (TimeoutError, asyncio.CancelledError) as exc:
            if waiter.done() and not waiter.cancelled():
                self.leave()  # handed a slot in the same instant: pass it on
            if isinstance(exc, TimeoutError):
                self._reject()
            raise
        finally:
            if waiter in self._waiters:  # timed out or cancelled (a waiter handed a slot is gone)
                self._waiters.remove(waiter)

    def slot(self, wait_s: float) -> GateSlot:
        """``async with gate.slot(wait_s):`` hold a slot for the block (``enter``, then ``leave``)."""
        return GateSlot(self, wait_s)

    def leave(self) -> None:
        """Give the slot back: to the first waiter in line, else to the pool."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot changes hands: in_flight stays
                return
        self.in_flight -= 1
        if not self.in_flight:
            self._idle.set()

    def _reject(self) -> NoReturn:
        self.rejected += 1
        raise Overloaded(
            f"The relay is at its limit of {self.capacity} concurrent requests "
            "(--max-concurrency); retry shortly.",
            retry_after_s=RETRY_AFTER_FULL_S,
        )


class GateSlot:
    """What ``async with gate.slot(...)`` runs: a class, so a stream that holds the
    slot for its whole life keeps no suspended coroutine frame for it."""

    __slots__ = ("_gate", "_wait_s")

    def __init__(self, gate: ConcurrencyGate, wait_s: float) -> None:
        self._gate = gate
        self._wait_s = wait_s

    async def __aenter__(self) -> None:
        if not self._gate.try_enter():
            await self._gate.enter(self._wait_s)

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        traceback: TracebackType | None) -> None:
        self._gate.leave()
