"""The emulator is also the auth host, auth.qwen.ai (docs/qwen-protocol.md §7.1), with logins that rotate.

Each test drives a real socket and checks one rule: logins and their jar, JWT access
tokens (expired is the cue to refresh), sign-in and its walls, refresh-token
rotation (a spent token kills the login), ``Set-Cookie`` jar updates, the pairing
of token and jar, per-login challenges and the ``bx-*`` demand. The client keeps no
cookie jar of its own (``DummyCookieJar``): every cookie a request carries is the
one the test wrote, as in a relay that manages its accounts' jars.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from http.cookies import SimpleCookie
from typing import Any

import aiohttp
import pytest
from pytest_aiohttp import AiohttpClient

from relay.emulator import EmulatorConfig, LoginSeed, make_emulator_app, password_digest
from relay.emulator.auth import REFRESH_MAX_AGE_S
from relay.emulator.capture import redacted
from relay.emulator.state import fingerprint
from tests.emulator.support import (
    V2_NEW,
    Client,
    chat_headers,
    completion_body,
    completion_url,
    login_headers,
    new_chat_body,
    refresh_headers,
    state_of,
    v2_headers,
)
from tests.emulator.test_emulator_strict import assert_risk_control

SIGNIN = "/api/v2/auths/signin"
REFRESH = "/api/v2/auths/refresh"
DEMO = ("demo@example.com", "demo-password")


@pytest.fixture
async def client(aiohttp_client: AiohttpClient) -> Client:
    return await aiohttp_client(make_emulator_app(EmulatorConfig(access_ttl_s=2.0)),
                                cookie_jar=aiohttp.DummyCookieJar())


def _payload(jwt: str) -> dict[str, Any]:
    part = jwt.split(".")[1]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return decoded


def _set_cookies(resp: aiohttp.ClientResponse) -> SimpleCookie:
    jar: SimpleCookie = SimpleCookie()
    for header in resp.headers.getall("Set-Cookie", []):
        jar.load(header)
    return jar


def _jar(cookie: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in cookie.split("; "))


def _cookie(jar: dict[str, str]) -> str:
    return "; ".join(f"{name}={value}" for name, value in jar.items())


async def _new_chat(client: Client, headers: dict[str, str]) -> tuple[dict[str, Any], aiohttp.ClientResponse]:
    async with client.post(V2_NEW, json=new_chat_body(), headers=headers) as resp:
        return await resp.json(), resp


async def _assert_unauthorized(resp: aiohttp.ClientResponse, details: str | None = None) -> None:
    assert resp.status == 200 and resp.headers["x-actual-status-code"] == "401"
    answer = await resp.json()
    assert answer["success"] is False and answer["data"]["code"] == "Unauthorized"
    if details is not None:
        assert answer["data"]["details"] == details


async def _refresh(client: Client, cookie: str) -> tuple[aiohttp.ClientResponse, dict[str, Any]]:
    async with client.get(REFRESH, headers=refresh_headers(cookie)) as resp:
        return resp, await resp.json()


async def test_rule1_create_login_gives_a_whole_jar_that_writes_and_is_listed(client: Client) -> None:
    """create_login and POST /_emulator/logins make logged-in accounts without a sign-in."""
    state = state_of(client)
    seed = state.create_login("alice@example.com")
    jar = _jar(seed.cookie)
    assert list(jar) == ["token", "refresh_token", "acw_tc", "x-ap", "ssxmod_itna"]
    assert jar["token"] == seed.access_token and jar["refresh_token"] == seed.refresh_token
    assert jar["x-ap"] == seed.id
    async with client.post("/_emulator/logins", json={"email": "bob@example.com"}) as resp:
        other = await resp.json()
    assert set(other) == {"id", "email", "access_token", "refresh_token", "expires_at", "cookie"}
    other_jar = _jar(other["cookie"])
    assert all(other_jar[name] != jar[name] for name in ("acw_tc", "x-ap", "ssxmod_itna"))
    for headers in (login_headers(seed), v2_headers(token=other["access_token"], cookie=other["cookie"])):
        answer, _ = await _new_chat(client, headers)
        assert answer["success"] is True
    async with client.get("/_emulator/logins") as resp:
        listed = await resp.json()
    assert listed == [{"id": seed.id, "email": "alice@example.com", "alive": True, "refresh_count": 0},
                      {"id": other["id"], "email": "bob@example.com", "alive": True, "refresh_count": 0}]


async def test_rule2_access_token_is_an_hs256_jwt_of_the_login(client: Client) -> None:
    """Header HS256/JWT, payload id/exp/iat, exp = iat + access_ttl_s (rounded up)."""
    seed = state_of(client).create_login("alice@example.com")
    header_part = seed.access_token.split(".")[0]
    header = json.loads(base64.urlsafe_b64decode(header_part + "=" * (-len(header_part) % 4)))
    payload = _payload(seed.access_token)
    assert header == {"alg": "HS256", "typ": "JWT"} and payload["id"] == seed.id
    assert payload["exp"] == seed.expires_at and 2 <= payload["exp"] - payload["iat"] <= 3
    assert payload["exp"] - time.time() <= 3


async def test_rule2_an_expired_jwt_is_unauthorized_token_expired(client: Client) -> None:
    """§7.1 [C]: expired → 200 + x-actual-status-code 401 + Unauthorized "Token expired", writes and models."""
    state = state_of(client)
    seed = state.create_login("alice@example.com")
    answer, _ = await _new_chat(client, login_headers(seed))
    assert answer["success"] is True
    state.logins.clock = lambda: seed.expires_at + 0.001
    async with client.post(V2_NEW, json=new_chat_body(), headers=login_headers(seed)) as resp:
        await _assert_unauthorized(resp, "Token expired")
    async with client.get("/api/v2/models/", headers={"Cookie": seed.cookie}) as resp:
        await _assert_unauthorized(resp, "Token expired")
    assert state.log[-2].rejected == "token_expired"


@pytest.mark.parametrize("tamper", ["signature", "payload"])
async def test_rule2_a_jwt_with_a_bad_signature_is_unauthorized(client: Client, tamper: str) -> None:
    """A forged token (another secret, or an edited payload) is refused, not judged by the old rules."""
    seed = state_of(client).create_login("alice@example.com")
    head, body, signature = seed.access_token.split(".")
    if tamper == "signature":
        forged = hmac.new(b"another secret", f"{head}.{body}".encode(), hashlib.sha256).digest()
        token = f"{head}.{body}.{base64.urlsafe_b64encode(forged).rstrip(b'=').decode()}"
    else:
        edited = _payload(seed.access_token) | {"exp": seed.expires_at + 3600}
        token = f"{head}.{base64.urlsafe_b64encode(json.dumps(edited).encode()).rstrip(b'=').decode()}.{signature}"
    async with client.post(V2_NEW, json=new_chat_body(), headers=v2_headers(token=token)) as resp:
        await _assert_unauthorized(resp)
        assert (await resp.json())["data"]["details"] != "Token expired"
    assert state_of(client).log[-1].rejected == "bad_signature"


async def test_rule3_signin_with_the_password_digest_sets_the_jar(client: Client) -> None:
    """The token works at once; the cookies are the jar; the log keeps no password digest."""
    body = {"email": DEMO[0], "password": password_digest(DEMO[1])}
    async with client.post(SIGNIN, json=body) as resp:
        assert resp.status == 200
        answer = await resp.json()
        cookies = _set_cookies(resp)
    data = answer["data"]
    assert answer["success"] is True and set(data) == {"access_token", "token_type", "expires_at", "id", "email"}
    assert data["token_type"] == "Bearer" and data["email"] == DEMO[0] and _payload(data["access_token"])["id"] == data["id"]
    assert set(cookies) == {"token", "refresh_token", "acw_tc", "x-ap", "ssxmod_itna"}
    assert cookies["token"].value == data["access_token"] and cookies["x-ap"].value == data["id"]
    refresh = cookies["refresh_token"]
    assert refresh["httponly"] and refresh["max-age"] == str(REFRESH_MAX_AGE_S) and refresh["path"] == "/"
    assert all(not morsel["domain"] for morsel in cookies.values())
    jar = _cookie({name: morsel.value for name, morsel in cookies.items()})
    answer, _ = await _new_chat(client, v2_headers(token=data["access_token"], cookie=jar))
    assert answer["success"] is True
    logged = state_of(client).log[0].body
    assert logged["password"] == redacted(body["password"]) and body["password"] not in str(state_of(client).log)


@pytest.mark.parametrize("password", ["wrong-password", DEMO[1]], ids=["wrong", "not-hashed"])
async def test_rule3_a_wrong_password_is_unauthorized(client: Client, password: str) -> None:
    digest = password_digest(password) if password != DEMO[1] else password
    async with client.post(SIGNIN, json={"email": DEMO[0], "password": digest}) as resp:
        await _assert_unauthorized(resp, "Incorrect email or password")
        assert "Set-Cookie" not in resp.headers
    assert state_of(client).logins.logins == {}


async def test_rule3_the_v1_signin_is_405(client: Client) -> None:
    body = {"email": DEMO[0], "password": password_digest(DEMO[1])}
    async with client.post("/api/v1/auths/signin", json=body) as resp:
        assert resp.status == 405


@pytest.mark.parametrize("mode", ["waf", "risk_control"])
async def test_rule3_the_signin_wall_switch(client: Client, mode: str) -> None:
    """The switch walls every sign-in until turned off."""
    body = {"email": DEMO[0], "password": password_digest(DEMO[1])}
    async with client.post("/_emulator/signin_wall", json={"mode": mode}) as resp:
        assert resp.status == 200
    async with client.post(SIGNIN, json=body) as resp:
        if mode == "waf":
            await _assert_waf_page(resp)
        else:
            await assert_risk_control(resp)
    async with client.post("/_emulator/signin_wall", json={"mode": "off"}) as resp:
        assert resp.status == 200
    async with client.post(SIGNIN, json=body) as resp:
        assert (await resp.json())["success"] is True


async def _assert_waf_page(resp: aiohttp.ClientResponse) -> None:
    assert resp.status == 200 and resp.content_type == "text/html"
    page = await resp.text()
    assert "aliyun_waf" in page and "_____tmd_____" in page


async def test_rule3_more_than_twelve_signins_in_six_minutes_get_the_waf_page(client: Client) -> None:
    """§7.1 [S]: ~12 sign-ins per 6 min per IP, then the slider; the window slides."""
    state = state_of(client)
    body = {"email": DEMO[0], "password": password_digest(DEMO[1])}
    for _ in range(12):
        async with client.post(SIGNIN, json=body) as resp:
            assert (await resp.json())["success"] is True
    async with client.post(SIGNIN, json=body) as resp:
        await _assert_waf_page(resp)
    assert state.log[-1].rejected == "signin_rate"
    start = time.time()
    state.logins.clock = lambda: start + 361
    async with client.post(SIGNIN, json=body) as resp:
        assert (await resp.json())["success"] is True


async def test_rule4_refresh_rotates_and_each_token_is_spent_once(client: Client) -> None:
    """The answer carries a new pair (body and Set-Cookie); the new access token writes."""
    state = state_of(client)
    seed = state.create_login("alice@example.com")
    resp, answer = await _refresh(client, seed.cookie)
    assert answer["success"] is True and set(answer["data"]) == {"access_token", "refresh_token", "expires_at"}
    new = answer["data"]
    assert new["refresh_token"] != seed.refresh_token and new["access_token"] != seed.access_token
    cookies = _set_cookies(resp)
    assert cookies["token"].value == new["access_token"] and cookies["refresh_token"].value == new["refresh_token"]
    assert cookies["refresh_token"]["httponly"]
    jar = _jar(seed.cookie) | {"token": new["access_token"], "refresh_token": new["refresh_token"]}
    answer, _ = await _new_chat(client, v2_headers(token=new["access_token"], cookie=_cookie(jar)))
    assert answer["success"] is True
    resp, answer = await _refresh(client, _cookie(jar))
    assert answer["success"] is True
    async with client.get("/_emulator/refreshes") as resp:
        records = await resp.json()
    assert [(r["token_fingerprint"], r["login_id"], r["result"]) for r in records] == [
        (fingerprint(seed.refresh_token), seed.id, "ok"), (fingerprint(new["refresh_token"]), seed.id, "ok")]
    assert state.logins.logins[seed.id].refresh_count == 2


@pytest.mark.parametrize(("header", "value"), [
    ("version", None), ("source", None), ("x-request-origin", None), ("sec-fetch-site", None),
    ("sec-fetch-site", "same-origin")])
async def test_rule4_refresh_without_the_auth_headers_is_bad_request(client: Client, header: str,
                                                                     value: str | None) -> None:
    """§7.1 [S]: "Invalid request header"; the token is not spent by a refused call."""
    state = state_of(client)
    seed = state.create_login("alice@example.com")
    headers = {k: v for k, v in refresh_headers(seed.cookie).items() if k != header}
    if value is not None:
        headers[header] = value
    async with client.get(REFRESH, headers=headers) as resp:
        assert resp.status == 200 and resp.headers["x-actual-status-code"] == "400"
        assert (await resp.json())["data"] == {"code": "Bad_Request", "details": "Invalid request header"}
    _, answer = await _refresh(client, seed.cookie)
    assert answer["success"] is True
    assert [r.result for r in state.refreshes] == ["bad_headers", "ok"]


async def test_rule4_a_reused_refresh_token_kills_the_login(client: Client) -> None:
    """Reuse → 401, and from then on the login's access and refresh tokens are all refused."""
    state = state_of(client)
    seed = state.create_login("alice@example.com")
    _, first = await _refresh(client, seed.cookie)
    resp, _ = await _refresh(client, seed.cookie)  # the spent one again
    await _assert_unauthorized(resp)
    assert state.logins.logins[seed.id].alive is False
    newest = first["data"]
    jar = _cookie(_jar(seed.cookie) | {"token": newest["access_token"], "refresh_token": newest["refresh_token"]})
    resp, _ = await _refresh(client, jar)
    await _assert_unauthorized(resp)
    async with client.post(V2_NEW, json=new_chat_body(),
                           headers=v2_headers(token=newest["access_token"], cookie=jar)) as resp:
        await _assert_unauthorized(resp)
    assert state.log[-1].rejected == "dead_login"
    assert [r.result for r in state.refreshes] == ["ok", "reused", "dead"]
    async with client.get("/_emulator/logins") as resp:
        assert (await resp.json())[0]["alive"] is False


