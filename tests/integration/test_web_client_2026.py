"""What the relay sends to the 2026 service, as the strict emulator logged it (issue "Today's chat.qwen.ai").

Each test reads ``RequestRecord.headers`` / ``cookies`` / ``body`` of the calls a
real request caused (models, chats/new, completions, stop, DELETE) and compares
them field by field with docs/qwen-protocol.md §7.2, §7.3 and §8. The emulator is
strict on qwen-v2, so a request that breaks a rule would also be refused; the
field checks say *which* field went wrong.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from openai import AsyncOpenAI

from relay.config import WebClient
from relay.emulator import RunningEmulator
from relay.emulator.state import RequestRecord
from tests.conftest import TOKEN, RelayFactory, auth, chat_body, directive
from tests.integration.web2026 import (
    CHATS_NEW,
    COMPLETIONS,
    STOP,
    UUID4,
    PathTap,
    calls,
    post_json,
    start_tapped_emulator,
    stream_answer,
    token_cookie,
    wait_until,
)

THINKER = "qwen3-max"
SEC_CH_UA = '"Chromium";v="156", "Google Chrome";v="156", "Not_A Brand";v="99"'
JS_DATE = re.compile(r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun) (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
                     r"(\d{2}) (\d{4}) (\d{2}):(\d{2}):(\d{2}) GMT([+-]\d{4})$")


@pytest.fixture
async def tapped() -> AsyncIterator[tuple[RunningEmulator, PathTap]]:
    running, tap = await start_tapped_emulator()
    try:
        yield running, tap
    finally:
        await running.close()


@pytest.fixture
def emulator(tapped: tuple[RunningEmulator, PathTap]) -> RunningEmulator:
    """Overrides conftest's: the same strict emulator, with its raw request targets kept."""
    return tapped[0]


@pytest.fixture
def tap(tapped: tuple[RunningEmulator, PathTap]) -> PathTap:
    return tapped[1]


def v2(**overrides: Any) -> dict[str, Any]:
    return {"dialect": "qwen-v2", **overrides}


def deleted(emulator: RunningEmulator, chat_id: str | None) -> list[RequestRecord]:
    return [r for r in calls(emulator, "DELETE", "/api/v2/chats/", prefix=True) if r.chat_id == chat_id]


def completion_of(emulator: RunningEmulator) -> RequestRecord:
    done = [r for r in calls(emulator, "POST", COMPLETIONS) if r.status == 200]
    assert len(done) == 1, [(r.path, r.status, r.rejected) for r in emulator.state.log]
    return done[0]


async def one_answer_and_one_abandoned_stream(relay: str, emulator: RunningEmulator) -> None:
    """A non-stream answer (models, new, completion, delete), then a stream the client leaves (new, completion,
    stop, delete); returns when every one of those calls is in the emulator's log."""
    async with aiohttp.ClientSession() as session:
        answer = await post_json(session, relay, chat_body(text=directive(reply="first")))
        assert answer.status == 200 and answer.content == "first", answer.body
        response = await session.post(relay + "/v1/chat/completions", headers=auth(), json=chat_body(
            stream=True, text=directive(reply="a b c d e f", chunks=6, delay_ms=300)))
        assert response.status == 200
        await response.content.readany()
        response.close()
    await wait_until(lambda: len(calls(emulator, "POST", STOP)) == 1, "the stop call")
    await wait_until(lambda: len(calls(emulator, "DELETE", "/api/v2/chats/", prefix=True)) == 2,
                     "both chats deleted")


def expected_common(origin: str, version: str = "0.3.12") -> dict[str, str]:
    """§8: the headers every qwen-v2 call carries, with their exact default values."""
    return {
        "origin": origin,
        "source": "web",
        "version": version,
        "sec-fetch-dest": "empty",
        "sec-fetch-mode": "cors",
        "sec-fetch-site": "same-origin",
        "sec-ch-ua": SEC_CH_UA,
        "sec-ch-ua-mobile": "?0",
        "sec-ch-ua-platform": '"Windows"',
        "accept-language": "en-US,en;q=0.9",
        "cookie": f"token={token_cookie()}",
        "authorization": f"Bearer {token_cookie()}",
    }


def assert_timezone_is_now(value: str, offset: str) -> None:
    """``timezone`` is JS ``Date().toString()`` without the zone name, at about now, in the given offset."""
    match = JS_DATE.match(value)
    assert match is not None, value
    assert match.group(8) == offset, value
    sign = 1 if offset[0] == "+" else -1
    shift = sign * (int(offset[1:3]) * 3600 + int(offset[3:5]) * 60)
    stamp = datetime.strptime(value[:24], "%a %b %d %Y %H:%M:%S").replace(tzinfo=UTC).timestamp() - shift
    assert abs(stamp - time.time()) < 120, value


