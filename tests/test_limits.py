"""ConcurrencyGate: free slots are taken without waiting, queued callers are served in order."""

from __future__ import annotations

import asyncio

import pytest

from relay.errors import Overloaded
from relay.limits import ConcurrencyGate


async def test_a_free_slot_is_taken_at_once_and_the_count_returns_to_zero() -> None:
    gate = ConcurrencyGate(2)
    assert gate.try_enter() and gate.try_enter()
    assert not gate.try_enter()
    assert gate.in_flight == 2
    gate.leave()
    gate.leave()
    assert gate.in_flight == 0
    await asyncio.wait_for(gate.wait_idle(), 1)


async def test_a_full_gate_refuses_at_once_without_a_queue() -> None:
    gate = ConcurrencyGate(1)
    await gate.enter(0)
    with pytest.raises(Overloaded):
        await gate.enter(0)
    assert gate.rejected == 1 and gate.in_flight == 1


async def test_a_leaving_slot_goes_to_the_first_waiter_not_to_a_newcomer() -> None:
    gate = ConcurrencyGate(1)
    await gate.enter(0)
    first = asyncio.ensure_future(gate.enter(5))
    second = asyncio.ensure_future(gate.enter(5))
    await asyncio.sleep(0)  # both are in line now
    gate.leave()
    assert not gate.try_enter()  # the slot changed hands; a newcomer cannot take it
    await asyncio.wait_for(first, 1)
    assert not second.done() and gate.in_flight == 1
    gate.leave()
    await asyncio.wait_for(second, 1)
    gate.leave()
    assert gate.in_flight == 0


async def test_a_waiter_that_timed_out_gets_429_and_blocks_nobody_after() -> None:
    gate = ConcurrencyGate(1)
    await gate.enter(0)
    with pytest.raises(Overloaded):
        await gate.enter(0.01)
    gate.leave()
    assert gate.try_enter(), "a timed-out waiter still blocks the free slot"


async def test_a_cancelled_waiter_that_was_just_handed_the_slot_passes_it_on() -> None:
    gate = ConcurrencyGate(1)
    await gate.enter(0)
    first = asyncio.ensure_future(gate.enter(5))
    second = asyncio.ensure_future(gate.enter(5))
    await asyncio.sleep(0)
    gate.leave()  # hands the slot to `first`, which has not run yet
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, 1)
    assert gate.in_flight == 1
