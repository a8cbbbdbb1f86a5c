"""@stage generators stay out of the loop's async-generator registry, and are still finalized."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncGenerator, AsyncIterator, Iterator

from relay.pipeline import stage, untrack_stages


@contextlib.contextmanager
def first_iterations() -> Iterator[list[AsyncGenerator[object, None]]]:
    """The generators the first-iteration hook sees, with the hooks restored afterwards.

    Entered inside the test: the loop sets its own hooks when it starts running.
    """
    seen: list[AsyncGenerator[object, None]] = []
    old = sys.get_asyncgen_hooks()
    sys.set_asyncgen_hooks(firstiter=seen.append, finalizer=old.finalizer)
    try:
        yield seen
    finally:
        sys.set_asyncgen_hooks(*old)


@stage
async def marked() -> AsyncGenerator[int, None]:
    yield 1
    yield 2


async def plain() -> AsyncGenerator[int, None]:
    yield 3


async def test_stages_skip_the_loops_record_and_other_generators_do_not() -> None:
    with first_iterations() as seen:
        untrack_stages()
        wrapped = sys.get_asyncgen_hooks().firstiter
        untrack_stages()  # once is enough: the hook is not wrapped twice
        assert sys.get_asyncgen_hooks().firstiter is wrapped
        ours, theirs = marked(), plain()
        assert await anext(ours) == 1 and await anext(theirs) == 3
        assert seen == [theirs]
        await ours.aclose()
        await theirs.aclose()


async def test_a_stage_dropped_unclosed_is_still_closed_by_the_loop() -> None:
    closed = asyncio.Event()

    @stage
    async def leaky() -> AsyncIterator[int]:
        try:
            yield 1
            yield 2
        finally:
            closed.set()

    with first_iterations() as seen:
        untrack_stages()
        dropped = leaky()
        assert await anext(dropped) == 1
        del dropped  # never closed: the finalizer hook, taken at the first iteration, closes it
        async with asyncio.timeout(1):
            await closed.wait()
        assert seen == []
