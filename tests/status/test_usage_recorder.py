"""UsageRecorder: counting never waits on the state backend, writes are batched and bounded (issue 21 §3).

The backend here is the real ``MemoryState``; one test holds its writes back
behind an event (a subclass overriding only ``add_usage``), the way a slow Redis
would, to show that ``record`` does not wait and that what piles up meanwhile
is bounded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from relay.state import MemoryState
from relay.state.usage import DAY_S, day_of, day_start_s, days_back, expires_at_s
from relay.status.usage import FLUSH_INTERVAL_S, MAX_PENDING_ROWS, UsageRecorder

NOON = day_start_s("2026-03-14") + DAY_S / 2


class HeldState(MemoryState):
    """MemoryState whose usage writes wait for ``release``; it counts the writes it was given."""

    def __init__(self) -> None:
        super().__init__(wall_clock=lambda: NOON)
        self.release = asyncio.Event()
        #: set when a write has begun (and is being held).
        self.writing = asyncio.Event()
        self.writes = 0

    async def add_usage(self, day: str, counts: Mapping[tuple[str, str, str], int], keep_days: int) -> None:
        self.writes += 1
        self.writing.set()
        await self.release.wait()
        await super().add_usage(day, counts, keep_days)


def ok(recorder: UsageRecorder, key: str = "alice", account: str | None = "a", **fields: int) -> None:
    recorder.record(key=key, account=account, failed=False, rejected=False,
                    prompt_tokens=fields.get("prompt", 0), completion_tokens=fields.get("completion", 0))


async def test_record_returns_at_once_while_the_backend_is_stuck_and_a_flush_writes_it_all() -> None:
    state = HeldState()
    recorder = UsageRecorder(state, keep_days=30, clock=lambda: NOON)
    for _ in range(1000):
        ok(recorder, prompt=3, completion=5)  # synchronous: would block the test if it awaited anything
    flushing = asyncio.get_running_loop().create_task(recorder.flush())
    async with asyncio.timeout(5):
        await state.writing.wait()  # the flush's write has begun, and is held
    ok(recorder)  # recorded while that write is held: waits for the next one
    assert not flushing.done() and state.writes == 1
    state.release.set()
    async with asyncio.timeout(5):
        await flushing
        await recorder.flush()
    counts = (await state.load_usage(["2026-03-14"]))["2026-03-14"]
    assert counts[("key", "alice", "requests")] == 1001 and counts[("account", "a", "requests")] == 1001
    assert counts[("key", "alice", "prompt_tokens")] == 3000 and counts[("key", "alice", "completion_tokens")] == 5000
    assert state.writes == 2  # 1001 requests, two writes


async def test_pending_counters_are_bounded_and_the_excess_is_dropped_not_queued() -> None:
    state = HeldState()
    recorder = UsageRecorder(state, keep_days=30, clock=lambda: NOON)
    for number in range(MAX_PENDING_ROWS + 50):  # a row each: a key name per request
        ok(recorder, key=f"k{number}", account=None)
    recorder.record(key="k0", account=None, failed=False, rejected=False, prompt_tokens=0, completion_tokens=0,
                    challenged=("one-more",))  # a dropped name's challenge is not counted either
    assert recorder.dropped == 51
    state.release.set()
    async with asyncio.timeout(5):
        await recorder.close()
    counts = (await state.load_usage(["2026-03-14"]))["2026-03-14"]
    assert len(counts) == MAX_PENDING_ROWS and counts[("key", "k0", "requests")] == 2


async def test_pending_usage_is_written_within_the_flush_interval_without_a_reader() -> None:
    state = MemoryState(wall_clock=lambda: NOON)
    recorder = UsageRecorder(state, keep_days=30, clock=lambda: NOON)
    ok(recorder)
    async with asyncio.timeout(FLUSH_INTERVAL_S * 10):
        for _ in range(1000):  # bounded by the deadline too
            if (await state.load_usage(["2026-03-14"]))["2026-03-14"]:
                break
            await asyncio.sleep(FLUSH_INTERVAL_S / 10)  # between two looks at the timer's work
    assert (await state.load_usage(["2026-03-14"]))["2026-03-14"][("key", "alice", "requests")] == 1
    await recorder.close()


async def test_errors_rejections_and_challenges_are_counted_for_their_owner() -> None:
    state = MemoryState(wall_clock=lambda: NOON)
    recorder = UsageRecorder(state, keep_days=30, clock=lambda: NOON)
    recorder.record(key="alice", account=None, failed=True, rejected=True, prompt_tokens=0, completion_tokens=0)
    recorder.record(key="alice", account="b", failed=True, rejected=False, prompt_tokens=0, completion_tokens=0,
                    challenged=("a",))
    await recorder.close()
    counts = (await state.load_usage(["2026-03-14"]))["2026-03-14"]
    assert counts == {("key", "alice", "requests"): 2, ("key", "alice", "errors"): 2,
                      ("key", "alice", "rejections"): 1, ("account", "b", "requests"): 1,
                      ("account", "b", "errors"): 1, ("account", "a", "challenges"): 1}


async def test_the_day_turns_at_utc_midnight() -> None:
    now = [day_start_s("2026-03-14") + DAY_S - 0.5]
    state = MemoryState(wall_clock=lambda: now[0])
    recorder = UsageRecorder(state, keep_days=30, clock=lambda: now[0])
    ok(recorder)
    now[0] += 1.0
    ok(recorder)
    ok(recorder)
    await recorder.close()
    usage = await state.load_usage(["2026-03-14", "2026-03-15"])
    assert usage["2026-03-14"][("key", "alice", "requests")] == 1
    assert usage["2026-03-15"][("key", "alice", "requests")] == 2


async def test_memory_keeps_a_day_for_keep_days_from_its_start() -> None:
    now = [NOON]
    state = MemoryState(wall_clock=lambda: now[0])
    counts = {("key", "alice", "requests"): 1}
    await state.add_usage("2026-03-14", counts, keep_days=2)
    await state.add_usage("2026-03-11", counts, keep_days=2)  # already older than two days: not kept
    assert await state.load_usage(["2026-03-11", "2026-03-14"]) == {"2026-03-11": {}, "2026-03-14": counts}
    now[0] = expires_at_s("2026-03-14", 2) - 1
    assert (await state.load_usage(["2026-03-14"]))["2026-03-14"] == counts
    now[0] += 1
    assert (await state.load_usage(["2026-03-14"]))["2026-03-14"] == {}


def test_day_names_and_ranges_are_utc() -> None:
    assert day_of(day_start_s("2026-03-14")) == "2026-03-14"
    assert day_of(day_start_s("2026-03-14") - 1) == "2026-03-13"
    assert days_back("2026-03-01", 3) == ["2026-02-27", "2026-02-28", "2026-03-01"]
    assert expires_at_s("2026-03-14", 30) - day_start_s("2026-03-14") == 30 * DAY_S
