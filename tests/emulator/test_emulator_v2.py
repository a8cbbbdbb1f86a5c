"""The emulator speaks qwen-v2: chats, response.created, summaries, usage, errors, stop (issue 4, §4).

Raw aiohttp clients against the real (strict) app, sending the 2026 request the
web app sends (``support.v2_headers``, ``support.completion_body``); tests
synchronise on the emulator's events (first chunk sent, stop called), never on sleeps.
The strict checks themselves are in ``test_emulator_strict.py``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import aiohttp
import pytest
from pytest_aiohttp import AiohttpClient

from relay.emulator import DirectiveError, make_emulator_app, parse_directive
from relay.emulator.framing import Abort, Frame, Write, plan_events
from tests.emulator.support import (
    AUTH,
    SSE_TYPE,
    V2_CHAT,
    V2_NEW,
    V2_STOP,
    WAIT_S,
    Client,
    chat_headers,
    completion_body,
    completion_url,
    data_payloads,
    deltas,
    events,
    new_chat_body,
    new_chat_headers,
    phases,
    state_of,
    v2_headers,
    with_directive,
)

MODEL = "qwen3-235b-a22b"
OFF = {"thinking_enabled": False, "output_schema": "phase", "thinking_format": "summary"}
ON = {**OFF, "thinking_enabled": True}


@pytest.fixture
async def client(aiohttp_client: AiohttpClient) -> Client:
    return await aiohttp_client(make_emulator_app())


async def new_chat(client: Client, model: str = MODEL) -> str:
    payload = new_chat_body(model, title="New Chat", timestamp=1761484022218)
    async with client.post(V2_NEW, json=payload, headers=new_chat_headers()) as resp:
        assert resp.status == 200
        answer = await resp.json()
    assert answer["success"] is True and isinstance(answer["request_id"], str)
    chat_id: str = answer["data"]["id"]
    return chat_id


def v2_body(chat_id: str, text: str = "hi", *, feature_config: dict[str, Any] | None = None,
            **extra: Any) -> dict[str, Any]:
    body = completion_body(chat_id, text, model=MODEL,
                           feature_config=dict(OFF) if feature_config is None else feature_config, **extra)
    body["messages"][0]["fid"] = "fid-1"
    return body


async def v2_stream(client: Client, chat_id: str, text: str = "hi", **kw: Any) -> str:
    async with client.post(completion_url(chat_id), json=v2_body(chat_id, text, **kw),
                           headers=chat_headers(chat_id)) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"] == SSE_TYPE
        return await resp.text()


async def v2_json(resp: aiohttp.ClientResponse) -> tuple[str, dict[str, Any]]:
    assert resp.status == 200
    return resp.headers["x-actual-status-code"], await resp.json()


async def test_chats_new_records_the_chat(client: Client) -> None:
    chat_id = await new_chat(client)
    chat = state_of(client).chats[chat_id]
    assert (chat.model, chat.title, chat.chat_type, chat.chat_mode) == (MODEL, "New Chat", "t2t", "normal")
    assert chat.client_timestamp_ms == 1761484022218 and chat.created_at > 0 and chat.completions == 0
    async with client.get("/_emulator/chats") as resp:
        assert (await resp.json())["chats"][0]["id"] == chat_id


@pytest.mark.parametrize(("payload", "actual", "code"), [
    ({"models": []}, "422", "RequestValidationError"), ({"models": ["no-such"]}, "404", "Not_Found")])
async def test_chats_new_refuses_bad_models(client: Client, payload: dict[str, Any], actual: str,
                                           code: str) -> None:
    async with client.post(V2_NEW, json=new_chat_body() | payload, headers=new_chat_headers()) as resp:
        status, answer = await v2_json(resp)
    assert status == actual and answer["success"] is False and answer["data"]["code"] == code


async def test_stream_starts_with_response_created_and_ends_without_done(client: Client) -> None:
    chat_id = await new_chat(client)
    raw = await v2_stream(client, chat_id, with_directive("hi", reply="Hello", chunks=2), stream=False)
    first_line = raw.split("\n", 1)[0]
    assert first_line.startswith('data: {"response.created":') and first_line.endswith("}} ")
    created, *rest = events(raw)
    info = created["response.created"]
    assert (info["chat_id"], info["parent_id"], info["response_index"]) == (chat_id, "fid-1", "0")
    rid = info["response_id"]
    assert all(event["response_id"] == rid for event in rest)
    assert phases(raw) == [("answer", "typing", "Hel"), ("answer", "typing", "lo"), ("answer", "finished", "")]
    assert deltas(raw)[-1] == {"content": "", "role": "assistant", "status": "finished", "phase": "answer"}
    assert "[DONE]" not in raw and raw.endswith("\n\n")
    chat, record = state_of(client).chats[chat_id], state_of(client).log[-1]
    assert chat.completions == 1 and chat.responses == [rid]
    assert (record.dialect, record.chat_id, record.response_id, record.stream) == ("v2", chat_id, rid, False)
    assert record.feature_config == OFF and record.chat_type == "t2t"


async def test_done_directive_adds_done(client: Client) -> None:
    raw = await v2_stream(client, await new_chat(client), with_directive("hi", reply="x", done=True))
    assert data_payloads(raw)[-1] == "[DONE]"


async def test_usage_runs_on_typing_frames(client: Client) -> None:
    text = with_directive("x" * 40, think="let me think", reply="a long enough answer", chunks=3)
    raw = await v2_stream(client, await new_chat(client), text, feature_config=ON)
    usages = [e["usage"] for e in events(raw) if isinstance(e, dict) and "usage" in e]
    typing = [d for d in deltas(raw) if d.get("status") == "typing"]
    assert len(usages) == len(typing) == 6
    assert {u["input_tokens"] for u in usages} == {len(text) // 4 + 1}
    outputs = [u["output_tokens"] for u in usages]
    assert outputs == sorted(set(outputs))  # strictly growing
    last = usages[-1]
    assert last["total_tokens"] == last["input_tokens"] + last["output_tokens"]
    details = last["output_tokens_details"]
    assert details["reasoning_tokens"] + details["text_tokens"] == last["output_tokens"]
    assert usages[2]["output_tokens_details"]["text_tokens"] == 0 < usages[2]["output_tokens_details"][
        "reasoning_tokens"]
    no_usage = await v2_stream(client, await new_chat(client), with_directive("hi", usage=False))
    assert '"usage"' not in no_usage


async def test_thinking_summary_is_cumulative_paragraphs_and_finished_think_is_not_last(client: Client) -> None:
    thought = "First para.\n\nSecond para here."
    text = with_directive("hi", think=thought, pieces=["ok"], chunks=4)
    raw = await v2_stream(client, await new_chat(client), text, feature_config=ON)
    summary = [d for d in deltas(raw) if d.get("phase") == "thinking_summary"]
    typing, finished = summary[:-1], summary[-1]
    assert all(d["content"] == "" and d["status"] == "typing" for d in typing)
    lists = [d["extra"]["summary_thought"]["content"] for d in typing]
    assert "\n\n".join(lists[-1]) == thought and lists[-1] == ["First para.", "Second para here."]
    joined = ["\n\n".join(items) for items in lists]
    assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(joined))
    assert typing[-1]["extra"]["summary_title"]["content"] == ["Thought 1", "Thought 2"]
    assert finished == {"content": "", "role": "assistant", "status": "finished", "phase": "thinking_summary"}
    assert phases(raw)[-2:] == [("answer", "typing", "ok"), ("answer", "finished", "")]


async def test_summary_mode_incremental_sends_only_new_text(client: Client) -> None:
    thought = "abc\n\ndefgh"
    text = with_directive("hi", think=thought, summary_mode="incremental", chunks=3)
    raw = await v2_stream(client, await new_chat(client), text, feature_config=ON)
    items = [d["extra"]["summary_thought"]["content"] for d in deltas(raw) if "extra" in d]
    assert all(len(item) == 1 for item in items) and "".join(i[0] for i in items) == thought


@pytest.mark.parametrize(("config", "directive"), [
    ({**ON, "thinking_format": "detail"}, {}),
    (ON, {"think_phase": "think"}),
    ({**OFF, "thinking_mode": "Thinking"}, {"think_phase": "think"}),
], ids=["detail", "directive", "thinking-mode"])
async def test_think_phase_carries_text_in_content(client: Client, config: dict[str, Any],
                                                   directive: dict[str, Any]) -> None:
    text = with_directive("hi", think="abcd", reply="okay", chunks=2, **directive)
    raw = await v2_stream(client, await new_chat(client), text, feature_config=config)
    assert phases(raw) == [("think", "typing", "ab"), ("think", "typing", "cd"), ("think", "finished", ""),
                           ("answer", "typing", "ok"), ("answer", "typing", "ay"), ("answer", "finished", "")]


async def test_no_thinking_unless_enabled(client: Client) -> None:
    raw = await v2_stream(client, await new_chat(client), with_directive("hi", think="hidden", reply="ok"))
    assert "hidden" not in raw and {p for p, _, _ in phases(raw)} == {"answer"}


async def test_keepalive_info_frames_are_interleaved(client: Client) -> None:
    chat_id = await new_chat(client)
    raw = await v2_stream(client, chat_id, with_directive("hi", reply="abcd", chunks=4, keepalive_info=2))
    kinds = ["info" if "response.info" in e else "chunk" if "choices" in e else "created" for e in events(raw)]
    assert kinds == ["created", "info", "chunk", "chunk", "info", "chunk", "chunk", "chunk"]
    info = next(e["response.info"] for e in events(raw) if "response.info" in e)
    assert info["action"] == "keep_alive" and info["chat_id"] == chat_id and "timestamp" in info


@pytest.mark.parametrize("code", ["Too_Many_Requests", "RateLimited", "ContextLengthExceeded", "Unauthorized",
                                  "Bad_Request"])
@pytest.mark.parametrize("after", [0, 2])
async def test_in_stream_error_after_n_content_frames(client: Client, code: str, after: int) -> None:
    raw = await v2_stream(client, await new_chat(client),
                          with_directive("hi", reply="abcd", chunks=4, stream_error=code, after=after))
    created, *_, error = events(raw)
    assert "response.created" in created
    assert [d["content"] for d in deltas(raw)] == ["a", "b"][:after]
    assert error["error"]["code"] == code and isinstance(error["error"]["details"], str)
    assert error["response_id"] == created["response.created"]["response_id"]


async def test_v2_error_fault_is_200_with_actual_status(client: Client) -> None:
    chat_id = await new_chat(client)
    text = with_directive("hi", fault="v2_error", code="RateLimited", actual_status=429, num=2, fail_times=1)
    async with client.post(completion_url(chat_id), json=v2_body(chat_id, text), headers=chat_headers(chat_id)) as resp:
        status, answer = await v2_json(resp)
    assert status == "429" and answer["success"] is False
    assert answer["data"]["code"] == "RateLimited" and answer["data"]["num"] == 2
    assert "response.created" in await v2_stream(client, chat_id, text)


async def test_unknown_chat_is_chat_not_found(client: Client) -> None:
    async with client.post(completion_url("nope"), json=v2_body("nope"), headers=chat_headers("nope")) as resp:
        status, answer = await v2_json(resp)
    assert status == "404"
    assert answer == {"success": False, "request_id": answer["request_id"],
                      "data": {"code": "CHAT_NOT_FOUND", "details": "chat not found"}}


async def test_two_messages_are_a_validation_error(client: Client) -> None:
    chat_id = await new_chat(client)
    payload = v2_body(chat_id)
    payload["messages"].append({"role": "user", "content": "again"})
    async with client.post(completion_url(chat_id), json=payload, headers=chat_headers(chat_id)) as resp:
        status, answer = await v2_json(resp)
    assert status == "422" and answer["data"]["code"] == "RequestValidationError"
    assert "messages" in answer["data"]["details"]


@pytest.mark.parametrize(("method", "path", "page", "completions"), [
    ("POST", V2_NEW, "/c/new-chat", False), ("POST", f"{V2_CHAT}?chat_id=x", "/c/x", True),
    ("POST", f"{V2_STOP}?chat_id=x", "/c/x", False), ("DELETE", "/api/v2/chats/x", "/c/x", False)])
async def test_expired_token_cookie_on_v2_writes_is_200_with_401(client: Client, method: str, path: str,
                                                               page: str, completions: bool) -> None:
    """Rule 6: a well-formed request whose cookie token is expired gets the refresh cue (§7.1)."""
    headers = v2_headers(page, completions=completions, token="expired-token")
    async with client.request(method, path, json={}, headers=headers) as resp:
        status, answer = await v2_json(resp)
    assert status == "401" and answer["success"] is False and answer["data"]["code"] == "Unauthorized"
    assert state_of(client).log[-1].rejected == "bad_token"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer expired-token"}], ids=["none", "expired"])
async def test_bad_token_on_v2_models_is_200_with_401(client: Client, headers: dict[str, str]) -> None:
    async with client.get("/api/v2/models/", headers=headers) as resp:
        status, answer = await v2_json(resp)
    assert status == "401" and answer["success"] is False and answer["data"]["code"] == "Unauthorized"


async def test_last_directive_line_wins_in_a_folded_message(client: Client) -> None:
    """The relay folds history into one user message; an earlier turn's directive must not win."""
    folded = (f"System: be brief\n\nUser: {with_directive('first', reply='old')}\n\nAssistant: old\n\n"
              f"User: {with_directive('second', reply='new')}")
    raw = await v2_stream(client, await new_chat(client), folded)
    assert "".join(d["content"] for d in deltas(raw)) == "new"
    assert state_of(client).log[-1].user_message == folded