@pytest.mark.parametrize("cookie", ["refresh_token=never-issued", "acw_tc=x"], ids=["unknown", "none"])
async def test_rule4_an_unknown_refresh_token_is_unauthorized(client: Client, cookie: str) -> None:
    resp, _ = await _refresh(client, cookie)
    await _assert_unauthorized(resp)
    assert [r.result for r in state_of(client).refreshes] == ["unknown"]


async def test_rule5_chats_new_rotates_ssxmod_itna_and_stale_values_are_only_recorded(client: Client) -> None:
    """Set-Cookie updates the login's current value; an old value still passes, noted in the log."""
    state = state_of(client)
    seed = state.create_login("alice@example.com")
    answer, resp = await _new_chat(client, login_headers(seed))
    rotated = _set_cookies(resp)["ssxmod_itna"].value
    assert rotated != _jar(seed.cookie)["ssxmod_itna"] and state.logins.logins[seed.id].jar["ssxmod_itna"] == rotated
    chat_id = answer["data"]["id"]
    async with client.post(completion_url(chat_id), json=completion_body(chat_id),
                           headers=login_headers(seed, f"/c/{chat_id}", completions=True)) as resp:
        assert resp.status == 200 and "Set-Cookie" not in resp.headers
        await resp.read()
    fresh = _cookie(_jar(seed.cookie) | {"ssxmod_itna": rotated})
    answer, _ = await _new_chat(client, v2_headers(token=seed.access_token, cookie=fresh))
    assert answer["success"] is True
    assert [(r.login_id, r.stale_cookies) for r in state.log] == [
        (seed.id, []), (seed.id, ["ssxmod_itna"]), (seed.id, [])]


