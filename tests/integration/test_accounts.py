"""Accounts that stay signed in, end to end: one relay process, the emulator as the auth host (issue 17).

The emulator runs in the test's loop with access tokens that live 2-3 s (its
``exp`` is whole seconds, rounded up), so a relay must refresh every login every
couple of seconds; it is strict about the 2026 wire and about refresh tokens: a
spent one presented again kills the login. Its records (``EmulatorState.refreshes``,
the request log, the tap's peers and logins) say what the relay really did;
``/metrics`` and the relay's stderr say what it reports.
"""

from __future__ import annotations

import contextlib
import json
import stat
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from relay.emulator import EmulatorConfig, RunningEmulator
from relay.emulator.logins import LoginSeed
from tests.emulator.support import refresh_headers
from tests.integration.accounts_support import (
    Account,
    Relay,
    Tap,
    ask,
    metrics_text,
    poll,
    refresh_print,
    run_load,
    sample,
    start_relay,
    start_tapped_emulator,
    write_config,
)

Stack = contextlib.AsyncExitStack


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    """Closes what a test started, last first: relays before the emulator they talk to."""
    async with contextlib.AsyncExitStack() as exits:
        yield exits


async def emulator_with(stack: Stack, ttl_s: float) -> tuple[RunningEmulator, Tap]:
    emulator, tap = await start_tapped_emulator(EmulatorConfig(access_ttl_s=ttl_s))
    stack.push_async_callback(emulator.close)
    return emulator, tap


async def relay_with(stack: Stack, where: Path, emulator: RunningEmulator, accounts: list[Account],
                     *extra: str) -> Relay:
    """A relay in pool mode over ``accounts``; its upstream and auth host are the emulator."""
    config = write_config(where, accounts)
    relay = await start_relay("--config", config, "--upstream", emulator.url, "--auth-origin", emulator.url,
                              "--state-dir", str(where / "state"), *extra)
    stack.push_async_callback(relay.close)
    return relay


def logins(emulator: RunningEmulator, *emails: str) -> list[LoginSeed]:
    return [emulator.state.create_login(email) for email in emails]


def ok_refreshes(emulator: RunningEmulator, login: LoginSeed) -> int:
    return sum(1 for r in emulator.state.refreshes if r.login_id == login.id and r.result == "ok")


def writers_since(tap: Tap, mark: int) -> Counter[str | None]:
    """Whose login made each completion call the emulator saw after ``mark``."""
    return Counter(seen.login_id for seen in tap.seen[mark:] if seen.kind == "completion")


async def spend_refresh_token(emulator: RunningEmulator, login: LoginSeed) -> None:
    """The browser of ``login`` refreshes on its own: the refresh token pasted into the relay is spent."""
    async with aiohttp.ClientSession() as session, session.get(
            emulator.url + "/api/v2/auths/refresh",
            headers=refresh_headers(f"refresh_token={login.refresh_token}")) as response:
        assert response.status == 200
        assert (await response.json())["success"] is True


async def test_two_accounts_serve_a_steady_load_while_their_tokens_expire_every_four_seconds(
        stack: Stack, tmp_path: Path) -> None:
    """Four clients for 20 s (stream and non-stream) on a pool of two logins whose tokens live 4 s.

    (4 s leaves a 1 s refresh margin: on a machine loaded to a third of its speed a
    2 s token's 0.5 s margin is shorter than the time a request may take to reach
    the upstream. Real tokens live 15 minutes, with a 60 s margin.)

    Not one request fails, no call reaches the upstream with an expired token,
    each refresh token is spent exactly once (no "reused"), and each login was
    refreshed again and again; /metrics counts the same refreshes.
    """
    emulator, tap = await emulator_with(stack, ttl_s=4)
    a, b = logins(emulator, "a@example.com", "b@example.com")
    relay = await relay_with(stack, tmp_path, emulator, [Account("a", a.cookie), Account("b", b.cookie)])

    outcomes = await run_load([relay.url], clients=4, duration_s=20)

    failures = [outcome for outcome in outcomes if outcome.problem is not None]
    assert failures == [], f"{len(failures)} of {len(outcomes)} failed, e.g. {failures[:3]}"
    assert len(outcomes) >= 200 and {outcome.stream for outcome in outcomes} == {True, False}
    refused = [(r.method, r.path, r.rejected) for r in emulator.state.log if r.rejected is not None]
    assert refused == [], refused[:5]  # every token was refreshed before it expired
    refreshes = emulator.state.refreshes
    assert Counter(r.result for r in refreshes) == {"ok": len(refreshes)}, [r.to_json() for r in refreshes]
    spent = [r.token_fingerprint for r in refreshes]
    assert len(set(spent)) == len(spent), "a refresh token was presented twice"
    assert refresh_print(a.refresh_token) in spent and refresh_print(b.refresh_token) in spent
    per_login = Counter(r.login_id for r in refreshes)
    assert per_login[a.id] >= 2 and per_login[b.id] >= 2, per_login
    served = writers_since(tap, 0)
    assert set(served) == {a.id, b.id}, served
    async with aiohttp.ClientSession() as session:
        metrics = await metrics_text(session, relay.url)
    for name, login in (("a", a), ("b", b)):
        assert sample(metrics, f'qwen_relay_account_refreshes_total{{account="{name}",result="ok"}}') == \
            per_login[login.id]
        assert sample(metrics, f'qwen_relay_account_state{{account="{name}",state="active"}}') == 1