async def test_search_frame_precedes_the_answer(client: Client) -> None:
    sources = [{"title": "A", "url": "https://a.example/"}]
    payload_text = with_directive("news", reply="ok", sources=sources)
    chat_id = await new_chat(client)
    body = v2_body(chat_id, payload_text)
    body["messages"][0]["chat_type"] = "search"
    async with client.post(completion_url(chat_id), json=body, headers=chat_headers(chat_id)) as resp:
        raw = await resp.text()
    search = deltas(raw)[0]
    assert (search["name"], search["phase"], search["extra"]["web_search_info"]) == (
        "web_search", "web_search", sources)
    assert state_of(client).log[-1].chat_type == "search"


async def test_waf_and_plain_429_on_completions(client: Client) -> None:
    chat_id = await new_chat(client)
    for directive, status in (({"fault": "waf"}, 200), ({"fault": "http_429", "retry_after": 3}, 429)):
        body = v2_body(chat_id, with_directive("hi", **directive))
        async with client.post(completion_url(chat_id), json=body, headers=chat_headers(chat_id)) as resp:
            assert resp.status == status
            if status == 200:
                assert resp.content_type == "text/html"
                page = await resp.text()
                assert page.startswith("<!doctypehtml>") and "aliyun_waf_aa" in page
            else:
                assert resp.headers["Retry-After"] == "3"