async def test_every_call_carries_the_2026_web_header_set_with_its_own_referer(
        relay_factory: RelayFactory, emulator: RunningEmulator, tap: PathTap) -> None:
    """§7.2/§8 field by field on models, chats/new, completions, stop and DELETE: Origin, per-call Referer,
    source, version, uuid4 x-request-id distinct on every call, JS timezone, sec-fetch-*, client hints agreeing
    with the User-Agent, Accept-Language, token cookie and Bearer; completions Accept JSON and no buffering."""
    relay = await relay_factory(**v2())
    await one_answer_and_one_abandoned_stream(relay, emulator)
    log = emulator.state.log
    assert not [r for r in log if r.rejected], [(r.path, r.rejected) for r in log]
    origin = emulator.url
    models = calls(emulator, "GET", "/api/models")
    new = calls(emulator, "POST", CHATS_NEW)
    complete = calls(emulator, "POST", COMPLETIONS)
    stop = calls(emulator, "POST", STOP)
    delete = calls(emulator, "DELETE", "/api/v2/chats/", prefix=True)
    assert (len(models), len(new), len(complete), len(stop), len(delete)) == (1, 2, 2, 1, 2)
    chat_ids = [r.chat_id for r in new]
    referers = {
        **{id(r): f"{origin}/" for r in models},
        **{id(r): f"{origin}/c/new-chat" for r in new},
        **{id(r): f"{origin}/c/{r.chat_id}" for r in complete + stop + delete},
    }
    assert {r.chat_id for r in complete + stop + delete} == set(chat_ids)
    for record in log:
        headers = record.headers
        for name, value in expected_common(origin).items():
            assert headers.get(name) == value, (record.method, record.path, name, headers.get(name))
        assert headers.get("referer") == referers[id(record)], (record.path, headers.get("referer"))
        ua_major = re.search(r"Chrome/(\d+)\.", headers["user-agent"])
        assert ua_major is not None and ua_major.group(1) == "156", headers["user-agent"]
        assert "Windows NT" in headers["user-agent"]
        assert UUID4.match(headers["x-request-id"]), headers["x-request-id"]
        assert_timezone_is_now(headers["timezone"], "+0000")
        if record in complete:
            assert headers.get("accept") == "application/json"
            assert headers.get("x-accel-buffering") == "no"
        else:
            assert headers.get("accept") == "application/json, text/plain, */*", (record.path, headers)
            assert "x-accel-buffering" not in headers, record.path
        assert record.cookies == {"token": token_cookie()}, record.path
    request_ids = [r.headers["x-request-id"] for r in log]
    assert len(set(request_ids)) == len(request_ids) == 8, request_ids
    assert tap.of(stop[0]) == f"{STOP}?chat_id={stop[0].chat_id}"


async def test_web_version_setting_is_the_version_header_of_every_call(
        relay_factory: RelayFactory, emulator: RunningEmulator) -> None:
    """``--web-version`` (``WebClient.version``) is what every call's ``version`` header says (§7.2, §8)."""
    relay = await relay_factory(**v2(web=WebClient(version="0.3.99")))
    await one_answer_and_one_abandoned_stream(relay, emulator)
    assert len(emulator.state.log) == 8
    assert {r.headers.get("version") for r in emulator.state.log} == {"0.3.99"}


async def test_upstream_headers_override_the_relays_own_by_name_and_add_new_ones(
        relay_factory: RelayFactory, emulator: RunningEmulator) -> None:
    """``[upstream.headers]`` wins over the built set, name by name (any case), and adds bx-* headers (§8)."""
    relay = await relay_factory(**v2(upstream_headers=(
        ("Version", "0.4.0"), ("accept-language", "zh-CN,zh;q=0.9"), ("bx-v", "2.5.36"),
        ("bx-umidtoken", "T2gA-test"))))
    async with aiohttp.ClientSession() as session:
        answer = await post_json(session, relay, chat_body(text=directive(reply="ok")))
    assert answer.status == 200, answer.body
    await wait_until(lambda: len(calls(emulator, "DELETE", "/api/v2/chats/", prefix=True)) == 1, "the DELETE")
    assert len(emulator.state.log) == 4
    for record in emulator.state.log:
        assert record.headers.get("version") == "0.4.0", record.path
        assert record.headers.get("accept-language") == "zh-CN,zh;q=0.9", record.path
        assert record.headers.get("bx-v") == "2.5.36", record.path
        assert record.headers.get("bx-umidtoken") == "T2gA-test", record.path