async def test_metrics_show_each_accounts_state_token_expiry_refreshes_and_challenges(
        stack: Stack, tmp_path: Path) -> None:
    """Per account name: state, seconds until the token expires, refreshes by result, risk-control answers."""
    emulator, _tap = await emulator_with(stack, ttl_s=2)
    a, b = logins(emulator, "a@example.com", "b@example.com")
    relay = await relay_with(stack, tmp_path, emulator, [Account("a", a.cookie), Account("b", b.cookie)],
                             "--challenge-cooldown", "60")
    async with aiohttp.ClientSession() as session:
        metrics = await metrics_text(session, relay.url)
        for name in ("a", "b"):
            assert sample(metrics, f'qwen_relay_account_state{{account="{name}",state="active"}}') == 1
            assert sample(metrics, f'qwen_relay_account_state{{account="{name}",state="cooling"}}') == 0
            assert sample(metrics, f'qwen_relay_account_state{{account="{name}",state="disabled"}}') == 0
            expires_in = sample(metrics, f'qwen_relay_account_token_expires_in_seconds{{account="{name}"}}')
            assert expires_in is not None and 0 < expires_in <= 3.1, expires_in
            for result in ("ok", "rejected", "challenged", "error"):
                assert sample(metrics, f'qwen_relay_account_refreshes_total{{account="{name}",result="{result}"}}'
                              ) == 0
            assert sample(metrics, f'qwen_relay_account_challenges_total{{account="{name}"}}') == 0

        async def both_refreshed() -> bool:
            metrics = await metrics_text(session, relay.url)
            return all(sample(metrics, f'qwen_relay_account_refreshes_total{{account="{name}",result="ok"}}') == 1
                       for name in ("a", "b"))

        # Right after the first refresh of each (the next is 1.5 s away), the next write of "a" meets
        # risk control.
        await poll(both_refreshed, "both accounts refreshed once")
        async with session.post(emulator.url + "/_emulator/challenge",
                                json={"login": a.id, "times": 1, "on": "writes"}) as response:
            assert response.status == 200
        outcomes = [await ask(session, relay.url, stream=False) for _ in range(2)]
        assert [outcome.problem for outcome in outcomes] == [None, None]  # the challenged one moved to "b"
        metrics = await metrics_text(session, relay.url)

    assert sample(metrics, 'qwen_relay_account_challenges_total{account="a"}') == 1
    assert sample(metrics, 'qwen_relay_account_challenges_total{account="b"}') == 0
    assert sample(metrics, 'qwen_relay_account_state{account="a",state="cooling"}') == 1
    assert sample(metrics, 'qwen_relay_account_state{account="b",state="active"}') == 1
    for name, login in (("a", a), ("b", b)):
        assert sample(metrics, f'qwen_relay_account_refreshes_total{{account="{name}",result="ok"}}') == \
            ok_refreshes(emulator, login) == 1
        expires_in = sample(metrics, f'qwen_relay_account_token_expires_in_seconds{{account="{name}"}}')
        assert expires_in is not None and 0 < expires_in <= 3.1, expires_in
    assert sample(metrics, 'qwen_relay_account_requests_total{account="a"}') is not None


async def test_a_challenged_account_rests_for_the_challenge_cooldown_even_when_its_token_is_refreshed(
        stack: Stack, tmp_path: Path) -> None:
    """Risk control on a write rests the account for --challenge-cooldown (§7.5: retrying deepens the
    mark); the refresh of its access token, due every 1.5 s here, does not end that rest."""
    emulator, tap = await emulator_with(stack, ttl_s=2)
    a, b = logins(emulator, "a@example.com", "b@example.com")
    relay = await relay_with(stack, tmp_path, emulator, [Account("a", a.cookie), Account("b", b.cookie)],
                             "--challenge-cooldown", "60")
    async with aiohttp.ClientSession() as session:
        async with session.post(emulator.url + "/_emulator/challenge",
                                json={"login": a.id, "times": 1, "on": "writes"}) as response:
            assert response.status == 200
        outcomes = [await ask(session, relay.url, stream=False) for _ in range(2)]
        assert [outcome.problem for outcome in outcomes] == [None, None]
        assert emulator.state.logins.find(a.id).challenge_writes == 0  # "a" met its challenge
        mark = len(tap.seen)
        seen = ok_refreshes(emulator, a)
        await poll(lambda: ok_refreshes(emulator, a) > seen, "a refreshed after its challenge")
        outcomes = [await ask(session, relay.url, stream=index % 2 == 0) for index in range(6)]
        metrics = await metrics_text(session, relay.url)
    assert [outcome.problem for outcome in outcomes] == [None] * 6
    assert writers_since(tap, mark) == {b.id: 6}, "the challenged account wrote again within its cool-down"
    assert sample(metrics, 'qwen_relay_account_state{account="a",state="cooling"}') == 1


