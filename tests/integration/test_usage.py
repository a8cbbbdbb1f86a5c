"""Usage per relay key and per pool account, per UTC day: ``GET /status/usage?days=N`` (issue 21 §3).

Counted where every request ends (``relay_route``), kept in the state backend:
memory, or a real ``redis-server`` that two relays share. Expiry is checked on
the records themselves: Redis' own TTL, and the memory backend's clock.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from relay.emulator import RunningEmulator
from relay.state.redis_state import RedisState
from relay.state.usage import DAY_S, day_of, day_start_s, days_back
from tests.conftest import MODEL, RelayFactory, chat_body, directive, parse_sse
from tests.integration.accounts_support import RedisServer
from tests.integration.accounts_support import redis_server as private_redis_server
from tests.integration.status_support import ADMIN_KEY, RELAY_KEY, bearer, chat, pool_config, start_pool_relay

USAGE_FIELDS = {"requests", "prompt_tokens", "completion_tokens", "errors"}


@pytest.fixture
async def redis_server() -> AsyncIterator[RedisServer]:
    async with private_redis_server() as server:
        yield server


async def usage(session: aiohttp.ClientSession, relay: str, days: int | str | None = None) -> dict[str, Any]:
    query = "" if days is None else f"?days={days}"
    async with session.get(relay + "/status/usage" + query, headers=bearer(ADMIN_KEY)) as response:
        assert response.status == 200, await response.text()
        assert response.headers["Cache-Control"] == "no-store"
        body: dict[str, Any] = await response.json()
        return body


async def test_usage_counts_each_keys_and_accounts_requests_and_errors_today(
        relay_factory: RelayFactory, emulator: RunningEmulator, tmp_path: Path) -> None:
    """Three answers, one refusal by the key's own model list and one upstream failure: the key made
    five requests with two errors; the accounts served four, one of them failed."""
    operator = pool_config(emulator, models=frozenset({MODEL}))
    relay = await start_pool_relay(relay_factory, emulator, tmp_path, operator=operator)
    async with aiohttp.ClientSession() as session:
        statuses = [await chat(session, relay), await chat(session, relay, stream=True), await chat(session, relay),
                    await chat(session, relay, model="qwen-not-allowed"),
                    await chat(session, relay, fault="v2_error", code="RequestValidationError")]
        assert statuses[:4] == [200, 200, 200, 403] and statuses[4] >= 400
        body = await usage(session, relay, days=1)
    (today,) = body["days"]
    assert today["date"] == day_of(time.time())
    alice = today["keys"]["alice"]
    assert set(alice) == USAGE_FIELDS
    assert (alice["requests"], alice["errors"]) == (5, 2)
    accounts = today["accounts"]
    assert set(accounts) <= {"a", "b"} and all(set(counts) == USAGE_FIELDS for counts in accounts.values())
    assert sum(counts["requests"] for counts in accounts.values()) == 4
    assert sum(counts["errors"] for counts in accounts.values()) == 1


async def test_usage_lists_the_last_n_days_oldest_first_within_usage_days(
        relay_factory: RelayFactory, emulator: RunningEmulator, tmp_path: Path) -> None:
    relay = await start_pool_relay(relay_factory, emulator, tmp_path, usage_days=5)
    async with aiohttp.ClientSession() as session:
        assert await chat(session, relay) == 200
        three = await usage(session, relay, days=3)
        default = await usage(session, relay)
        five = await usage(session, relay, days=5)
        for bad in ("0", "6", "-1", "two", "2.5", ""):
            async with session.get(relay + f"/status/usage?days={bad}", headers=bearer(ADMIN_KEY)) as response:
                error = (await response.json())["error"]
                assert response.status == 400 and error["param"] == "days" and "--usage-days" in error["message"]
    today = day_of(time.time())
    assert [day["date"] for day in three["days"]] == days_back(today, 3)
    assert three["days"][-1]["date"] == today and three["days"][-1]["keys"]["alice"]["requests"] == 1
    assert [day["keys"] for day in three["days"][:2]] == [{}, {}]
    assert len(default["days"]) == 5 and len(five["days"]) == 5  # 7 by default, but only 5 are kept


async def test_two_relays_sharing_redis_count_into_the_same_days(
        relay_factory: RelayFactory, emulator: RunningEmulator, tmp_path: Path, redis_server: RedisServer) -> None:
    """Requests through either relay add up, and either one reports the fleet's total."""
    operator = pool_config(emulator)
    first = await start_pool_relay(relay_factory, emulator, tmp_path / "1", operator=operator, state=redis_server.url)
    second = await start_pool_relay(relay_factory, emulator, tmp_path / "2", operator=operator,
                                    state=redis_server.url)
    async with aiohttp.ClientSession() as session:
        statuses = [await chat(session, first) for _ in range(3)] + [await chat(session, second) for _ in range(2)]
        assert statuses == [200] * 5
        await usage(session, second)  # each relay writes its own pending counts before it answers
        from_first = (await usage(session, first, days=1))["days"][0]
        from_second = (await usage(session, second, days=1))["days"][0]
        async with session.get(first + "/status.json", headers=bearer(ADMIN_KEY)) as response:
            report = await response.json()
    assert from_first == from_second
    assert from_first["keys"]["alice"]["requests"] == 5
    assert sum(counts["requests"] for counts in from_first["accounts"].values()) == 5
    assert report["keys"][0]["requests_today"] == 5
    assert sum(account["requests_today"] for account in report["accounts"]) == 5