async def test_timezone_setting_sends_the_clock_of_that_zone(
        relay_factory: RelayFactory, emulator: RunningEmulator) -> None:
    """``[upstream] timezone = "Asia/Shanghai"`` → ``… GMT+0800`` in JS ``Date().toString()`` form, now."""
    relay = await relay_factory(**v2(web=WebClient(timezone="Asia/Shanghai")))
    async with aiohttp.ClientSession() as session:
        answer = await post_json(session, relay, chat_body(text=directive(reply="ok")))
    assert answer.status == 200, answer.body
    assert len(emulator.state.log) >= 3
    for record in emulator.state.log:
        assert_timezone_is_now(record.headers["timezone"], "+0800")


async def test_token_cookie_is_on_every_call_merged_with_the_configured_cookies(
        relay_factory: RelayFactory, emulator: RunningEmulator) -> None:
    """§7.1/§8: ``Cookie: token=<token>`` first, then ``[upstream] cookies``; a ``token=`` there is ignored."""
    relay = await relay_factory(**v2(web=WebClient(cookies="acw_tc=abc; token=someone-else; x-ap=sg")))
    await one_answer_and_one_abandoned_stream(relay, emulator)
    assert len(emulator.state.log) == 8
    for record in emulator.state.log:
        assert record.cookies == {"token": token_cookie(), "acw_tc": "abc", "x-ap": "sg"}, record.path
        assert record.headers["cookie"] == f"token={token_cookie()}; acw_tc=abc; x-ap=sg", record.path
        assert record.token_fingerprint == token_cookie()[len("sha256:"):]


async def test_bearer_goes_with_the_cookie_by_default_and_is_left_out_when_switched_off(
        relay_factory: RelayFactory, emulator: RunningEmulator) -> None:
    """``[upstream] bearer = false``: no Authorization on any call, and the cookie alone is accepted (§7.1)."""
    relay = await relay_factory(**v2(web=WebClient(bearer=False)))
    await one_answer_and_one_abandoned_stream(relay, emulator)
    assert len(emulator.state.log) == 8
    for record in emulator.state.log:
        assert "authorization" not in record.headers, record.path
        assert record.cookies.get("token") == token_cookie(), record.path
        assert record.status == 200 and record.rejected is None, (record.path, record.status, record.rejected)


async def test_completion_and_new_chat_bodies_have_the_2026_shape(
        relay_factory: RelayFactory, emulator: RunningEmulator, tap: PathTap) -> None:
    """§7.3: chatId == chat_id == the query's chat_id, parentId "", message id null, one uuid4 child;
    chats/new with ``chatId: ""`` and ``project_id: ""``."""
    relay = await relay_factory(**v2())
    async with aiohttp.ClientSession() as session:
        answer = await post_json(session, relay, chat_body(text=directive(reply="shape")))
    assert answer.status == 200, answer.body
    (new,) = calls(emulator, "POST", CHATS_NEW)
    assert new.body["chatId"] == "" and new.body["project_id"] == ""
    assert new.body["models"] == ["qwen-max-latest"]
    assert new.body["chat_type"] == "t2t" and new.body["chat_mode"] == "normal"
    assert isinstance(new.body["timestamp"], int) and abs(new.body["timestamp"] / 1000 - time.time()) < 120
    completion = completion_of(emulator)
    body = completion.body
    chat_id = new.chat_id
    assert chat_id and tap.of(completion) == f"{COMPLETIONS}?chat_id={chat_id}"
    assert body["chat_id"] == body["chatId"] == chat_id
    assert body["parentId"] == "" and body["parent_id"] is None
    assert body["stream"] is True and body["incremental_output"] is True and body["version"] == "2.1"
    assert body["chat_mode"] == "normal" and body["model"] == "qwen-max-latest"
    (message,) = body["messages"]
    assert message["id"] is None and message["parentId"] is None
    assert isinstance(message["childrenIds"], list) and len(message["childrenIds"]) == 1
    assert UUID4.match(message["childrenIds"][0]) and UUID4.match(message["fid"])
    assert message["childrenIds"][0] != message["fid"]
    assert message["role"] == "user" and message["user_action"] == "chat" and message["files"] == []
    assert message["chat_type"] == message["sub_chat_type"] == "t2t"
    assert message["extra"] == {"meta": {"subChatType": "t2t"}}