async def test_armed_waf_hits_models_and_chats_new_then_clears(client: Client) -> None:
    state = state_of(client)
    state.arm({"fault": "waf"}, path="/api/v2/", times=2)
    async with client.post("/_emulator/arm", json={"directive": {"fault": "waf"}, "path": "/api/models"}) as resp:
        assert resp.status == 200
    for method, path in (("GET", "/api/v2/models/"), ("POST", V2_NEW), ("GET", "/api/models")):
        async with client.request(method, path, json={"models": [MODEL]}, headers=AUTH) as resp:
            assert resp.status == 200 and resp.content_type == "text/html"
            assert "aliyun_waf_aa" in await resp.text()
    assert state.armed == [] and [r.fault for r in state.log] == ["waf"] * 3
    await new_chat(client)  # cleared: answers normally again
    async with client.post("/_emulator/arm", json={"directive": {"fault": "reset_mid"}}) as resp:
        assert resp.status == 400


async def test_v2_models_wrap_the_v1_entries_with_capabilities(client: Client) -> None:
    async with client.get("/api/models", headers=AUTH) as resp:
        v1 = await resp.json()
    async with client.get("/api/v2/models/", headers=AUTH) as resp:
        v2 = await resp.json()
    assert v2["success"] is True and isinstance(v2["request_id"], str) and v2["data"]["data"] == v1["data"]
    meta = {m["id"]: m["info"]["meta"] for m in v1["data"]}
    assert {"qwen3-235b-a22b", "qwen3-coder-plus", "qwen3-max"} <= set(meta)
    assert meta["qwen-turbo-latest"]["abilities"]["thinking"] == 0
    coder = meta["qwen2.5-coder-32b-instruct"]
    assert "search" not in coder["chat_type"] and coder["abilities"]["thinking"] == 0
    assert meta["qwen3-max"]["abilities"]["thinking"] in (1, 2, 3) and "search" in meta["qwen3-max"]["chat_type"]


