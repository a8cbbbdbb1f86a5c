"""The emulator reproduces the 2026 stream and chat facts (docs/qwen-protocol.md §7.3-§7.5).

Two candidates in one stream, phases that must not leak, four shapes of in-stream
error, risk control as a fault, chat deletion, thinking gears and models that cannot
skip thinking; and ``--lenient`` for the pre-2026 behaviour.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from pytest_aiohttp import AiohttpClient

from relay.emulator import DirectiveError, EmulatorConfig, make_emulator_app, parse_directive
from relay.emulator.__main__ import build_config
from tests.emulator.support import (
    AUTH,
    FAST,
    SSE_TYPE,
    V2_CHAT,
    V2_NEW,
    Client,
    chat_headers,
    completion_body,
    completion_url,
    create_chat,
    data_payloads,
    deltas,
    events,
    new_chat_body,
    new_chat_headers,
    state_of,
    v2_headers,
    with_directive,
)

AUTO = {"thinking_enabled": True, "auto_thinking": True, "thinking_mode": "Auto", "thinking_format": "summary",
        "output_schema": "phase"}
THINKING = {**AUTO, "auto_thinking": False, "thinking_mode": "Thinking"}
CANNOT_SKIP = "qwen3.8-plus"


@pytest.fixture
async def client(aiohttp_client: AiohttpClient) -> Client:
    return await aiohttp_client(make_emulator_app())


async def stream(client: Client, text: str, *, model: str = "qwen3-235b-a22b",
                 feature_config: dict[str, Any] | None = None) -> str:
    chat_id = await create_chat(client, model)
    body = completion_body(chat_id, text, model=model, feature_config=feature_config)
    async with client.post(completion_url(chat_id), json=body, headers=chat_headers(chat_id)) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"] == SSE_TYPE
        return await resp.text()


def answer_of(raw: str, response_id: str | None = None) -> str:
    return "".join(
        e["choices"][0]["delta"]["content"] for e in events(raw)
        if isinstance(e, dict) and e.get("choices") and e["choices"][0]["delta"].get("phase") == "answer"
        and (response_id is None or e["response_id"] == response_id))


async def test_two_candidates_open_then_interleave_and_the_second_differs(client: Client) -> None:
    raw = await stream(client, with_directive("hi", reply="abcd", chunks=2, candidates=2))
    first, second, *rest = events(raw)
    r1, r2 = first["response.created"], second["response.created"]
    assert (r1["response_index"], r2["response_index"]) == ("0", "1") and r1["response_id"] != r2["response_id"]
    owners = [e["response_id"] for e in rest]
    assert owners == [r1["response_id"], r2["response_id"]] * 3  # 2 pieces + finished, alternating
    assert answer_of(raw, r1["response_id"]) == "abcd" and answer_of(raw, r2["response_id"]) == "ALT abALT cd"
    finished = [e["response_id"] for e in rest if e["choices"][0]["delta"]["status"] == "finished"]
    assert finished == [r1["response_id"], r2["response_id"]]
    chat = next(iter(state_of(client).chats.values()))
    assert chat.responses == [r1["response_id"], r2["response_id"]]


async def test_extra_phases_send_leak_text_outside_the_answer(client: Client) -> None:
    phases = ["code_interpreter", "mystery", "web_search"]
    raw = await stream(client, with_directive("hi", reply="ok", extra_phases=phases))
    shown = [(d["phase"], d["status"], d["content"]) for d in deltas(raw)]
    assert shown[:7] == [("code_interpreter", "running", "LEAK:code_interpreter"),
                         ("code_interpreter", "finished", ""), ("mystery", "typing", "LEAK:mystery"),
                         ("mystery", "finished", ""), ("web_search", "typing", "LEAK:web_search"),
                         ("web_search", "typing", ""), ("web_search", "finished", "")]
    tool = deltas(raw)[5]
    assert tool["function_call"]["name"] == "web_search" and tool["extra"] == {"display_position": "think"}
    assert answer_of(raw) == "ok" and shown[-1] == ("answer", "finished", "")


@pytest.mark.parametrize(("form", "expected"), [
    ("error", lambda rid: {"error": {"code": "RateLimited", "details": "x", "num": 3}, "response_id": rid}),
    ("success_false", lambda rid: {"success": False, "data": {"code": "RateLimited", "details": "x", "num": 3}}),
    ("string", lambda rid: {"error": "Internal error!"}),
])
async def test_stream_error_forms_in_the_stream(client: Client, form: str, expected: Any) -> None:
    text = with_directive("hi", reply="abcd", chunks=2, after=1, stream_error="RateLimited", num=3, details="x",
                          stream_error_form=form)
    raw = await stream(client, text)
    created, piece, error = events(raw)
    assert piece["choices"][0]["delta"]["content"] == "ab"
    error.pop("request_id", None)
    assert error == expected(created["response.created"]["response_id"])


async def test_bare_json_error_is_the_whole_sse_typed_body(client: Client) -> None:
    raw = await stream(client, with_directive("hi", stream_error="RateLimited", num=2,
                                              stream_error_form="bare_json"))
    assert not raw.startswith("data:") and data_payloads(raw) == []
    answer = json.loads(raw)
    assert answer["success"] is False and isinstance(answer["request_id"], str)
    assert answer["data"]["code"] == "RateLimited" and answer["data"]["num"] == 2
    assert state_of(client).log[-1].fault == "in_stream_error"


def test_stream_error_form_needs_stream_error_and_new_fields_are_checked() -> None:
    for bad in ({"stream_error_form": "string"}, {"candidates": 3}, {"extra_phases": ["answer"]},
                {"extra_phases": []}, {"stream_error": "x", "stream_error_form": "html"}):
        with pytest.raises(DirectiveError):
            parse_directive([f"#emulator {json.dumps(bad)}"])


async def test_risk_control_fault_in_a_directive_and_armed(client: Client) -> None:
    chat_id = await create_chat(client)
    body = completion_body(chat_id, with_directive("hi", fault="risk_control"))
    async with client.post(completion_url(chat_id), json=body, headers=chat_headers(chat_id)) as resp:
        assert resp.status == 200 and resp.content_type == "application/json"
        assert (await resp.json())["ret"][0] == "FAIL_SYS_USER_VALIDATE"
    state_of(client).arm({"fault": "risk_control"}, path=V2_NEW)
    async with client.post(V2_NEW, json=new_chat_body(), headers=new_chat_headers()) as resp:
        assert "punish" in (await resp.json())["data"]["url"]
    assert [r.fault for r in state_of(client).log[-2:]] == ["risk_control"] * 2
    assert len(state_of(client).chats) == 1


async def test_delete_removes_the_chat_and_is_recorded(client: Client) -> None:
    state = state_of(client)
    chat_id = await create_chat(client)
    delete = f"/api/v2/chats/{chat_id}"
    async with client.delete(delete, headers=v2_headers(f"/c/{chat_id}")) as resp:
        answer = await resp.json()
    assert answer == {"success": True, "request_id": answer["request_id"], "data": {"status": True}}
    assert state.chats == {} and state.deleted_chats == [chat_id]
    async with client.post(completion_url(chat_id), json=completion_body(chat_id),
                           headers=chat_headers(chat_id)) as resp:
        assert resp.headers["x-actual-status-code"] == "404"
        assert (await resp.json())["data"]["code"] == "CHAT_NOT_FOUND"
    async with client.delete(delete, headers=v2_headers(f"/c/{chat_id}")) as resp:
        assert resp.headers["x-actual-status-code"] == "404"
        assert (await resp.json())["data"]["code"] == "CHAT_NOT_FOUND"
    async with client.get("/_emulator/log") as resp:
        log = await resp.json()
    assert [(r["method"], r["chat_id"], r["chat_deleted"]) for r in log if r["method"] == "DELETE"] == [
        ("DELETE", chat_id, True), ("DELETE", chat_id, False)]
    async with client.get("/_emulator/chats") as resp:
        assert (await resp.json())["deleted_chats"] == [chat_id]


async def test_catalogue_marks_which_models_can_skip_thinking(client: Client) -> None:
    async with client.get("/api/v2/models/", headers=AUTH) as resp:
        entries = {m["id"]: m for m in (await resp.json())["data"]["data"]}
    plus = entries[CANNOT_SKIP]
    assert plus["name"] == "Qwen3.8-Plus" and plus["info"]["meta"]["think_skip"] == {"enable": False}
    assert plus["info"]["meta"]["abilities"]["thinking"] > 0 and "search" in plus["info"]["meta"]["chat_type"]
    assert entries["qwen3-max"]["info"]["meta"]["think_skip"] == {"enable": True}
    assert "think_skip" not in entries["qwen-turbo-latest"]["info"]["meta"]


async def test_thinking_off_on_a_model_that_cannot_skip_it_is_invalid_input(client: Client) -> None:
    raw = await stream(client, "hi", model=CANNOT_SKIP, feature_config=FAST)
    created, error = events(raw)
    assert error == {"error": {"code": "invalid_input", "details": "thinking cannot be disabled for this model"},
                     "response_id": created["response.created"]["response_id"]}
    assert state_of(client).log[-1].rejected == "think_skip"


@pytest.mark.parametrize(("model", "config", "directive", "thinks"), [
    ("qwen3-235b-a22b", THINKING, {}, True),
    ("qwen3-235b-a22b", AUTO, {}, False),
    ("qwen3-235b-a22b", AUTO, {"think": "deep"}, True),
    ("qwen3-235b-a22b", FAST, {"think": "deep"}, False),
    ("qwen3-235b-a22b", {"thinking_enabled": True, "thinking_format": "summary"}, {}, True),
    (CANNOT_SKIP, AUTO, {}, True),
    (CANNOT_SKIP, THINKING, {}, True),
], ids=["thinking", "auto", "auto-directive", "fast", "enabled-only", "plus-auto", "plus-thinking"])
async def test_thinking_gears(client: Client, model: str, config: dict[str, Any], directive: dict[str, Any],
                              thinks: bool) -> None:
    raw = await stream(client, with_directive("hi", reply="ok", **directive), model=model, feature_config=config)
    phases = {d["phase"] for d in deltas(raw)}
    assert ("thinking_summary" in phases) is thinks and answer_of(raw) == "ok"


@pytest.mark.parametrize("how", ["parameter", "config"])
async def test_lenient_accepts_pre_2026_requests(aiohttp_client: AiohttpClient, how: str) -> None:
    """``--lenient``: Bearer only, no browser headers, the 2025 body; v2 works as before."""
    app = make_emulator_app(strict=False) if how == "parameter" else make_emulator_app(EmulatorConfig(strict=False))
    client = await aiohttp_client(app)
    async with client.post(V2_NEW, json={"models": ["qwen3-235b-a22b"]}, headers=AUTH) as resp:
        chat_id = (await resp.json())["data"]["id"]
    message = {"role": "user", "content": with_directive("hi", reply="ok"), "childrenIds": []}
    body = {"model": "qwen3-235b-a22b", "chat_id": chat_id, "temperature": 0.2, "messages": [message]}
    async with client.post(f"{V2_CHAT}?chat_id={chat_id}", json=body, headers=AUTH) as resp:
        assert answer_of(await resp.text()) == "ok"
    async with client.delete(f"/api/v2/chats/{chat_id}", headers=AUTH) as resp:
        assert (await resp.json())["success"] is True
    assert [r.rejected for r in state_of(client).log] == [None] * 3


def test_strict_is_the_default_and_lenient_is_a_flag() -> None:
    assert EmulatorConfig().strict is True and build_config([]).strict is True
    assert build_config(["--lenient"]).strict is False


async def test_a_strict_emulator_refuses_the_pre_2026_request(client: Client) -> None:
    """The counterpart of the lenient test: the same Bearer-only request is risk control."""
    async with client.post(V2_NEW, json={"models": ["qwen3-235b-a22b"]}, headers=AUTH) as resp:
        assert resp.status == 200 and (await resp.json())["ret"][0] == "FAIL_SYS_USER_VALIDATE"
    assert state_of(client).log[-1].rejected == "no_token_cookie"


async def test_stop_by_the_second_candidates_id_ends_the_stream(client: Client) -> None:
    chat_id = await create_chat(client)
    body = completion_body(chat_id, with_directive("hi", reply="abcd", chunks=2, candidates=2, fault="stall_mid",
                                                   after=1))
    state = state_of(client)
    async with client.post(completion_url(chat_id), json=body, headers=chat_headers(chat_id)) as resp:
        await resp.content.readline()
        await resp.content.readline()
        second = json.loads((await resp.content.readline()).decode()[6:])["response.created"]["response_id"]
        stop = {"chat_id": chat_id, "response_id": second}
        async with client.post(f"/api/v2/chat/completions/stop?chat_id={chat_id}", json=stop,
                               headers=chat_headers(chat_id, completions=False)) as answer:
            assert (await answer.json())["success"] is True
        await resp.read()
    assert state.streams_stopped == 1 and state.live_responses == {}


async def test_bare_json_on_v1_sends_the_success_false_event(client: Client) -> None:
    """A bare-JSON body is a v2 capture: on the v1 path ``bare_json`` sends the success_false event."""
    text = with_directive("hi", reply="ab", stream_error="RateLimited", stream_error_form="bare_json")
    payload = {"model": "qwen-max-latest", "messages": [{"role": "user", "content": text}], "stream": True}
    async with client.post("/api/chat/completions", json=payload, headers=AUTH) as resp:
        raw = await resp.text()
    assert any(isinstance(e, dict) and e.get("success") is False for e in events(raw))
