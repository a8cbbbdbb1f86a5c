"""Deadline: asyncio.timeout's contract (which cancellation is whose) on the non-stream path."""

from __future__ import annotations

import asyncio

import pytest

from relay.deadline import Deadline


async def test_an_expired_deadline_cancels_the_block_and_owns_the_cancellation() -> None:
    deadline = Deadline(0.01)
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


async def test_a_deadline_cancelled_in_time_never_fires() -> None:
    deadline = Deadline(0.01)
    deadline.cancel()
    await asyncio.sleep(0.05)
    assert not deadline.expired()


async def test_someone_elses_cancellation_is_not_the_deadlines() -> None:
    started = asyncio.Event()
    verdict: list[bool] = []

    async def block() -> None:
        deadline = Deadline(30)
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