@pytest.mark.parametrize("where", ["body", "query"])
async def test_stop_ends_the_live_stream_and_is_recorded(client: Client, where: str) -> None:
    state = state_of(client)
    chat_id = await new_chat(client)
    text = with_directive("hi", reply="abcd", chunks=2, fault="stall_mid", after=1)
    resp = await client.post(completion_url(chat_id), json=v2_body(chat_id, text), headers=chat_headers(chat_id))
    created = await resp.content.readline()
    rid = state.log[-1].response_id
    assert rid is not None and rid.encode() in created
    async with asyncio.timeout(WAIT_S):
        await state.first_chunk_sent.wait()
    ids = {"chat_id": chat_id, "response_id": rid}
    kwargs: dict[str, Any] = {"json": ids} if where == "body" else {"params": ids}
    async with client.post(V2_STOP, headers=chat_headers(chat_id, completions=False), **kwargs) as stop:
        assert stop.status == 200 and (await stop.json())["success"] is True
    async with asyncio.timeout(WAIT_S):
        rest = await resp.read()  # the stream ends: no stall forever
        await state.wait_for_idle()
    assert b'"finished"' not in rest
    assert state.stop_called.is_set() and state.stop_calls == [(chat_id, rid)]
    assert state.streams_stopped == 1 and state.log[1].stopped and not state.log[1].client_disconnected