async def test_rule6_a_token_with_another_logins_jar_is_risk_control(client: Client) -> None:
    """§7.1 [S]: x-ap names the other login → captcha; a bare token (no x-ap) passes."""
    state = state_of(client)
    alice, bob = state.create_login("alice@example.com"), state.create_login("bob@example.com")
    mixed = _cookie(_jar(bob.cookie) | {"token": alice.access_token})
    async with client.post(V2_NEW, json=new_chat_body(),
                           headers=v2_headers(token=alice.access_token, cookie=mixed)) as resp:
        await assert_risk_control(resp)
    assert state.log[-1].rejected == "jar_mismatch"
    answer, _ = await _new_chat(client, v2_headers(token=alice.access_token))
    assert answer["success"] is True


async def test_rule7_a_challenge_for_writes_answers_risk_control_n_times_for_that_login(client: Client) -> None:
    state = state_of(client)
    alice, bob = state.create_login("alice@example.com"), state.create_login("bob@example.com")
    async with client.post("/_emulator/challenge", json={"login": "alice@example.com", "times": 2,
                                                         "on": "writes"}) as resp:
        assert (await resp.json())["login"] == alice.id
    for _ in range(2):
        async with client.post(V2_NEW, json=new_chat_body(), headers=login_headers(alice)) as resp:
            await assert_risk_control(resp)
    for seed in (bob, alice):
        answer, _ = await _new_chat(client, login_headers(seed))
        assert answer["success"] is True
    assert [r.rejected for r in state.log] == ["challenged", "challenged", None, None]


