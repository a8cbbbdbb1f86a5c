"""The status page, /status.json and who may read them (issue 21 §3).

Real parts only: the relay in the test's loop, the emulator (Qwen Chat and its
auth host, with risk control switched on per login over ``/_emulator/challenge``),
and Debian's Chromium driven over the DevTools protocol for what a browser shows.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest

from relay import __version__
from relay.emulator import RunningEmulator
from tests.conftest import MODEL, RelayFactory
from tests.integration.accounts_support import sample
from tests.integration.chromium import chromium
from tests.integration.status_support import (
    ADMIN_KEY,
    RELAY_KEY,
    basic,
    bearer,
    chat,
    pool_config,
    start_pool_relay,
    table_rows,
)

ROUTES = ("/status", "/status.json", "/status/usage")


async def get_json(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> tuple[int, dict, dict]:
    async with session.get(url, headers=headers) as response:
        return response.status, await response.json(content_type=None), dict(response.headers)


def with_credentials(relay: str, key: str) -> str:
    """``http://operator:<key>@host:port``: Chromium answers a Basic challenge with these."""
    parts = urlsplit(relay)
    return f"{parts.scheme}://operator:{key}@{parts.netloc}"


def account_states(html: str) -> dict[str, str]:
    return {row[0]: row[1] for row in table_rows(html, "accounts")[1:]}


async def challenge_writes(session: aiohttp.ClientSession, emulator: RunningEmulator, login: str) -> None:
    """The emulator answers the next write of ``login`` (an id or an email) with risk control (§7.5)."""
    async with session.post(emulator.url + "/_emulator/challenge",
                            json={"login": login, "times": 1, "on": "writes"}) as response:
        assert response.status == 200, await response.text()


# -- in a browser ----------------------------------------------------------------------------


async def test_chromium_renders_the_page_for_an_admin_key_answering_the_basic_challenge(
        relay_factory: RelayFactory, emulator: RunningEmulator, tmp_path: Path) -> None:
    """Basic credentials in the URL: Chromium asks without them, is answered 401 with the Basic challenge,
    answers it, and shows the page: both accounts active, the key's requests today, no script, nothing fetched
    from anywhere but the relay."""
    relay = await start_pool_relay(relay_factory, emulator, tmp_path)
    async with aiohttp.ClientSession() as session:
        assert [await chat(session, relay) for _ in range(3)] == [200] * 3
    async with chromium() as browser:
        page = await browser.open(with_credentials(relay, ADMIN_KEY) + "/status")
    assert page.statuses == [200], page.statuses  # the browser reports the answer to its credentials
    async with aiohttp.ClientSession() as session, session.get(relay + "/metrics") as response:
        metrics = await response.text()
    # The relay's view: the browser asked without credentials first, was challenged, and asked again.
    assert sample(metrics, 'qwen_relay_requests_total{method="GET",route="/status",status="401"}') == 1
    assert sample(metrics, 'qwen_relay_requests_total{method="GET",route="/status",status="200"}') == 1
    assert "qwen-relay status" in page.text and __version__ in page.text
    assert account_states(page.html) == {"a": "active", "b": "active"}
    keys = table_rows(page.html, "keys")
    assert keys[0][:2] == ["key", "requests today"] and keys[1][:2] == ["alice", "3"], keys
    assert page.scripts == 0
    outside = [url for url in page.requested if not url.startswith(relay + "/")
               and not url.startswith(with_credentials(relay, ADMIN_KEY) + "/")]
    assert outside == [], outside


async def test_chromium_shows_an_account_cooling_after_the_emulator_answers_it_with_risk_control(
        relay_factory: RelayFactory, emulator: RunningEmulator, tmp_path: Path) -> None:
    """Account ``a`` is active; the emulator then answers its next write with risk control, the request
    moves to ``b``, and the page (reloaded as a browser would) shows ``a`` cooling with one challenge."""
    relay = await start_pool_relay(relay_factory, emulator, tmp_path)
    async with chromium() as browser:
        before = await browser.open(relay + "/status", headers=bearer(ADMIN_KEY))
        assert before.statuses == [200]
        assert account_states(before.html) == {"a": "active", "b": "active"}
        async with aiohttp.ClientSession() as session:
            await challenge_writes(session, emulator, "a@example.com")
            assert [await chat(session, relay) for _ in range(2)] == [200, 200]  # one met risk control, moved on
        after = await browser.open(relay + "/status", headers=bearer(ADMIN_KEY))
    assert after.statuses == [200]
    assert account_states(after.html) == {"a": "cooling", "b": "active"}
    rows = {row[0]: row for row in table_rows(after.html, "accounts")[1:]}
    assert rows["a"][6] == "1" and rows["b"][6] == "0"  # challenges today
    assert rows["a"][2].endswith(" s") and rows["b"][2] == ""  # cooling for about a minute


