"""The strict emulator refuses qwen-v2 writes the 2026 service refuses (docs/qwen-protocol.md §7).

Each test starts from the request the 2026 web app sends (``support.v2_headers``,
``support.completion_body``), which the emulator accepts, and breaks exactly one
rule: without that rule the request would stream and the test would fail.
"""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp
import pytest
from pytest_aiohttp import AiohttpClient

from relay.emulator import make_emulator_app
from relay.emulator.capture import redacted
from relay.emulator.strict import MAX_COMPLETION_BODY_BYTES, SAMPLING_FIELDS
from tests.emulator.support import (
    SSE_TYPE,
    TOKEN,
    V2_NEW,
    V2_STOP,
    Client,
    chat_headers,
    completion_body,
    completion_url,
    create_chat,
    events,
    new_chat_body,
    new_chat_headers,
    state_of,
    v2_headers,
)

RISK_RET = ["FAIL_SYS_USER_VALIDATE", "RGV587_ERROR::SM::哎哟喂,被挤爆啦,请稍后重试"]
RISK_URL = "https://chat.qwen.ai:443//api/v2/chat/completions/_____tmd_____/punish?x5secdata="


@pytest.fixture
async def client(aiohttp_client: AiohttpClient) -> Client:
    return await aiohttp_client(make_emulator_app())


async def assert_risk_control(resp: aiohttp.ClientResponse) -> None:
    """The §7.5 answer: HTTP 200, JSON, ``ret`` markers and a punish URL with a fresh x5secdata."""
    assert resp.status == 200 and resp.content_type == "application/json"
    answer = await resp.json()
    assert set(answer) == {"ret", "data"} and answer["ret"] == RISK_RET
    url = answer["data"]["url"]
    assert set(answer["data"]) == {"url"} and url.startswith(RISK_URL)
    assert url.endswith("&x5step=2&action=captcha&pureCaptcha=") and len(url) > len(RISK_URL) + 40


async def complete(client: Client, chat_id: str, headers: dict[str, str],
                   body: dict[str, Any] | None = None) -> aiohttp.ClientResponse:
    payload = completion_body(chat_id) if body is None else body
    return await client.post(completion_url(chat_id), json=payload, headers=headers)


def without(headers: dict[str, str], *names: str) -> dict[str, str]:
    lowered = {name.lower() for name in names}
    return {key: value for key, value in headers.items() if key.lower() not in lowered}


async def test_happy_path_of_the_2026_web_app_is_accepted_and_recorded(client: Client) -> None:
    """New chat, completion, stop and delete with the full header set all pass; the log keeps what came."""
    state = state_of(client)
    chat_id = await create_chat(client)
    async with await complete(client, chat_id, chat_headers(chat_id)) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"] == SSE_TYPE
        created = events(await resp.text())[0]["response.created"]
    stop = {"chat_id": chat_id, "response_id": created["response_id"]}
    async with client.post(f"{V2_STOP}?chat_id={chat_id}", json=stop,
                           headers=chat_headers(chat_id, completions=False)) as resp:
        assert (await resp.json())["success"] is True
    async with client.delete(f"/api/v2/chats/{chat_id}", headers=v2_headers(f"/c/{chat_id}")) as resp:
        assert (await resp.json())["data"] == {"status": True}
    assert [record.rejected for record in state.log] == [None] * 4
    async with client.get("/_emulator/log") as resp:
        log = await resp.json()
    completion = log[1]
    assert completion["headers"]["sec-fetch-mode"] == "cors" and completion["headers"]["x-accel-buffering"] == "no"
    assert completion["headers"]["authorization"] == f"Bearer {redacted(TOKEN)}"
    assert completion["cookies"] == {"token": redacted(TOKEN)} and TOKEN not in str(log)
    assert completion["body"]["chatId"] == chat_id and completion["rejected"] is None