async def test_rule7_a_challenge_for_refresh_is_recorded_and_spends_nothing(client: Client) -> None:
    state = state_of(client)
    seed = state.create_login("alice@example.com")
    async with client.post("/_emulator/challenge", json={"login": seed.id, "times": 1, "on": "refresh"}) as resp:
        assert resp.status == 200
    resp, _ = await _refresh(client, seed.cookie)
    await assert_risk_control(resp)
    _, answer = await _refresh(client, seed.cookie)
    assert answer["success"] is True
    assert [r.result for r in state.refreshes] == ["challenged", "ok"]


async def test_rule8_require_bx_refuses_writes_without_the_bundle(client: Client) -> None:
    """The bx-* headers are recorded; once demanded, a write without bx-ua/bx-umidtoken is captcha."""
    state = state_of(client)
    seed = state.create_login("alice@example.com")
    async with client.post("/_emulator/require_bx", json={"login": seed.id, "on": True}) as resp:
        assert resp.status == 200
    async with client.post(V2_NEW, json=new_chat_body(), headers=login_headers(seed)) as resp:
        await assert_risk_control(resp)
    bundle = {"bx-ua": "231!ua-blob", "bx-umidtoken": "T2gA-umid", "bx-v": "2.5.31"}
    answer, _ = await _new_chat(client, login_headers(seed) | bundle)
    assert answer["success"] is True
    assert state.log[0].rejected == "no_bx" and state.log[1].rejected is None
    assert {name: state.log[1].headers[name] for name in bundle} == bundle
    other = state.create_login("bob@example.com")
    answer, _ = await _new_chat(client, login_headers(other))
    assert answer["success"] is True


async def test_faults_armed_for_the_chat_host_do_not_reach_the_auth_host(client: Client) -> None:
    """The auth host is another host: a fault armed for "/" waits for a chat-host request."""
    state = state_of(client)
    seed = state.create_login("alice@example.com")
    state.arm({"fault": "http_503"}, path="/")
    _, answer = await _refresh(client, seed.cookie)
    assert answer["success"] is True
    async with client.post(V2_NEW, json=new_chat_body(), headers=chat_headers("x")) as resp:
        assert resp.status == 503


async def test_reset_keeps_logins_and_clears_switches(client: Client) -> None:
    state = state_of(client)
    seed: LoginSeed = state.create_login("alice@example.com")
    async with client.post("/_emulator/challenge", json={"login": seed.id, "times": 5}) as resp:
        assert resp.status == 200
    await _refresh(client, seed.cookie)
    async with client.post("/_emulator/reset") as resp:
        assert resp.status == 200
    assert state.refreshes == [] and seed.id in state.logins.logins
    async with client.post("/_emulator/challenge", json={"login": "nobody@example.com"}) as resp:
        assert resp.status == 404