async def test_chromium_is_refused_the_page_with_a_relay_key_or_none(
        relay_factory: RelayFactory, emulator: RunningEmulator, tmp_path: Path) -> None:
    """A relay key as Bearer: 403 and a page saying an admin key is needed; the same key answering the
    Basic challenge, or no key at all: 401 only. In no case does the status appear."""
    relay = await start_pool_relay(relay_factory, emulator, tmp_path)
    async with chromium() as browser:
        as_bearer = await browser.open(relay + "/status", headers=bearer(RELAY_KEY))
        as_basic = await browser.open(with_credentials(relay, RELAY_KEY) + "/status")
        anonymous = await browser.open(relay + "/status")
    assert as_bearer.statuses == [403]
    assert "Admin key required" in as_bearer.text and "relay key" in as_bearer.text
    assert as_basic.statuses and set(as_basic.statuses) == {401}, as_basic.statuses
    assert anonymous.statuses and set(anonymous.statuses) == {401}, anonymous.statuses
    for page in (as_bearer, as_basic, anonymous):
        assert table_rows(page.html, "accounts") == [] and "qwen-relay status" not in page.text


# -- the API ------------------------------------------------------------------------------------


async def test_status_json_reports_accounts_keys_and_the_upstreams_last_hour(
        relay_factory: RelayFactory, emulator: RunningEmulator, tmp_path: Path) -> None:
    """Requests today, tokens, rejections (a model the key may not use), limits, account state and
    token expiry, and the upstream's errors by code and retry rate (an answer broken off, tried again)."""
    operator = pool_config(emulator, models=frozenset({MODEL}), rpm=1000)
    relay = await start_pool_relay(relay_factory, emulator, tmp_path, operator=operator)
    async with aiohttp.ClientSession() as session:
        assert await chat(session, relay) == 200
        assert await chat(session, relay, stream=True) == 200
        assert await chat(session, relay, model="qwen-not-allowed") == 403
        # An upstream refusal (not retried), then an answer broken off on every try (retried).
        assert await chat(session, relay, fault="v2_error", code="RequestValidationError") >= 400
        assert await chat(session, relay, stream_error="internal_error") >= 500
        status, report, headers = await get_json(session, relay + "/status.json", bearer(ADMIN_KEY))
    assert status == 200 and headers["Cache-Control"] == "no-store"
    assert set(report) == {"version", "uptime_s", "accounts", "keys", "upstream"}
    assert report["version"] == __version__ and report["uptime_s"] >= 0
    accounts = {account["name"]: account for account in report["accounts"]}
    assert set(accounts) == {"a", "b"}
    for account in accounts.values():
        assert set(account) == {"name", "state", "cooling_s", "token_expires_in_s", "last_refresh",
                                "requests_today", "challenges_today"}
        assert account["state"] == "active" and account["cooling_s"] == 0
        assert 0 < account["token_expires_in_s"] <= 901  # the emulator's tokens live 900 s
        assert account["challenges_today"] == 0
    assert sum(account["requests_today"] for account in accounts.values()) == 4  # the 403 reached no account
    (key,) = report["keys"]
    assert key == {"name": "alice", "requests_today": 5, "prompt_tokens_today": key["prompt_tokens_today"],
                   "completion_tokens_today": key["completion_tokens_today"], "rejections_today": 1,
                   "limits": {"rpm": 1000, "max_concurrent": None, "models": [MODEL]}}
    upstream = report["upstream"]
    assert upstream["errors_by_code"] == {"upstream_rejected": 1}, upstream
    assert 0 < upstream["retry_rate"] < 1


async def test_a_passthrough_relay_reports_no_accounts(
        relay_factory: RelayFactory, emulator: RunningEmulator, tmp_path: Path) -> None:
    operator = pool_config(emulator, accounts=(), mode="passthrough")
    relay = await relay_factory(operator=operator)
    async with aiohttp.ClientSession() as session:
        status, report, _ = await get_json(session, relay + "/status.json", basic(ADMIN_KEY))
        async with session.get(relay + "/status", headers=basic(ADMIN_KEY)) as response:
            page = await response.text()
    assert status == 200 and report["accounts"] == []
    assert response.status == 200 and "passthrough" in page and table_rows(page, "accounts") == []