async def test_a_chat_call_answered_unauthorized_refreshes_at_once_and_is_retried_once(
        stack: Stack, tmp_path: Path) -> None:
    """The upstream calls the token expired before the relay expected (its clock ran ahead): the
    chat call's 401 refreshes the login at once and the request is retried once; the client gets 200.

    The emulator's clock is its own test hook (``LoginBook.clock``): moving it past the token's
    ``exp`` makes the token expired upstream while the relay's schedule (a quarter of 60 s before
    ``exp``) is not due for long.
    """
    emulator, tap = await emulator_with(stack, ttl_s=60)
    (a,) = logins(emulator, "a@example.com")
    relay = await relay_with(stack, tmp_path, emulator, [Account("a", a.cookie)])
    book = emulator.state.logins
    async with aiohttp.ClientSession() as session:
        assert (await ask(session, relay.url, stream=False)).problem is None  # the model list is cached now
        await poll(lambda: any(seen.kind == "delete" for seen in tap.seen), "the first chat was deleted")
        for jump_s, stream in ((120, False), (400, True)):
            book.clock = lambda jump_s=jump_s: time.time() + jump_s
            mark, refreshes = len(tap.seen), len(emulator.state.refreshes)
            outcome = await ask(session, relay.url, stream=stream)
            assert outcome.problem is None, outcome
            await poll(lambda mark=mark: any(seen.kind == "delete" for seen in tap.seen[mark:]),
                       "the chat was deleted")
            calls = [(seen.kind, seen.status) for seen in tap.seen[mark:]]
            assert calls == [("new_chat", 401), ("refresh", 200), ("new_chat", 200), ("completion", 200),
                             ("delete", 200)], calls
            assert [r.result for r in emulator.state.refreshes[refreshes:]] == ["ok"]
    assert [r.rejected for r in emulator.state.log if r.rejected] == ["token_expired"] * 2


async def test_a_refresh_answered_unauthorized_disables_the_account_and_the_other_serves(
        stack: Stack, tmp_path: Path) -> None:
    """The browser spent the refresh token pasted into the relay: the relay's refresh is answered 401
    ("reused"), the account is disabled (metrics, ``account_disabled``), never refreshed again, and
    every request goes to the other account."""
    emulator, tap = await emulator_with(stack, ttl_s=2)
    a, b = logins(emulator, "a@example.com", "b@example.com")
    await spend_refresh_token(emulator, a)
    relay = await relay_with(stack, tmp_path, emulator, [Account("a", a.cookie), Account("b", b.cookie)])
    async with aiohttp.ClientSession() as session:
        async def is_disabled() -> bool:
            metrics = await metrics_text(session, relay.url)
            return sample(metrics, 'qwen_relay_account_state{account="a",state="disabled"}') == 1

        await poll(is_disabled, "account a disabled")
        mark = len(tap.seen)
        outcomes = [await ask(session, relay.url, stream=index % 2 == 1) for index in range(6)]
        metrics = await metrics_text(session, relay.url)
    assert [outcome.problem for outcome in outcomes] == [None] * 6
    assert writers_since(tap, mark) == {b.id: 6}
    assert sample(metrics, 'qwen_relay_account_refreshes_total{account="a",result="rejected"}') == 1
    assert sample(metrics, 'qwen_relay_account_state{account="b",state="active"}') == 1
    of_a = [r.result for r in emulator.state.refreshes if r.login_id == a.id]
    assert of_a == ["ok", "reused"], of_a  # the browser's, then the relay's one attempt
    disabled = relay.events("account_disabled")
    assert [(entry.get("account"), entry.get("reason")) for entry in disabled] == [("a", "refresh_rejected")]