@pytest.mark.parametrize("path", ["new", "completions", "stop", "delete"])
async def test_rule1_bearer_without_token_cookie_is_risk_control(client: Client, path: str) -> None:
    """§7.1 [S, controlled]: a Bearer alone was answered with the risk-control body."""
    chat_id = await create_chat(client)
    requests = {
        "new": ("POST", V2_NEW, new_chat_headers(), new_chat_body()),
        "completions": ("POST", completion_url(chat_id), chat_headers(chat_id), completion_body(chat_id)),
        "stop": ("POST", f"{V2_STOP}?chat_id={chat_id}", chat_headers(chat_id, completions=False),
                 {"chat_id": chat_id, "response_id": "r"}),
        "delete": ("DELETE", f"/api/v2/chats/{chat_id}", v2_headers(f"/c/{chat_id}"), None),
    }
    method, url, headers, body = requests[path]
    async with client.request(method, url, json=body, headers=without(headers, "Cookie")) as resp:
        await assert_risk_control(resp)
    assert state_of(client).log[-1].rejected == "no_token_cookie" and chat_id in state_of(client).chats


@pytest.mark.parametrize(("request_id", "rule"), [
    (None, "no_request_id"), ("not-a-uuid", "bad_request_id"),
    (str(uuid.uuid1()), "bad_request_id")], ids=["missing", "garbage", "uuid1"])
async def test_rule2_request_id_must_be_a_uuid4(client: Client, request_id: str | None, rule: str) -> None:
    chat_id = await create_chat(client)
    headers = without(chat_headers(chat_id), "x-request-id")
    if request_id is not None:
        headers["x-request-id"] = request_id
    async with await complete(client, chat_id, headers) as resp:
        await assert_risk_control(resp)
    assert state_of(client).log[-1].rejected == rule


async def test_rule2_a_reused_request_id_is_risk_control(client: Client) -> None:
    """Any earlier request counts, here a models read; a fresh id per call is what the web app sends."""
    chat_id = await create_chat(client)
    headers = chat_headers(chat_id)
    async with client.get("/api/v2/models/", headers={"x-request-id": headers["x-request-id"],
                                                       "Cookie": f"token={TOKEN}"}) as resp:
        assert (await resp.json())["success"] is True
    async with await complete(client, chat_id, headers) as resp:
        await assert_risk_control(resp)
    assert state_of(client).log[-1].rejected == "request_id_reused"


@pytest.mark.parametrize(("missing", "rule"), [
    ("sec-fetch-dest", "missing_sec_fetch"), ("sec-fetch-mode", "missing_sec_fetch"),
    ("sec-fetch-site", "missing_sec_fetch"), ("sec-ch-ua", "missing_sec_ch_ua"),
    ("sec-ch-ua-mobile", "missing_sec_ch_ua"), ("sec-ch-ua-platform", "missing_sec_ch_ua"),
    ("Origin", "missing_origin"), ("timezone", "missing_timezone"), ("Referer", "bad_referer")])
async def test_rule3_each_browser_header_is_required(client: Client, missing: str, rule: str) -> None:
    chat_id = await create_chat(client)
    async with await complete(client, chat_id, without(chat_headers(chat_id), missing)) as resp:
        await assert_risk_control(resp)
    assert state_of(client).log[-1].rejected == rule


@pytest.mark.parametrize("timezone", ["2026-12-03T08:30:00Z", "Thu Dec 3 2026 08:30:00 GMT+0000",
                                      "Thu Dec 03 2026 08:30:00 UTC", "UTC"])
async def test_rule3_timezone_must_be_in_date_to_string_form(client: Client, timezone: str) -> None:
    chat_id = await create_chat(client)
    async with await complete(client, chat_id, chat_headers(chat_id) | {"timezone": timezone}) as resp:
        await assert_risk_control(resp)
    assert state_of(client).log[-1].rejected == "bad_timezone"


async def test_rule3_timezone_may_carry_the_zone_name(client: Client) -> None:
    chat_id = await create_chat(client)
    zoned = {"timezone": "Thu Dec 03 2026 15:04:05 GMT+0800 (China Standard Time)"}
    async with await complete(client, chat_id, chat_headers(chat_id) | zoned) as resp:
        assert resp.headers["Content-Type"] == SSE_TYPE


@pytest.mark.parametrize("user_agent", [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/155.0.0.0 Safari/537.36",
    "Python/3.12 aiohttp/3.12"], ids=["other-major", "not-chrome"])
async def test_rule3_user_agent_must_match_sec_ch_ua(client: Client, user_agent: str) -> None:
    chat_id = await create_chat(client)
    async with await complete(client, chat_id, chat_headers(chat_id) | {"User-Agent": user_agent}) as resp:
        await assert_risk_control(resp)
    assert state_of(client).log[-1].rejected == "ua_mismatch"