async def test_client_sampling_fields_never_reach_the_upstream_body(
        relay_factory: RelayFactory, emulator: RunningEmulator) -> None:
    """§7.3: temperature, top_p, max_tokens, seed, stop, user, response_format from the openai SDK are not
    forwarded (the strict service refuses them), and the request succeeds."""
    relay = await relay_factory(**v2())
    async with AsyncOpenAI(base_url=relay + "/v1", api_key=TOKEN, max_retries=0, timeout=20) as sdk:
        reply = await sdk.chat.completions.create(
            model="qwen-max-latest", messages=[{"role": "user", "content": directive(reply="plain")}],
            temperature=0.2, top_p=0.9, max_tokens=50, seed=7, stop=["\n\n"], user="alice",
            response_format={"type": "text"})
    assert reply.choices[0].message.content == "plain"
    body = completion_of(emulator).body
    forbidden = {"temperature", "top_p", "max_tokens", "seed", "stop", "user", "response_format", "n",
                 "messages.0.temperature"}
    assert not forbidden & set(body), sorted(body)
    assert not forbidden & set(body["messages"][0]), sorted(body["messages"][0])
    assert set(body) == {"stream", "version", "incremental_output", "chat_id", "chatId", "parentId",
                         "parent_id", "chat_mode", "model", "timestamp", "messages"}


AUTO = {"thinking_enabled": True, "auto_thinking": True, "thinking_mode": "Auto", "thinking_format": "summary"}
THINKING = {"thinking_enabled": True, "auto_thinking": False, "thinking_mode": "Thinking",
            "thinking_format": "summary"}
FAST = {"thinking_enabled": False, "auto_thinking": False, "thinking_mode": "Fast"}
ALWAYS = {"output_schema": "phase", "research_mode": "normal", "auto_search": False}


@pytest.mark.parametrize(("model", "extra", "gear"), [
    (THINKER, {}, AUTO),
    (THINKER + "-thinking", {}, THINKING),
    (THINKER, {"enable_thinking": True}, THINKING),
    (THINKER, {"chat_template_kwargs": {"enable_thinking": True}}, THINKING),
    (THINKER, {"enable_thinking": False}, FAST),
    (THINKER + "-thinking", {"enable_thinking": False}, FAST),
    (THINKER, {"thinking_budget": 1024}, {**AUTO, "thinking_budget": 1024}),
], ids=["no-switch-auto", "thinking-id", "enable-true", "template-kwargs-true", "enable-false-fast",
        "explicit-off-beats-id", "budget-only-when-sent"])
async def test_thinking_gear_is_exactly_the_front_ends(
        relay_factory: RelayFactory, emulator: RunningEmulator, model: str, extra: dict[str, Any],
        gear: dict[str, Any]) -> None:
    """§7.3 table: Auto by default, Thinking when asked, Fast (no thinking_format) when off; thinking_budget
    only when the client sent one."""
    relay = await relay_factory(**v2())
    async with aiohttp.ClientSession() as session:
        answer = await post_json(session, relay, chat_body(model=model, text=directive(reply="geared"), **extra))
    assert answer.status == 200, answer.body
    assert answer.content == "geared"
    sent = completion_of(emulator).body["messages"][0]["feature_config"]
    assert sent == {**gear, **ALWAYS}


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "non-stream"])
async def test_model_that_must_think_is_asked_in_auto_and_its_thinking_is_withheld(
        relay_factory: RelayFactory, emulator: RunningEmulator, stream: bool) -> None:
    """qwen3.8-plus (``think_skip.enable: false``) with ``enable_thinking: false``: sent in Auto (Fast would be
    ``invalid_input``), answered, and the client gets no reasoning although the model thought."""
    relay = await relay_factory(**v2())
    text = directive(reply="Only the answer.", think="Private thoughts.")
    async with aiohttp.ClientSession() as session:
        ask = stream_answer if stream else post_json
        quiet = await ask(session, relay, chat_body(model="qwen3.8-plus", text=text, enable_thinking=False))
        loud = await ask(session, relay, chat_body(model="qwen3.8-plus", text=text))
    assert quiet.status == 200, quiet.body
    assert quiet.content == "Only the answer."
    assert quiet.reasoning == "" and "Private" not in quiet.content
    if stream:
        assert not any("reasoning_content" in event for event in quiet.events)
    else:
        assert "reasoning_content" not in quiet.body["choices"][0]["message"] or \
            not quiet.body["choices"][0]["message"]["reasoning_content"]
    assert loud.status == 200 and "Private thoughts." in loud.reasoning, "the emulator must really think"
    first = calls(emulator, "POST", COMPLETIONS)[0]
    assert first.rejected is None and first.status == 200
    assert first.body["messages"][0]["feature_config"] == {**AUTO, **ALWAYS}
