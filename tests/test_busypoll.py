"""BusyPoll (--busy-poll-us): the loop keeps polling for its window after a request, then may sleep."""

from __future__ import annotations

import asyncio
import time

from relay.busypoll import BusyPoll

WINDOW_S = 0.02


async def spin_ends_after(busy: BusyPoll) -> float:
    """Seconds until the spinning stops; every `sleep(0)` is one loop iteration."""
    started = time.perf_counter()
    while busy.spinning:
        await asyncio.sleep(0)
        assert time.perf_counter() - started < 5, "the spinning never stops"
    return time.perf_counter() - started


async def test_spinning_lasts_the_window_then_stops() -> None:
    busy = BusyPoll(WINDOW_S)
    assert not busy.spinning  # nothing spins before the first request
    busy.activity()
    assert busy.spinning
    assert await spin_ends_after(busy) >= WINDOW_S * 0.9


async def test_each_request_extends_the_window_and_a_later_one_restarts_it() -> None:
    busy = BusyPoll(WINDOW_S)
    busy.activity()
    started = time.perf_counter()
    while time.perf_counter() - started < WINDOW_S * 2:  # requests keep coming for two windows
        busy.activity()
        await asyncio.sleep(0)
    assert busy.spinning
    assert await spin_ends_after(busy) >= WINDOW_S * 0.9
    busy.activity()  # and a later request starts it again
    assert busy.spinning
    await spin_ends_after(busy)