async def test_rule3_referer_must_be_the_page_of_the_call(client: Client) -> None:
    """chats/new comes from /c/new-chat; completions and stop from /c/<that chat>."""
    chat_id = await create_chat(client)
    async with client.post(V2_NEW, json=new_chat_body(), headers=v2_headers(f"/c/{chat_id}")) as resp:
        await assert_risk_control(resp)
    async with await complete(client, chat_id, v2_headers("/c/new-chat", completions=True)) as resp:
        await assert_risk_control(resp)
    async with client.post(f"{V2_STOP}?chat_id={chat_id}", json={"response_id": "r"},
                           headers=v2_headers("/c/another-chat")) as resp:
        await assert_risk_control(resp)
    assert [r.rejected for r in state_of(client).log[1:]] == ["bad_referer"] * 3


async def test_rule3_delete_accepts_any_referer(client: Client) -> None:
    chat_id = await create_chat(client)
    headers = v2_headers("/") | {"Referer": "https://chat.qwen.ai/"}
    async with client.delete(f"/api/v2/chats/{chat_id}", headers=headers) as resp:
        assert (await resp.json())["success"] is True


@pytest.mark.parametrize(("change", "rule"), [
    ({"Accept": "text/event-stream"}, "accept_event_stream"),
    ({"Accept": "application/json, text/event-stream"}, "accept_event_stream"),
    ({"x-accel-buffering": "yes"}, "no_accel_buffering")])
async def test_rule4_completions_want_json_accept_and_no_buffering(client: Client, change: dict[str, str],
                                                                  rule: str) -> None:
    chat_id = await create_chat(client)
    async with await complete(client, chat_id, chat_headers(chat_id) | change) as resp:
        await assert_risk_control(resp)
    assert state_of(client).log[-1].rejected == rule


async def test_rule4_missing_accel_buffering_is_risk_control(client: Client) -> None:
    chat_id = await create_chat(client)
    async with await complete(client, chat_id, without(chat_headers(chat_id), "x-accel-buffering")) as resp:
        await assert_risk_control(resp)
    assert state_of(client).log[-1].rejected == "no_accel_buffering"


async def test_rule5_a_completion_body_over_128000_bytes_is_risk_control(client: Client) -> None:
    """§7.3 [C]: ~117 KB passed, ~129 KB did not; the cut is at 128,000 encoded bytes."""
    chat_id = await create_chat(client)
    small = completion_body(chat_id, "x" * 117_000)
    async with await complete(client, chat_id, chat_headers(chat_id), small) as resp:
        assert resp.headers["Content-Type"] == SSE_TYPE
    big = completion_body(chat_id, "x" * (MAX_COMPLETION_BODY_BYTES + 1))
    async with await complete(client, chat_id, chat_headers(chat_id), big) as resp:
        await assert_risk_control(resp)
    assert state_of(client).log[-1].rejected == "body_too_large"


async def test_rule6_an_expired_cookie_token_is_unauthorized_even_with_a_good_bearer(client: Client) -> None:
    """The cookie is what counts (§7.1): a valid Bearer does not rescue an expired cookie."""
    chat_id = await create_chat(client)
    headers = chat_headers(chat_id) | {"Cookie": "token=expired-token"}
    async with await complete(client, chat_id, headers) as resp:
        assert resp.status == 200 and resp.headers["x-actual-status-code"] == "401"
        answer = await resp.json()
    assert answer["success"] is False and answer["data"]["code"] == "Unauthorized"


@pytest.mark.parametrize("path", ["new", "completions"])
async def test_rule7_no_version_header_is_bad_request(client: Client, path: str) -> None:
    """§7.2 [S, controlled]: without ``version`` a write answers 200 + Bad_Request "internal error"."""
    chat_id = await create_chat(client)
    if path == "new":
        resp = await client.post(V2_NEW, json=new_chat_body(), headers=without(new_chat_headers(), "version"))
    else:
        resp = await complete(client, chat_id, without(chat_headers(chat_id), "version"))
    async with resp:
        assert resp.status == 200 and resp.headers["x-actual-status-code"] == "400"
        answer = await resp.json()
    assert answer["data"] == {"code": "Bad_Request", "details": "internal error"}
    assert state_of(client).log[-1].rejected == "no_version"


