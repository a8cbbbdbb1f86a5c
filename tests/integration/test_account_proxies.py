"""Each account's own egress, ``--proxy`` for the rest, and no secret in the logs (issue 17).

The proxies are the real programs (tinyproxy for HTTP CONNECT, microsocks for
SOCKS5), each with a password and each binding its outgoing side to an address
of its own, as tests/test_transport.py does; the emulator listens on 127.0.0.5.
The address a request came from then names the way it took: 127.0.0.3 through
tinyproxy, 127.0.0.2 and 127.0.0.4 through the two microsocks, 127.0.0.1 direct.
The tap on the emulator's socket also knows each request's login, so every call
of every account (models, new chat, completion, delete, refresh) is checked.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from relay.emulator import EmulatorConfig, RunningEmulator
from tests.conftest import auth
from tests.emulator.support import refresh_headers
from tests.integration.accounts_support import (
    KEY,
    Account,
    Proxy,
    Relay,
    Tap,
    ask,
    metrics_text,
    microsocks,
    poll,
    sample,
    start_relay,
    start_tapped_emulator,
    tinyproxy,
    write_config,
)

#: where the emulator listens: only the address, never the path to it, differs from the relay's own.
SERVICE_HOST = "127.0.0.5"
TINYPROXY_EGRESS, SOCKS_EGRESS, DEFAULT_EGRESS = "127.0.0.3", "127.0.0.2", "127.0.0.4"
#: passwords (and a passthrough token) that must never be written by the relay.
TINYPROXY_PASSWORD = "tp-canary-pw-5e1f0c"
SOCKS_PASSWORD = "socks-canary-pw-93ad2b"
DEFAULT_PASSWORD = "default-canary-pw-41c7e8"
PASSTHROUGH = "passthrough-canary-token-7d0b3e9a"
ALL_KINDS = {"models", "new_chat", "completion", "delete"}

Stack = contextlib.AsyncExitStack


@pytest.fixture(scope="module")
def proxies(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proxy, Proxy, Proxy]]:
    """tinyproxy (account "a"), microsocks (account "b") and another microsocks (``--proxy``)."""
    where = tmp_path_factory.mktemp("proxies")
    with tinyproxy(where, egress=TINYPROXY_EGRESS, user="alice", password=TINYPROXY_PASSWORD) as http, \
            microsocks(egress=SOCKS_EGRESS, user="bob", password=SOCKS_PASSWORD) as socks, \
            microsocks(egress=DEFAULT_EGRESS, user="carol", password=DEFAULT_PASSWORD) as default:
        yield http, socks, default


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    async with contextlib.AsyncExitStack() as exits:
        yield exits


async def service(stack: Stack) -> tuple[RunningEmulator, Tap]:
    """The emulator on 127.0.0.5, access tokens living 2 s (so refreshes happen within the test)."""
    emulator, tap = await start_tapped_emulator(EmulatorConfig(access_ttl_s=2), host=SERVICE_HOST)
    stack.push_async_callback(emulator.close)
    return emulator, tap


async def relay_with(stack: Stack, where: Path, emulator: RunningEmulator, accounts: list[Account],
                     default: Proxy, *extra: str) -> Relay:
    """Mode "both": the relay key uses the accounts, any other Bearer is passed through."""
    config = write_config(where, accounts, mode="both")
    relay = await start_relay("--config", config, "--upstream", emulator.url, "--auth-origin", emulator.url,
                              "--state-dir", str(where / "state"), "--proxy", default.url, "--models-ttl", "0",
                              *extra)
    stack.push_async_callback(relay.close)
    return relay


async def list_models(session: aiohttp.ClientSession, relay: str, bearer: str) -> None:
    async with session.get(relay + "/v1/models", headers=auth(bearer)) as response:
        assert response.status == 200, await response.text()


def refreshed(tap: Tap, login_id: str) -> bool:
    return any(seen.kind == "refresh" and seen.status == 200 for seen in tap.of_login(login_id))


def all_deleted(emulator: RunningEmulator) -> bool:
    """Every chat the relay made is deleted again (the delete runs after the answer)."""
    return not emulator.state.chats and bool(emulator.state.deleted_chats)


async def test_each_account_goes_through_its_own_proxy_and_passthrough_through_the_default(
        stack: Stack, tmp_path: Path, proxies: tuple[Proxy, Proxy, Proxy]) -> None:
    """Account "a" (http:// proxy) and "b" (socks5:// proxy): each of their calls, the refresh at the
    auth host included, leaves through their own proxy; a passthrough caller's through --proxy;
    nothing goes direct."""
    http, socks, default = proxies
    emulator, tap = await service(stack)
    a, b = emulator.state.create_login("a@example.com"), emulator.state.create_login("b@example.com")
    relay = await relay_with(stack, tmp_path, emulator, [Account("a", a.cookie, proxy=http.url),
                                                         Account("b", b.cookie, proxy=socks.url)], default)
    async with aiohttp.ClientSession() as session:
        for bearer in (KEY, PASSTHROUGH):
            # With --models-ttl 0 a chat takes two leases (its model list, then the chat): a lone
            # /v1/models between chats moves the pool's round robin, so each account does both.
            for index, step in enumerate(("chat", "models", "chat", "chat", "models", "chat")):
                if step == "models":
                    await list_models(session, relay.url, bearer)
                    continue
                outcome = await ask(session, relay.url, stream=index % 3 == 0, bearer=bearer)
                assert outcome.problem is None, outcome
        await poll(lambda: refreshed(tap, a.id) and refreshed(tap, b.id), "both logins refreshed")
        await poll(lambda: all_deleted(emulator), "every chat deleted")

    for login, proxy in ((a, http), (b, socks)):
        calls = tap.of_login(login.id)
        assert {seen.kind for seen in calls} == ALL_KINDS | {"refresh"}, {seen.kind for seen in calls}
        assert {seen.peer for seen in calls} == {proxy.egress}, [(s.kind, s.peer) for s in calls]
    passed = [seen for seen in tap.seen if seen.token == PASSTHROUGH]
    assert {seen.kind for seen in passed} == ALL_KINDS
    assert {seen.peer for seen in passed} == {DEFAULT_EGRESS}
    assert {seen.peer for seen in tap.seen} == {TINYPROXY_EGRESS, SOCKS_EGRESS, DEFAULT_EGRESS}  # none direct
    assert f"CONNECT {emulator.url.removeprefix('http://')}" in http.log_text()


async def test_no_token_cookie_bx_value_or_proxy_password_reaches_the_relays_log_or_metrics(
        stack: Stack, tmp_path: Path, proxies: tuple[Proxy, Proxy, Proxy]) -> None:
    """The canary: a debug-level relay keeps three logins through refreshes, a challenge, a refresh
    answered 401 and passthrough calls; then not one token, refresh token, cookie value, bx-* value
    or proxy password it ever held appears in its stderr or in /metrics."""
    http, socks, default = proxies
    emulator, tap = await service(stack)
    a, b, c = (emulator.state.create_login(f"{name}@example.com") for name in ("a", "b", "c"))
    bx = {name: {"bx_ua": f"bx-ua-canary-{name}-0f9e8d7c", "bx_umidtoken": f"bx-umid-canary-{name}-6b5a4c3d",
                 "bx_v": f"bx-v-canary-{name}-2e1d0c9b"} for name in ("a", "b")}
    async with aiohttp.ClientSession() as session:
        async with session.get(emulator.url + "/api/v2/auths/refresh",
                               headers=refresh_headers(f"refresh_token={c.refresh_token}")) as response:
            assert response.status == 200  # c's browser spent the refresh token pasted into the relay
        accounts = [Account("a", a.cookie, proxy=http.url, **bx["a"]),
                    Account("b", b.cookie, proxy=socks.url, **bx["b"]), Account("c", c.cookie)]
        relay = await relay_with(stack, tmp_path, emulator, accounts, default, "--log-level", "debug",
                                 "--challenge-cooldown", "1")
        async with session.post(emulator.url + "/_emulator/challenge",
                                json={"login": a.id, "times": 1, "on": "writes"}) as response:
            assert response.status == 200

        async def c_disabled() -> bool:
            return sample(await metrics_text(session, relay.url),
                          'qwen_relay_account_state{account="c",state="disabled"}') == 1

        for index in range(6):
            assert (await ask(session, relay.url, stream=index % 2 == 0)).problem is None
        for index in range(2):
            assert (await ask(session, relay.url, stream=index % 2 == 0, bearer=PASSTHROUGH)).problem is None
        await poll(c_disabled, "account c disabled")
        await poll(lambda: refreshed(tap, a.id) and refreshed(tap, b.id), "a and b refreshed")
        for index in range(4):
            assert (await ask(session, relay.url, stream=index % 2 == 0)).problem is None
        await poll(lambda: all_deleted(emulator), "every chat deleted")
        metrics = await metrics_text(session, relay.url)
    assert emulator.state.logins.find(a.id).challenge_writes == 0  # the challenge was met
    assert await relay.stop() == 0  # a clean stop: every buffered log line is written
    for login, name in ((a, "a"), (b, "b")):  # the bx-* values were really in use: writes and refreshes
        sent = {seen.headers.get("bx-ua") for seen in tap.of_login(login.id) if seen.kind != "models"}
        assert sent == {bx[name]["bx_ua"]}, sent

    secrets = {value for value in tap.secrets if len(value) >= 8}
    secrets |= {value for values in bx.values() for value in values.values()}
    secrets |= {TINYPROXY_PASSWORD, SOCKS_PASSWORD, DEFAULT_PASSWORD, PASSTHROUGH}
    secrets |= {part.partition("=")[2] for seed in (a, b, c) for part in seed.cookie.split("; ")}
    assert len(tap.secrets) > 20  # tokens minted by refreshes, rotated cookies: the canary has teeth
    assert relay.events("account_disabled") and relay.events("account_refresh") and relay.events("token_challenged")
    leaked_to_log = sorted(value[:6] + "…" for value in secrets if value in relay.text)
    leaked_to_metrics = sorted(value[:6] + "…" for value in secrets if value in metrics)
    assert leaked_to_log == [] and leaked_to_metrics == [], (leaked_to_log, leaked_to_metrics)
