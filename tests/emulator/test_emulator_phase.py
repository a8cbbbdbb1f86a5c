"""The emulator speaks qwen-phase on the v1 paths, and search on v1 too (issue 4, §3).

Raw aiohttp clients against the real app; the body switches ``incremental_output``
and ``feature_config.output_schema`` are read independently, as the service does.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from pytest_aiohttp import AiohttpClient

from relay.emulator import make_emulator_app
from relay.emulator.script import DEFAULT_SOURCES
from tests.emulator.support import (
    AUTH,
    CHAT,
    SSE_TYPE,
    WAIT_S,
    Client,
    data_payloads,
    deltas,
    events,
    phases,
    state_of,
    with_directive,
)

PHASE_CONFIG = {"thinking_enabled": True, "output_schema": "phase", "thinking_budget": 38912}


@pytest.fixture
async def client(aiohttp_client: AiohttpClient) -> Client:
    return await aiohttp_client(make_emulator_app())


def body(
    text: str = "hi",
    *,
    model: str = "qwen-max-latest",
    feature_config: dict[str, Any] | None = None,
    stream: bool = True,
    **extra: Any,
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "user", "content": text, "chat_type": "t2t", "extra": {}}
    if feature_config is not None:
        message["feature_config"] = feature_config
    return {"model": model, "messages": [message], "stream": stream, **extra}


async def stream(client: Client, payload: dict[str, Any]) -> str:
    async with client.post(CHAT, json=payload, headers=AUTH) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == SSE_TYPE
        return await resp.text()


async def test_phase_schema_tags_think_and_answer_and_closes_each_phase(client: Client) -> None:
    text = with_directive("hi", think="abcd", reply="wxyz", chunks=2)
    raw = await stream(client, body(text, feature_config=PHASE_CONFIG, incremental_output=True))
    assert phases(raw) == [
        ("think", "typing", "ab"),
        ("think", "typing", "cd"),
        ("think", "finished", ""),
        ("answer", "typing", "wx"),
        ("answer", "typing", "yz"),
        ("answer", "finished", ""),
    ]
    assert all("role" not in delta for delta in deltas(raw))  # as in the §3 sample
    assert data_payloads(raw)[-1] == "[DONE]"
    record = state_of(client).log[0]
    assert record.dialect == "phase" and record.feature_config == PHASE_CONFIG
    assert record.chat_type == "t2t" and record.events_sent == 4


async def test_phase_without_thinking_enabled_sends_no_thinking(client: Client) -> None:
    config = {**PHASE_CONFIG, "thinking_enabled": False}
    text = with_directive("hi", think="secret", reply="ok", chunks=1)
    raw = await stream(client, body(text, feature_config=config, incremental_output=True))
    assert phases(raw) == [("answer", "typing", "ok"), ("answer", "finished", "")]


@pytest.mark.parametrize(("model", "thinks"), [("qwq-32b", True), ("qwen-turbo-latest", False)])
async def test_phase_default_thought_only_for_models_that_think(client: Client, model: str, thinks: bool) -> None:
    raw = await stream(client, body("2+2?", model=model, feature_config=PHASE_CONFIG, incremental_output=True))
    thought = "".join(content for phase, status, content in phases(raw) if phase == "think")
    assert ("2+2?" in thought) is thinks
    assert any(phase == "think" for phase, _, _ in phases(raw)) is thinks


async def test_phase_schema_without_incremental_output_is_cumulative_per_phase(client: Client) -> None:
    text = with_directive("hi", think="abcd", reply="wxyz", chunks=2)
    raw = await stream(client, body(text, feature_config=PHASE_CONFIG))
    assert [c for _, s, c in phases(raw) if s == "typing"] == ["ab", "abcd", "wx", "wxyz"]


async def test_incremental_without_phase_schema_has_no_phase_key(client: Client) -> None:
    """§3 last paragraph: without output_schema "phase" the key is missing; thinking stays inline."""
    config = {"thinking_enabled": True}
    text = with_directive("hi", think="hm", reply="ok", chunks=4)
    raw = await stream(client, body(text, feature_config=config, incremental_output=True))
    assert all("phase" not in d and "status" not in d for d in deltas(raw))
    assert "".join(d["content"] for d in deltas(raw)) == "<think>hm</think>ok"
    assert state_of(client).log[0].dialect == "phase"


async def test_plain_v1_is_recorded_as_v1(client: Client) -> None:
    await stream(client, body(with_directive("hi", reply="ok")))
    record = state_of(client).log[0]
    assert record.dialect == "v1" and record.feature_config is None and record.chat_type == "t2t"


async def test_phase_usage_on_request_rides_on_last_answer_frame(client: Client) -> None:
    text = with_directive("hi", reply="abcd", chunks=2, usage=True)
    raw = await stream(client, body(text, feature_config=PHASE_CONFIG, incremental_output=True))
    decoded = [e for e in events(raw) if isinstance(e, dict)]
    with_usage = [e for e in decoded if "usage" in e]
    assert len(with_usage) == 1 and with_usage[0]["choices"][0]["delta"]["content"] == "cd"


async def test_v1_search_sends_sources_before_the_cumulative_answer(client: Client) -> None:
    raw = await stream(client, body(with_directive("news?", reply="abcd", chunks=2), chat_type="search"))
    first, *rest = deltas(raw)
    assert first == {
        "name": "web_search",
        "content": "",
        "extra": {"web_search_info": [dict(s) for s in DEFAULT_SOURCES]},
    }
    assert [d["content"] for d in rest] == ["ab", "abcd"]
    assert state_of(client).log[0].chat_type == "search"
    assert state_of(client).log[0].events_sent == 2  # the search frame is not content


async def test_message_chat_type_search_and_directive_sources(client: Client) -> None:
    sources = [{"title": "T", "url": "https://t.example/", "snippet": "s"}]
    payload = body(with_directive("news?", reply="ok", sources=sources), feature_config=PHASE_CONFIG,
                   incremental_output=True)
    payload["messages"][0]["chat_type"] = "search"
    raw = await stream(client, payload)
    search = deltas(raw)[0]
    assert search["extra"]["web_search_info"] == sources
    assert (search["phase"], search["status"], search["name"]) == ("web_search", "finished", "web_search")
    assert phases(raw)[-1] == ("answer", "finished", "")


async def test_model_without_search_gets_sources_only_from_directive(client: Client) -> None:
    coder = "qwen2.5-coder-32b-instruct"
    raw = await stream(client, body(with_directive("x", reply="ok"), model=coder, chat_type="search"))
    assert all(d.get("name") != "web_search" for d in deltas(raw))
    sources = [{"title": "a", "url": "https://a/"}]
    raw = await stream(client, body(with_directive("x", reply="ok", sources=sources), model=coder,
                                    chat_type="search"))
    assert deltas(raw)[0]["extra"]["web_search_info"] == sources


@pytest.mark.parametrize("after", [0, 1])
async def test_phase_stream_error_after_n_content_frames(client: Client, after: int) -> None:
    text = with_directive("hi", reply="abcd", chunks=2, stream_error="Too_Many_Requests", after=after)
    config = {**PHASE_CONFIG, "thinking_enabled": False}
    raw = await stream(client, body(text, feature_config=config, incremental_output=True))
    decoded = events(raw)
    assert decoded[-1]["error"]["code"] == "Too_Many_Requests" and "response_id" not in decoded[-1]
    assert [c for _, s, c in phases(raw) if s == "typing"] == ["ab", "cd"][:after]
    assert "[DONE]" not in raw


async def test_v1_stream_error_with_details_and_fail_times(client: Client) -> None:
    directive = {"reply": "ok", "stream_error": "RateLimited", "details": "wait", "num": 3, "fail_times": 1}
    raw = await stream(client, body(with_directive("hi", **directive)))
    assert events(raw)[-1] == {"error": {"code": "RateLimited", "details": "wait", "num": 3}}
    assert state_of(client).log[0].fault == "in_stream_error"
    raw = await stream(client, body(with_directive("hi", **directive)))
    assert deltas(raw)[-1]["content"] == "ok"


@pytest.mark.parametrize(("enabled", "expected"), [(True, "<think>hm</think>ok"), (False, "ok")])
async def test_phase_non_stream_keeps_thinking_inline_only_when_enabled(
    client: Client, enabled: bool, expected: str
) -> None:
    config = {**PHASE_CONFIG, "thinking_enabled": enabled}
    payload = body(with_directive("hi", think="hm", reply="ok"), feature_config=config, stream=False)
    async with client.post(CHAT, json=payload, headers=AUTH) as resp:
        assert (await resp.json())["choices"][0]["message"]["content"] == expected


@pytest.mark.parametrize("field", ["code", "actual_status"])
async def test_v2_error_fields_need_the_v2_error_fault(client: Client, field: str) -> None:
    payload = body(with_directive("hi", **{field: 429 if field == "actual_status" else "X"}))
    async with client.post(CHAT, json=payload, headers=AUTH) as resp:
        assert resp.status == 400
        assert "v2_error" in (await resp.json())["detail"]


async def test_stream_error_and_fault_together_are_refused(client: Client) -> None:
    payload = body(with_directive("hi", fault="reset_mid", stream_error="Bad_Request"))
    async with client.post(CHAT, json=payload, headers=AUTH) as resp:
        assert resp.status == 400
        assert "not both" in json.dumps(await resp.json())


async def test_v1_thinking_disabled_drops_inline_think(client: Client) -> None:
    """§2.3: thinking is inline only for thinking requests; an explicit false turns it off."""
    text = with_directive("hi", think="hidden", reply="ok")
    raw = await stream(client, body(text, feature_config={"thinking_enabled": False}))
    assert "hidden" not in raw and deltas(raw)[-1]["content"] == "ok"
    raw = await stream(client, body(text))
    assert deltas(raw)[-1]["content"] == "<think>hidden</think>ok"


async def test_v2_only_fields_are_accepted_and_ignored_on_v1(client: Client) -> None:
    text = with_directive("hi", reply="ok", keepalive_info=3, summary_mode="incremental", think_phase="think")
    raw = await stream(client, body(text))
    assert "response.info" not in raw and deltas(raw)[-1]["content"] == "ok"


@pytest.mark.parametrize("sources", [[{"title": "no url"}], "x", [1]])
async def test_bad_sources_are_refused(client: Client, sources: Any) -> None:
    async with client.post(CHAT, json=body(with_directive("hi", sources=sources)), headers=AUTH) as resp:
        assert resp.status == 400
        assert "sources" in (await resp.json())["detail"]


async def test_gateway_stall_before_on_models_notices_the_client_leaving(client: Client) -> None:
    state = state_of(client)
    state.arm({"fault": "stall_before"}, path="/api/models")
    request = asyncio.ensure_future(client.get("/api/models", headers=AUTH))
    async with asyncio.timeout(WAIT_S):
        await state.wait_for_request(1)
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    async with asyncio.timeout(WAIT_S):
        await state.peer_closed.wait()
    assert state.log[0].fault == "stall_before" and state.log[0].client_disconnected