async def test_rules_answer_in_order(client: Client) -> None:
    """The first broken rule answers: cookie before version, version before body shape."""
    chat_id = await create_chat(client)
    headers = without(chat_headers(chat_id), "Cookie", "version")
    async with await complete(client, chat_id, headers) as resp:
        await assert_risk_control(resp)
    body = completion_body(chat_id, temperature=0.5)
    async with await complete(client, chat_id, without(chat_headers(chat_id), "version"), body) as resp:
        assert resp.headers["x-actual-status-code"] == "400"
    assert [r.rejected for r in state_of(client).log[1:]] == ["no_token_cookie", "no_version"]


@pytest.mark.parametrize("field", sorted(SAMPLING_FIELDS))
async def test_rule8_openai_sampling_fields_are_a_validation_error(client: Client, field: str) -> None:
    chat_id = await create_chat(client)
    body = completion_body(chat_id) | {field: None}
    async with await complete(client, chat_id, chat_headers(chat_id), body) as resp:
        assert resp.status == 200 and resp.headers["x-actual-status-code"] == "422"
        answer = await resp.json()
    assert answer["data"]["code"] == "RequestValidationError" and field in answer["data"]["details"]
    assert state_of(client).log[-1].rejected == "sampling_field"


def _drop(body: dict[str, Any], key: str) -> None:
    del body[key]


def _message(body: dict[str, Any]) -> dict[str, Any]:
    message: dict[str, Any] = body["messages"][0]
    return message


@pytest.mark.parametrize(("name", "breakage"), [
    ("chat_id", lambda b: _drop(b, "chat_id")),
    ("chat_id", lambda b: b.update(chat_id="another")),
    ("chatId", lambda b: _drop(b, "chatId")),
    ("parentId", lambda b: b.update(parentId=None)),
    ("model", lambda b: _drop(b, "model")),
    ("messages", lambda b: b["messages"].append(dict(b["messages"][0]))),
    ("fid", lambda b: _drop(_message(b), "fid")),
    ("childrenIds", lambda b: _message(b).update(childrenIds=[])),
    ("childrenIds", lambda b: _message(b).update(childrenIds=["not-a-uuid"])),
    ("role", lambda b: _message(b).update(role="system")),
])
async def test_rule8_completion_body_needs_the_2026_shape(client: Client, name: str, breakage: Any) -> None:
    chat_id = await create_chat(client)
    body = completion_body(chat_id)
    breakage(body)
    async with await complete(client, chat_id, chat_headers(chat_id), body) as resp:
        assert resp.headers["x-actual-status-code"] == "422"
        answer = await resp.json()
    assert answer["data"]["code"] == "RequestValidationError" and name in answer["data"]["details"]
    assert state_of(client).log[-1].rejected == "body_shape"


@pytest.mark.parametrize(("name", "change"), [("chatId", {"chatId": None}), ("project_id", {"project_id": "p"}),
                                              ("models", {"models": "qwen3-235b-a22b"})])
async def test_rule8_chats_new_body_needs_the_2026_shape(client: Client, name: str, change: dict[str, Any]) -> None:
    async with client.post(V2_NEW, json=new_chat_body() | change, headers=new_chat_headers()) as resp:
        assert resp.headers["x-actual-status-code"] == "422"
        answer = await resp.json()
    assert answer["data"]["code"] == "RequestValidationError" and name in answer["data"]["details"]
    assert state_of(client).chats == {}


async def test_v1_paths_and_model_lists_stay_as_they_were(client: Client) -> None:
    """Strictness is for v2 writes only: Bearer alone still reads models and chats on v1."""
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    async with client.get("/api/v2/models/", headers=bearer) as resp:
        assert (await resp.json())["success"] is True
    async with client.get("/api/models", headers={"Cookie": f"token={TOKEN}"}) as resp:
        assert "data" in await resp.json()
    payload = {"model": "qwen-max-latest", "messages": [{"role": "user", "content": "hi"}], "stream": False}
    async with client.post("/api/chat/completions", json=payload, headers=bearer) as resp:
        assert resp.status == 200
    assert [r.rejected for r in state_of(client).log] == [None] * 3
    assert state_of(client).log[0].headers["authorization"] == f"Bearer {redacted(TOKEN)}"