async def test_stop_for_a_finished_response_is_still_recorded(client: Client) -> None:
    state = state_of(client)
    async with client.post(V2_STOP, json={"chatId": "c", "responseId": "r"},
                           headers=chat_headers("c", completions=False)) as resp:
        assert (await resp.json())["success"] is True
    assert state.stop_calls == [("c", "r")] and state.streams_stopped == 0
    async with client.post(V2_STOP, json={}, headers=chat_headers("c", completions=False)) as resp:
        status, _ = await v2_json(resp)
    assert status == "400" and len(state.stop_calls) == 1


async def test_reset_and_stall_faults_apply_to_v2(client: Client) -> None:
    chat_id = await new_chat(client)
    raw = await v2_stream(client, chat_id,
                          with_directive("hi", reply="abcd", chunks=2, fault="stall_mid", stall_ms=20))
    assert phases(raw)[-1] == ("answer", "finished", "")
    body = v2_body(chat_id, with_directive("hi", reply="abcd", chunks=2, fault="reset_mid", after=1))
    lines: list[bytes] = []
    async with client.post(completion_url(chat_id), json=body, headers=chat_headers(chat_id)) as resp:
        with pytest.raises(aiohttp.ClientPayloadError):
            async for line in resp.content:
                lines.append(line)
    assert any(b'"content":"ab"' in line for line in lines)
    assert state_of(client).streams_reset == 1


