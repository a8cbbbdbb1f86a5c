"""Usage per relay key and per pool account, per UTC day, recorded off the hot path.

Strategy. ``relay_route`` calls ``record`` as each request ends: a few
additions to this process's pending row of integers per key and account,
nothing awaited, no task per request. A write is scheduled at most once per ``FLUSH_INTERVAL_S`` and hands
all pending counts to the state backend at once (Redis: one pipelined round
trip per day), so a fleet's Redis sees a few writes a second per relay however
busy it is. Readers (``/status``) call ``flush`` first, so a relay always shows
what it has recorded itself; other relays' counts arrive within the interval.

Bounded: pending rows are keyed by configured names (relay keys, accounts),
and past ``MAX_PENDING_ROWS`` rows a new name is dropped and logged, never
queued. A write the backend cannot take (Redis down) is lost, as
the state backend fails open for limits too. ``close`` writes what is pending
before the backend closes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from ..state import StateBackend
from ..state.usage import DAY_S, UsageCounts, day_of

__all__ = ["COUNTERS", "FLUSH_INTERVAL_S", "MAX_PENDING_ROWS", "UsageRecorder"]

_log = logging.getLogger("relay.error")

#: what is counted for a key or an account each day.
COUNTERS = ("requests", "prompt_tokens", "completion_tokens", "errors", "rejections", "challenges")
#: pending counts wait at most this long for their write: a second of staleness on another relay's page.
FLUSH_INTERVAL_S = 1.0
#: distinct (day, kind, name) held between writes: the configured keys and accounts, with room to spare.
MAX_PENDING_ROWS = 2_000
#: what ``_new_row`` answers for a name past MAX_PENDING_ROWS: nothing is counted into it.
_DROPPED: list[int] = []


_REQUESTS, _PROMPT, _COMPLETION, _ERRORS, _REJECTIONS, _CHALLENGES = range(len(COUNTERS))
#: one pending day: per kind ("key", "account"), per name, the COUNTERS in order.
_Rows = dict[str, dict[str, list[int]]]


class UsageRecorder:
    """Adds up usage in this process and writes it to the state backend in batches."""

    def __init__(self, state: StateBackend, keep_days: int, clock: Callable[[], float] = time.time) -> None:
        self.state = state
        #: --usage-days: each day's record expires this many days after the day began.
        self.keep_days = keep_days
        self._clock = clock
        self._pending: dict[str, _Rows] = {}
        self._pending_rows = 0
        self._timer: asyncio.TimerHandle | None = None
        self._writing: asyncio.Task[None] | None = None
        self._closed = False
        self._day = ""
        self._day_ends_s = 0.0
        #: names not counted because MAX_PENDING_ROWS were pending.
        self.dropped = 0

    def today(self) -> str:
        """The current UTC day, ``YYYY-MM-DD`` (formatted once a day, not once a request)."""
        now = self._clock()
        if now >= self._day_ends_s or now < self._day_ends_s - DAY_S:
            self._day = day_of(now)
            self._day_ends_s = (now // DAY_S + 1) * DAY_S
        return self._day

    def record(self, *, key: str | None, account: str | None, failed: bool, rejected: bool,
               prompt_tokens: int, completion_tokens: int, challenged: tuple[str, ...] = ()) -> None:
        """Count one finished request for its key and the account that served it; never waits.

        A row of integers per name, added to in place: about 1 µs a request.
        """
        day = self._pending.get(self.today())
        if day is None:
            day = self._pending[self._day] = {"key": {}, "account": {}}
        for kind, name in (("key", key), ("account", account)):
            if name is None:
                continue
            row = day[kind].get(name) or self._new_row(day[kind], name)
            if row is _DROPPED:
                continue
            row[_REQUESTS] += 1
            row[_PROMPT] += prompt_tokens
            row[_COMPLETION] += completion_tokens
            if failed:
                row[_ERRORS] += 1
            if rejected and kind == "key":
                row[_REJECTIONS] += 1
        for name in challenged:
            row = day["account"].get(name) or self._new_row(day["account"], name)
            if row is not _DROPPED:
                row[_CHALLENGES] += 1
        if self._timer is None and not self._closed:
            self._timer = asyncio.get_running_loop().call_later(FLUSH_INTERVAL_S, self._start_write)

    def _new_row(self, rows: dict[str, list[int]], name: str) -> list[int]:
        if self._pending_rows >= MAX_PENDING_ROWS:
            if not self.dropped:
                _log.warning("usage_dropped", extra={"fields": {"pending_rows": self._pending_rows}})
            self.dropped += 1
            return _DROPPED
        self._pending_rows += 1
        row = rows[name] = [0] * len(COUNTERS)
        return row

    async def flush(self) -> None:
        """Return once everything recorded before the call is in the state backend.

        Shielded: a reader that goes away does not cancel a write others wait on.
        Three turns at most: the write running now, then one of the rest.
        """
        for _ in range(3):
            writing = self._writing
            if writing is not None and not writing.done():
                await asyncio.shield(writing)
            elif self._pending:
                await asyncio.shield(self._start_write())
            else:
                return

    async def close(self) -> None:
        """Write what is pending and record no more (app cleanup, before the backend closes)."""
        self._closed = True
        await self.flush()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _start_write(self) -> asyncio.Task[None]:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._writing is None or self._writing.done():
            self._writing = asyncio.get_running_loop().create_task(self._write())
        return self._writing

    async def _write(self) -> None:
        batch, self._pending, self._pending_rows = self._pending, {}, 0
        try:
            for day, rows in batch.items():
                await self.state.add_usage(day, _counts(rows), self.keep_days)
        except Exception:  # noqa: BLE001 (a bug in a backend must not kill later writes; it is logged)
            _log.exception("usage_write_failed")
        finally:
            if self._pending and self._timer is None and not self._closed:
                self._timer = asyncio.get_running_loop().call_later(FLUSH_INTERVAL_S, self._start_write)


def _counts(rows: _Rows) -> UsageCounts:
    """A pending day's rows as the backend's counts, zeros left out."""
    return {(kind, name, counter): value for kind, names in rows.items() for name, row in names.items()
            for counter, value in zip(COUNTERS, row, strict=True) if value}
