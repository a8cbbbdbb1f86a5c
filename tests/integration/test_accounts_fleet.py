"""Accounts shared by a fleet: relays in separate processes, one real redis-server (issue 17).

Everything is its own program: ``python -m relay.emulator --access-ttl N`` is the
chat service and the auth host (its logins made over ``POST /_emulator/logins``),
``redis-server`` the shared state, and each relay a ``python -m relay`` process
with ``--state redis://…`` and the same config naming the same login. A refresh
token may be spent once only, so the fleet must refresh each expiry once, not once
per relay, and a relay started later must resume the rotated jar from Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from tests.emulator.support import refresh_headers
from tests.integration.accounts_support import (
    Account,
    EmulatorProcess,
    Relay,
    ask,
    metrics_text,
    poll,
    redis_server,
    refresh_print,
    run_load,
    sample,
    start_relay,
    write_config,
)

#: where a relay with ``--state redis://`` keeps the jar of account "a" (relay/state/redis_state.py),
#: and the fleet's refresh lock of that login (held from before the refresh call until the jar is stored).
JAR_KEY = "qwen-relay:account:a"
LOCK_KEY = "qwen-relay:lock:refresh:a"

Stack = contextlib.AsyncExitStack


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    async with contextlib.AsyncExitStack() as exits:
        yield exits


async def relay_with(stack: Stack, config: str, emulator: EmulatorProcess, redis_url: str, state_dir: Path
                     ) -> Relay:
    relay = await start_relay("--config", config, "--upstream", emulator.url, "--auth-origin", emulator.url,
                              "--state", redis_url, "--state-dir", str(state_dir))
    stack.push_async_callback(relay.close)
    return relay


def results(refreshes: list[dict[str, Any]]) -> list[str]:
    return [record["result"] for record in refreshes]


async def test_two_relays_sharing_redis_refresh_each_expiry_once(stack: Stack, tmp_path: Path) -> None:
    """Two relays, one login whose tokens live 2 s, load on both for 10 s: every request succeeds,
    every refresh token is spent once ("ok", unique fingerprints), and the refreshes are one per
    expiry, about elapsed / 1.5-2.25 s (tokens live 2-3 s, refreshed a quarter early), not twice that."""
    emulator = await stack.enter_async_context(EmulatorProcess.running("--access-ttl", "2"))
    redis_url = (await stack.enter_async_context(redis_server())).url
    login = await emulator.create_login("fleet@example.com")
    config = write_config(tmp_path, [Account("a", login["cookie"])])
    started = time.monotonic()
    first, second = await asyncio.gather(relay_with(stack, config, emulator, redis_url, tmp_path / "state-1"),
                                         relay_with(stack, config, emulator, redis_url, tmp_path / "state-2"))

    outcomes = await run_load([first.url, second.url], clients=4, duration_s=10)
    elapsed_s = time.monotonic() - started

    failures = [outcome for outcome in outcomes if outcome.problem is not None]
    assert failures == [], f"{len(failures)} of {len(outcomes)} failed, e.g. {failures[:3]}"
    refreshes = await emulator.refreshes()
    assert results(refreshes) == ["ok"] * len(refreshes), refreshes
    spent = [record["token_fingerprint"] for record in refreshes]
    assert len(set(spent)) == len(spent), "a refresh token was presented twice"
    assert spent[0] == refresh_print(login["refresh_token"])
    assert elapsed_s / 2.25 - 1 <= len(refreshes) <= elapsed_s / 1.5 + 1, (len(refreshes), elapsed_s)
    gaps = [later["at"] - earlier["at"] for earlier, later in itertools.pairwise(refreshes)]
    assert min(gaps) >= 1.0, gaps  # never two refreshes for one expiry
    refused = [(record["path"], record["rejected"]) for record in await emulator.log() if record["rejected"]]
    assert refused == [], refused[:5]
    for relay in (first, second):
        assert any(entry.get("event") == "request" and entry.get("status") == 200 for entry in relay.log)


async def test_a_restart_resumes_the_rotated_login_from_redis(stack: Stack, tmp_path: Path) -> None:
    """As with --state-dir, but the jar lives in Redis: the new relay (with an empty --state-dir of
    its own) resumes it, its first request meets no 401, and the pasted refresh token is spent once."""
    emulator = await stack.enter_async_context(EmulatorProcess.running("--access-ttl", "3"))
    redis_url = (await stack.enter_async_context(redis_server())).url
    login = await emulator.create_login("restart@example.com")
    config = write_config(tmp_path, [Account("a", login["cookie"])])
    store = aioredis.Redis.from_url(redis_url)
    stack.push_async_callback(store.aclose)
    first = await relay_with(stack, config, emulator, redis_url, tmp_path / "state-1")
    async with aiohttp.ClientSession() as session:
        assert (await ask(session, first.url, stream=False)).problem is None

        async def is_stored() -> bool:  # and the refresh over: its fleet lock released
            return bool(await store.exists(JAR_KEY)) and not await store.exists(LOCK_KEY)

        await poll(is_stored, "the rotated jar stored in Redis", timeout_s=15)
        await first.kill()  # at once: the next refresh is more than 2 s away
        jar = json.loads(await store.get(JAR_KEY))["cookies"]
        assert jar["refresh_token"] != login["refresh_token"] and jar["token"] != login["access_token"]
        assert results(await emulator.refreshes()) == ["ok"]

        log_mark = len(await emulator.log())
        second = await relay_with(stack, config, emulator, redis_url, tmp_path / "state-2")
        outcome = await ask(session, second.url, stream=True)
        assert outcome.problem is None, outcome
        since = [(r["path"], r["status"], r["rejected"]) for r in (await emulator.log())[log_mark:]]
        # The model list came from Redis too: the first upstream call is the new chat, and it passes.
        assert since[:2] == [("/api/v2/chats/new", 200, None), ("/api/v2/chat/completions", 200, None)], since
        assert [rejected for _, _, rejected in since if rejected] == []
        assert second.events("account_resumed") != []

        async def refreshed_again() -> bool:
            return len(await emulator.refreshes()) >= 2

        await poll(refreshed_again, "the second relay refreshed", timeout_s=15)
        assert (await ask(session, second.url, stream=False)).problem is None
    refreshes = await emulator.refreshes()
    assert results(refreshes) == ["ok"] * len(refreshes), refreshes
    spent = [record["token_fingerprint"] for record in refreshes]
    assert len(set(spent)) == len(spent) and spent.count(refresh_print(login["refresh_token"])) == 1
    assert not (tmp_path / "state-2" / "accounts" / "a.json").exists()  # Redis carried it, not a file


async def test_a_login_pasted_anew_for_a_disabled_account_is_used_with_redis(stack: Stack, tmp_path: Path) -> None:
    """The relay disables account "a" when its refresh is answered 401; the operator signs in again
    and pastes the new login under the same name. The new login is a new entry (relay/operator/pool.py
    ``update``): the restarted relay must serve with it, not keep the old login's "disabled" from Redis."""
    emulator = await stack.enter_async_context(EmulatorProcess.running("--access-ttl", "2"))
    redis_url = (await stack.enter_async_context(redis_server())).url
    old = await emulator.create_login("again@example.com")
    async with aiohttp.ClientSession() as session:
        async with session.get(emulator.url + "/api/v2/auths/refresh",
                               headers=refresh_headers(f"refresh_token={old['refresh_token']}")) as response:
            assert (await response.json())["success"] is True  # the browser spent the pasted refresh token
        first = await relay_with(stack, write_config(tmp_path, [Account("a", old["cookie"])]), emulator,
                                 redis_url, tmp_path / "state")

        async def is_disabled() -> bool:
            metrics = await metrics_text(session, first.url)
            return sample(metrics, 'qwen_relay_account_state{account="a",state="disabled"}') == 1

        await poll(is_disabled, "account a disabled")
        await first.kill()

        new = await emulator.create_login("again@example.com")
        second = await relay_with(stack, write_config(tmp_path, [Account("a", new["cookie"])]), emulator,
                                  redis_url, tmp_path / "state")
        outcome = await ask(session, second.url, stream=False)
        metrics = await metrics_text(session, second.url)
    assert outcome.problem is None, outcome
    assert sample(metrics, 'qwen_relay_account_state{account="a",state="active"}') == 1
