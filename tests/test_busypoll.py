"""BusyPoll (--busy-poll-us): the loop keeps polling for its window after a request, then may sleep.

Timing on a loaded machine (issue 21): a test process can be descheduled for tens of
milliseconds anywhere. So each bound is taken from a clock read *before* the
``activity()`` it refers to, which makes "the spinning lasted at least the window"
exact however late the loop runs; no test asserts the spinning is still on after
something that takes time (a pause there would end a window legitimately), and "it
stops" is bounded generously.
"""

from __future__ import annotations

import asyncio
import time

from relay.busypoll import BusyPoll

WINDOW_S = 0.02
#: "it stops at all": far beyond the window, so a loaded machine never trips it.
STOPS_WITHIN_S = 10.0


async def spinning_ended_at(busy: BusyPoll) -> float:
    """The clock reading once the spinning has stopped; every `sleep(0)` is one loop iteration."""
    deadline = time.perf_counter() + STOPS_WITHIN_S
    while busy.spinning:
        await asyncio.sleep(0)
        assert time.perf_counter() < deadline, "the spinning never stops"
    return time.perf_counter()


async def test_spinning_lasts_the_window_then_stops() -> None:
    busy = BusyPoll(WINDOW_S)
    assert not busy.spinning  # nothing spins before the first request
    before = time.perf_counter()
    busy.activity()
    assert busy.spinning
    assert await spinning_ended_at(busy) - before >= WINDOW_S


async def test_each_request_extends_the_window_and_a_later_one_restarts_it() -> None:
    """Requests keep coming for two windows; the spinning outlasts the *last* one by a window.

    Were the window counted from the first request only, the spinning would stop a
    window after it, before the last request's window is over.
    """
    busy = BusyPoll(WINDOW_S)
    first = last = time.perf_counter()
    busy.activity()
    while last - first < WINDOW_S * 2:
        await asyncio.sleep(0)
        last = time.perf_counter()
        busy.activity()
    assert await spinning_ended_at(busy) - last >= WINDOW_S
    busy.activity()  # and a later request starts it again
    assert busy.spinning
    await spinning_ended_at(busy)
