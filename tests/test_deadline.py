"""Deadlines: asyncio.timeout's contract (which cancellation is whose), on one shared ticker."""

from __future__ import annotations

import asyncio

import pytest

from relay.deadline import Deadlines, tick_for


async def test_an_expired_deadline_cancels_the_block_and_owns_the_cancellation() -> None:
    deadline = Deadlines(0.01).start()
    never = asyncio.get_running_loop().create_future()
    try:
        with pytest.raises(asyncio.CancelledError):
            await never
        assert deadline.expired()
    finally:
        deadline.cancel()
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0  # taken back: the task is not being cancelled
    await asyncio.sleep(0)  # and it still runs


async def test_a_deadline_cancelled_in_time_never_fires_and_the_ticker_stops() -> None:
    deadlines = Deadlines(0.01)
    deadline = deadlines.start()
    deadline.cancel()
    await asyncio.sleep(0.05)  # time passing is what is tested: several ticks' worth
    assert not deadline.expired()
    assert deadlines.pending == 0 and not deadlines.ticking


async def test_someone_elses_cancellation_is_not_the_deadlines() -> None:
    started = asyncio.Event()
    verdict: list[bool] = []

    async def block() -> None:
        deadline = Deadlines(30).start()
        try:
            started.set()
            await asyncio.get_running_loop().create_future()
        except asyncio.CancelledError:
            verdict.append(deadline.expired())
            raise
        finally:
            deadline.cancel()

    task = asyncio.ensure_future(block())
    await started.wait()
    task.cancel()  # a client that left
    with pytest.raises(asyncio.CancelledError):
        await task
    assert verdict == [False]


async def test_deadlines_fire_in_the_order_they_started_each_on_its_own_time() -> None:
    deadlines = Deadlines(0.1)
    loop = asyncio.get_running_loop()
    ended: dict[str, float] = {}

    async def bounded(name: str) -> None:
        deadline = deadlines.start()
        try:
            await loop.create_future()
        except asyncio.CancelledError:
            assert deadline.expired()
            ended[name] = loop.time()
        finally:
            deadline.cancel()

    first_started = loop.time()
    first = asyncio.ensure_future(bounded("first"))
    await asyncio.sleep(0.06)
    second_started = loop.time()
    second = asyncio.ensure_future(bounded("second"))
    await first
    assert not second.done()  # the shared tick fired only the deadline that was due
    await second
    late = tick_for(0.1) + 0.05  # a quarter of the length, and scheduling slack
    assert 0.1 <= ended["first"] - first_started <= 0.1 + late
    assert 0.1 <= ended["second"] - second_started <= 0.1 + late
    assert deadlines.pending == 0


def test_a_deadline_must_lie_in_the_future() -> None:
    with pytest.raises(ValueError):
        Deadlines(0)
