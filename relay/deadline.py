"""Deadlines on running tasks: ``asyncio.timeout``'s contract, with no timer per use.

The non-stream path bounds every request by ``--nonstream-deadline``. Live,
a timer per request costs far more than its micro-benchmark: on uvloop each
``call_at`` + ``cancel`` is a libuv timer started, stopped and closed, and
measured 7-10 CPU-µs per request under load (``asyncio.timeout`` adds its own
object on top). So the deadlines of one length share one ticker, as the
hand-written upstream pool's read deadlines once did::

    deadline = deadlines.start()  # in the task to bound
    try:
        ...
    except asyncio.CancelledError:
        if deadline.expired():
            raise TimeoutError from None
        raise
    finally:
        deadline.cancel()

The price is precision: a deadline fires up to a quarter of its length (at
most 1 s) late, which a 95 s bound on a whole answer does not notice.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["Deadline", "Deadlines", "tick_for"]

#: the ticker's bounds: often enough for a short test timeout, at most once a second.
_MIN_TICK_S = 0.005
_MAX_TICK_S = 1.0


def tick_for(deadline_s: float) -> float:
    """The tick that sees a deadline ``deadline_s`` away at most a quarter of it late."""
    return min(_MAX_TICK_S, max(_MIN_TICK_S, deadline_s / 4))


class Deadlines:
    """Every running deadline of one length, and the one ticker that fires them.

    One length means they expire in the order they started, so a tick looks
    at the oldest only; a deadline cancelled in time leaves an insertion-ordered
    dict in O(1). The ticker runs only while a deadline is pending.
    """

    __slots__ = ("_loop", "_pending", "_tick_s", "_ticker", "delay_s")

    def __init__(self, delay_s: float) -> None:
        if delay_s <= 0:
            raise ValueError("a deadline must lie in the future")
        self.delay_s = delay_s
        self._tick_s = tick_for(delay_s)
        self._pending: dict[Deadline, None] = {}
        self._ticker: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> Deadline:
        """Cancel the running task ``delay_s`` from now, unless the deadline's ``cancel()`` comes first."""
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a deadline must start inside a task")
        loop = self._loop = task.get_loop()
        deadline = Deadline(self, task, loop.time() + self.delay_s)
        self._pending[deadline] = None
        if self._ticker is None:
            self._ticker = loop.call_later(self._tick_s, self._tick)
        return deadline

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def ticking(self) -> bool:
        return self._ticker is not None

    def discard(self, deadline: Deadline) -> None:
        self._pending.pop(deadline, None)

    def _tick(self) -> None:
        self._ticker = None
        assert self._loop is not None  # set by the start() that started the ticker
        now = self._loop.time()
        due = []
        for deadline in self._pending:
            if deadline.due > now:
                break
            due.append(deadline)
        for deadline in due:
            del self._pending[deadline]
            deadline.fire()
        if self._pending:
            self._ticker = self._loop.call_later(self._tick_s, self._tick)

    def close(self) -> None:
        """Stop the ticker (the app is shutting down); pending deadlines no longer fire."""
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        self._pending.clear()


class Deadline:
    """One task's deadline, started by ``Deadlines.start``."""

    __slots__ = ("_cancelling", "_clock", "_fired", "_task", "due")

    def __init__(self, clock: Deadlines, task: asyncio.Task[Any], due: float) -> None:
        self._clock = clock
        self._task = task
        #: cancellations already pending when the deadline started (an outer one is not ours).
        self._cancelling = task.cancelling()
        self._fired = False
        self.due = due

    def fire(self) -> None:
        self._fired = True
        self._task.cancel()

    def expired(self) -> bool:
        """On a ``CancelledError``: whether it was this deadline's (then it is taken back).

        False when someone else cancelled the task too (a client that left):
        that cancellation must go on.
        """
        if not self._fired:
            return False
        self._fired = False  # uncancel once only
        return self._task.uncancel() <= self._cancelling

    def cancel(self) -> None:
        """The block is over: the deadline no longer applies (a fired one is taken back)."""
        self._clock.discard(self)
        if self._fired:  # it fired, but the block ended another way: undo its cancel request
            self._fired = False
            self._task.uncancel()