async def test_a_challenge_on_refresh_cools_the_account_until_the_backoff_ends(
        stack: Stack, tmp_path: Path) -> None:
    """Risk control on the refresh call: the account cools (5 s backoff), requests go to the other
    one, then the refresh is tried again with the same, unspent refresh token and the account serves."""
    emulator, tap = await emulator_with(stack, ttl_s=2)
    a, b = logins(emulator, "a@example.com", "b@example.com")
    relay = await relay_with(stack, tmp_path, emulator, [Account("a", a.cookie), Account("b", b.cookie)])
    async with aiohttp.ClientSession() as session:
        async with session.post(emulator.url + "/_emulator/challenge",
                                json={"login": a.id, "times": 1, "on": "refresh"}) as response:
            assert response.status == 200

        async def state_of_a(state: str) -> bool:
            metrics = await metrics_text(session, relay.url)
            return sample(metrics, f'qwen_relay_account_state{{account="a",state="{state}"}}') == 1

        await poll(lambda: state_of_a("cooling"), "account a cooling")
        mark = len(tap.seen)
        outcomes = [await ask(session, relay.url, stream=index % 2 == 1) for index in range(4)]
        assert [outcome.problem for outcome in outcomes] == [None] * 4
        assert writers_since(tap, mark) == {b.id: 4}
        async def recovered() -> bool:
            nonlocal metrics
            metrics = await metrics_text(session, relay.url)
            return (sample(metrics, 'qwen_relay_account_state{account="a",state="active"}') == 1
                    and sample(metrics, 'qwen_relay_account_refreshes_total{account="a",result="ok"}') == 1)

        metrics = ""
        await poll(recovered, "account a refreshed and active again", timeout_s=15)
        mark = len(tap.seen)
        outcomes = [await ask(session, relay.url, stream=False) for _ in range(4)]
    assert [outcome.problem for outcome in outcomes] == [None] * 4
    assert writers_since(tap, mark)[a.id] >= 1  # "a" serves again
    assert sample(metrics, 'qwen_relay_account_refreshes_total{account="a",result="challenged"}') == 1
    of_a = [r for r in emulator.state.refreshes if r.login_id == a.id]
    assert [r.result for r in of_a[:2]] == ["challenged", "ok"]
    challenged, retried = of_a[:2]
    assert challenged.token_fingerprint == retried.token_fingerprint == refresh_print(a.refresh_token)
    assert 4.5 <= retried.at - challenged.at <= 8, retried.at - challenged.at  # the 5 s backoff


async def test_a_restart_resumes_the_rotated_login_from_the_state_dir(stack: Stack, tmp_path: Path) -> None:
    """SIGKILL after a refresh; a new relay with the same config and --state-dir resumes the rotated
    jar (0600 file): its first request needs no refresh and meets no 401, and the refresh token
    pasted into the config, spent by the first relay, is never presented again."""
    emulator, tap = await emulator_with(stack, ttl_s=3)
    (a,) = logins(emulator, "a@example.com")
    saved = tmp_path / "state" / "accounts" / "a.json"
    first = await relay_with(stack, tmp_path, emulator, [Account("a", a.cookie)])
    async with aiohttp.ClientSession() as session:
        assert (await ask(session, first.url, stream=False)).problem is None
        await poll(saved.exists, "the rotated jar saved", timeout_s=15)
        await first.kill()  # at once: the next refresh is more than 2 s away
        assert stat.S_IMODE(saved.stat().st_mode) == 0o600
        jar = json.loads(saved.read_text())["cookies"]
        assert jar["refresh_token"] != a.refresh_token and jar["token"] != a.access_token
        assert [r.result for r in emulator.state.refreshes] == ["ok"]

        mark, log_mark = len(tap.seen), len(emulator.state.log)
        second = await relay_with(stack, tmp_path, emulator, [Account("a", a.cookie)])
        outcome = await ask(session, second.url, stream=True)
        assert outcome.problem is None, outcome
        assert [seen.kind for seen in tap.seen[mark:]][:3] == ["models", "new_chat", "completion"]
        assert [r.rejected for r in emulator.state.log[log_mark:] if r.rejected] == []
        assert second.events("account_resumed") != []
        await poll(lambda: len(emulator.state.refreshes) >= 2, "the second relay refreshed", timeout_s=15)
        await poll(lambda: json.loads(saved.read_text())["cookies"]["refresh_token"] != jar["refresh_token"],
                   "the second relay saved its rotated jar")  # os.replace: never half a file
        assert (await ask(session, second.url, stream=False)).problem is None
    refreshes = emulator.state.refreshes
    assert [r.result for r in refreshes] == ["ok"] * len(refreshes)
    spent = [r.token_fingerprint for r in refreshes]
    assert len(set(spent)) == len(spent) and spent.count(refresh_print(a.refresh_token)) == 1
    assert all(seen.status == 200 for seen in tap.seen), [(s.kind, s.status) for s in tap.seen if s.status != 200]
    # Rewritten by the second relay's refresh, still owner-only, in an owner-only directory.
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600 and stat.S_IMODE(saved.parent.stat().st_mode) == 0o700