@pytest.mark.parametrize("headers", [
    {}, bearer("sk-not-a-key-of-this-relay"), basic("sk-not-a-key-of-this-relay"),
    {"Authorization": "Basic !!!not-base64"}, {"Authorization": "Basic " + "b3BlcmF0b3I="},  # "operator", no colon
    {"Authorization": "Token " + ADMIN_KEY},
], ids=["none", "wrong-bearer", "wrong-basic", "bad-base64", "no-password", "other-scheme"])
async def test_no_or_a_wrong_key_gets_401_with_the_basic_challenge(
        relay_factory: RelayFactory, emulator: RunningEmulator, tmp_path: Path, headers: dict[str, str]) -> None:
    relay = await relay_factory(operator=pool_config(emulator, accounts=(), mode="passthrough"))
    async with aiohttp.ClientSession() as session:
        for route in ROUTES:
            async with session.get(relay + route, headers=headers) as response:
                body = await response.text()
                assert response.status == 401, (route, body)
                assert response.headers["WWW-Authenticate"] == 'Basic realm="qwen-relay"'
                assert response.headers["Cache-Control"] == "no-store"
                assert "alice" not in body
                if route != "/status":
                    assert (await response.json())["error"]["code"] == "invalid_api_key"


async def test_a_relay_key_gets_403_as_bearer_and_401_with_the_challenge_as_basic(
        relay_factory: RelayFactory, emulator: RunningEmulator, tmp_path: Path) -> None:
    """As Bearer (an API client) the key is valid but not allowed: 403, no challenge. Through Basic (a
    browser) a 401 with the challenge, so the browser asks again instead of resending the wrong key."""
    relay = await relay_factory(operator=pool_config(emulator, accounts=(), mode="passthrough"))
    async with aiohttp.ClientSession() as session:
        for route in ROUTES:
            async with session.get(relay + route, headers=bearer(RELAY_KEY)) as response:
                assert response.status == 403 and "WWW-Authenticate" not in response.headers
                if route != "/status":
                    assert (await response.json())["error"] == {
                        "message": (await response.json())["error"]["message"], "type": "permission_error",
                        "param": None, "code": "admin_key_required"}
            async with session.get(relay + route, headers=basic(RELAY_KEY)) as response:
                assert response.status == 401
                assert response.headers["WWW-Authenticate"] == 'Basic realm="qwen-relay"'
                if route != "/status":
                    assert (await response.json())["error"]["code"] == "admin_key_required"


async def test_without_admin_keys_in_the_config_nobody_reads_the_status(
        relay_factory: RelayFactory, emulator: RunningEmulator, tmp_path: Path) -> None:
    relay = await relay_factory(operator=pool_config(emulator, accounts=(), mode="passthrough", admin=False))
    async with aiohttp.ClientSession() as session:
        status, body, headers = await get_json(session, relay + "/status.json", bearer(ADMIN_KEY))
    assert status == 401 and "admin_keys" in body["error"]["message"]
    assert headers["WWW-Authenticate"] == 'Basic realm="qwen-relay"'


async def test_the_status_routes_are_read_only(
        relay_factory: RelayFactory, emulator: RunningEmulator, tmp_path: Path) -> None:
    """GET and HEAD only; any other method is 405 naming them, even with the admin key."""
    relay = await relay_factory(operator=pool_config(emulator, accounts=(), mode="passthrough"))
    async with aiohttp.ClientSession() as session:
        for route in ROUTES:
            for method in ("POST", "PUT", "DELETE", "PATCH"):
                async with session.request(method, relay + route, headers=bearer(ADMIN_KEY)) as response:
                    assert response.status == 405, (method, route)
                    assert response.headers["Allow"] == "GET,HEAD"
                    assert (await response.json())["error"]["code"] == "method_not_allowed"
            async with session.head(relay + route, headers=bearer(ADMIN_KEY)) as response:
                assert response.status == 200 and await response.read() == b""


async def test_the_page_is_self_contained_and_escapes_what_it_shows(
        relay_factory: RelayFactory, emulator: RunningEmulator, tmp_path: Path) -> None:
    """A Content-Security-Policy that lets nothing load but the page's own styles, no script tag, and
    every value escaped."""
    relay = await start_pool_relay(relay_factory, emulator, tmp_path)
    async with aiohttp.ClientSession() as session, session.get(relay + "/status",
                                                               headers=bearer(ADMIN_KEY)) as response:
        page = await response.text()
        headers = response.headers
    assert response.status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Content-Security-Policy"].startswith("default-src 'none'; style-src 'unsafe-inline'")
    assert headers["Cache-Control"] == "no-store" and headers["X-Frame-Options"] == "DENY"
    assert "<script" not in page.lower() and "http://" not in page and "https://" not in page