async def test_redis_keeps_a_days_usage_for_usage_days_then_drops_it(
        relay_factory: RelayFactory, emulator: RunningEmulator, tmp_path: Path, redis_server: RedisServer) -> None:
    """Each day is one hash whose expiry is the day's start plus --usage-days; a day already that old
    is not kept at all."""
    relay = await start_pool_relay(relay_factory, emulator, tmp_path, state=redis_server.url, usage_days=3)
    async with aiohttp.ClientSession() as session:
        assert await chat(session, relay) == 200
        await usage(session, relay)
    today = day_of(time.time())
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        expires_at = await client.expiretime(f"qwen-relay:usage:{today}")
        assert expires_at == day_start_s(today) + 3 * DAY_S
        assert await client.hget(f"qwen-relay:usage:{today}", "key:alice:requests") == b"1"
        # What a relay writes for a day older than --usage-days is gone at once.
        state = RedisState(redis_server.url)
        try:
            old, kept = days_back(today, 4)[0], days_back(today, 3)[0]
            counts = {("key", "alice", "requests"): 7}
            await state.add_usage(old, counts, 3)
            await state.add_usage(kept, counts, 3)
            assert await client.exists(f"qwen-relay:usage:{old}") == 0
            assert await state.load_usage([old, kept]) == {old: {}, kept: counts}
        finally:
            await state.close()
    finally:
        await client.aclose()


async def test_usage_counts_the_tokens_each_client_was_told_it_used(
        relay_factory: RelayFactory, emulator: RunningEmulator, tmp_path: Path) -> None:
    """The day's prompt and completion tokens of the key (and of the accounts together) are the sums of
    the ``usage`` the clients received: a whole answer's, and a stream's final usage chunk."""
    relay = await start_pool_relay(relay_factory, emulator, tmp_path)
    told = {"prompt_tokens": 0, "completion_tokens": 0}
    async with aiohttp.ClientSession() as session:
        for stream in (False, True, False):
            body = chat_body(stream=stream, text=directive(reply="counted " * 20, usage=True))
            if stream:
                body["stream_options"] = {"include_usage": True}
            async with session.post(relay + "/v1/chat/completions", json=body, headers=bearer(RELAY_KEY)) as response:
                assert response.status == 200
                text = await response.text()
            if stream:
                answer = json.loads([event for event in parse_sse(text) if event != "[DONE]"][-1])
            else:
                answer = json.loads(text)
            for field in told:
                told[field] += answer["usage"][field]
        (today,) = (await usage(session, relay, days=1))["days"]
    assert told["prompt_tokens"] > 0 and told["completion_tokens"] > 0
    alice = today["keys"]["alice"]
    assert (alice["prompt_tokens"], alice["completion_tokens"]) == (told["prompt_tokens"], told["completion_tokens"])
    accounts = today["accounts"].values()
    assert sum(counts["prompt_tokens"] for counts in accounts) == told["prompt_tokens"]
    assert sum(counts["completion_tokens"] for counts in accounts) == told["completion_tokens"]