async def test_byte_split_v2_stream_reassembles(client: Client) -> None:
    chat_id = await new_chat(client)
    body = v2_body(chat_id, with_directive("hi", reply="héllo 你好", chunks=3, split="byte", usage=False))
    async with client.post(completion_url(chat_id), json=body, headers=chat_headers(chat_id)) as resp:
        reads = [chunk async for chunk in resp.content.iter_any()]
    raw = b"".join(reads).decode()
    assert len(reads) > 1 and "".join(d["content"] for d in deltas(raw)) == "héllo 你好"


async def test_framing_noise_and_oversized_line_apply_to_v2(client: Client) -> None:
    chat_id = await new_chat(client)
    noisy = {"reply": "abcd", "chunks": 2, "garbage": True, "keepalive": True, "line_ending": "\r\n",
             "trailing_space": True}
    raw = await v2_stream(client, chat_id, with_directive("hi", **noisy))
    assert ": keep-alive\r\n" in raw and "this is not json" in raw
    good = [p for p in data_payloads(raw) if p.startswith("{") and '"choices":[]' not in p]
    assert [json.loads(p)["choices"][0]["delta"]["content"] for p in good[1:]] == ["ab", "cd", ""]
    big = await v2_stream(client, chat_id, with_directive("hi", reply="ab", fault="oversized_line",
                                                          size=100_000))
    lines = big.split("\n")
    assert max(len(line) for line in lines) == 100_000
    assert phases(big)[-1] == ("answer", "finished", "")


async def test_log_and_state_carry_the_v2_fields(client: Client) -> None:
    chat_id = await new_chat(client)
    await v2_stream(client, chat_id, "plain question")
    async with client.get("/_emulator/log") as resp:
        new, completion = await resp.json()
    assert new["dialect"] == "v2" and new["chat_id"] == chat_id and new["model"] == MODEL
    assert completion["user_message"] == "plain question" and completion["feature_config"] == OFF
    assert completion["response_id"] and completion["stopped"] is False
    async with client.post("/_emulator/reset") as resp:
        assert resp.status == 200
    assert state_of(client).chats == {} and state_of(client).stop_calls == []


async def test_arm_validates_and_times_none_lasts_until_reset(client: Client) -> None:
    state = state_of(client)
    with pytest.raises(DirectiveError):
        state.arm({"fault": "stall_mid"})
    with pytest.raises(DirectiveError):
        state.arm({"reply": "x"})
    state.arm({"fault": "v2_error", "code": "RateLimited", "num": 1}, path="/api/v2/models", times=None)
    for _ in range(2):
        async with client.get("/api/v2/models/", headers=AUTH) as resp:
            status, answer = await v2_json(resp)
        assert status == "429" and answer["data"] == {
            "code": "RateLimited", "details": answer["data"]["details"], "num": 1}
    state.reset()
    async with client.get("/api/v2/models/", headers=AUTH) as resp:
        assert (await resp.json())["success"] is True


def test_planner_puts_the_fault_before_the_next_content_frame() -> None:
    """after: N counts content frames only; non-content frames before it are still sent."""
    frames = [Frame("created"), Frame("t1", True), Frame("t-finished"), Frame("a1", True), Frame("a-fin")]
    directive = parse_directive(['#emulator {"stream_error": "RateLimited", "after": 1}'])
    assert directive is not None
    steps = plan_events(frames, directive, fault="in_stream_error", delay_s=0, error={"error": {}},
                        padded=lambda sent: {})
    written = [step.data for step in steps if isinstance(step, Write)]
    assert written == [b"data: created\n\n", b"data: t1\n\n", b"data: t-finished\n\n",
                       b'data: {"error":{}}\n\n']
    late = parse_directive(['#emulator {"fault": "reset_mid", "after": 9}'])
    assert late is not None
    steps = plan_events(frames, late, fault="reset_mid", delay_s=0, error={}, padded=lambda sent: {})
    assert isinstance(steps[-1], Abort) and len(steps) == 5  # before the finished-answer frame
