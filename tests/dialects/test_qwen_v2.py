"""qwen-v2 bodies, thinking gears and the body-size guard (issue 16, items 3, 4, 8; §7.3)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from relay.dialects import ChatOptions, UpstreamCall
from relay.dialects.qwen_v2 import QwenV2, feature_config
from relay.errors import InvalidRequest
from relay.jsonio import dumps
from relay.openai_wire import parse_chat_request

SAMPLING = {"temperature": 0.2, "top_p": 0.9, "max_tokens": 50, "seed": 1, "n": 1, "stop": ["x"], "user": "u",
            "response_format": {"type": "text"}, "presence_penalty": 0.1}


class Recorder:
    """The ``send_json`` a dialect gets: records each call and answers chat creation."""

    def __init__(self) -> None:
        self.calls: list[UpstreamCall] = []

    async def __call__(self, call: UpstreamCall) -> Any:
        self.calls.append(call)
        return {"success": True, "data": {"id": "7f3a2c1e-0000-4000-8000-000000000001"}}


async def prepare(options: ChatOptions, text: str = "hi", **fields: Any) -> tuple[UpstreamCall, Recorder]:
    request = parse_chat_request({"model": options.upstream_model,
                                  "messages": [{"role": "user", "content": text}], **fields})
    recorder = Recorder()
    return await QwenV2().prepare(request, options, recorder), recorder


async def test_bodies_are_the_2026_web_clients_and_carry_no_client_field() -> None:
    call, recorder = await prepare(ChatOptions("qwen3-max"), **SAMPLING)
    (new_chat,) = recorder.calls
    assert new_chat.kind == "new_chat" and new_chat.body == {
        "chatId": "", "models": ["qwen3-max"], "project_id": "", "timestamp": new_chat.body["timestamp"],
        "chat_type": "t2t", "chat_mode": "normal"}
    body = call.body
    assert body is not None
    chat_id = "7f3a2c1e-0000-4000-8000-000000000001"
    assert call.path == f"/api/v2/chat/completions?chat_id={chat_id}" and call.kind == "completion"
    assert {k: body[k] for k in ("stream", "version", "incremental_output", "chat_id", "chatId", "parentId",
                                 "parent_id", "chat_mode", "model")} == {
        "stream": True, "version": "2.1", "incremental_output": True, "chat_id": chat_id, "chatId": chat_id,
        "parentId": "", "parent_id": None, "chat_mode": "normal", "model": "qwen3-max"}
    assert not set(SAMPLING) & set(body)
    (message,) = body["messages"]
    assert message["id"] is None and message["parentId"] is None and message["role"] == "user"
    assert uuid.UUID(message["fid"]).version == 4 and uuid.UUID(message["childrenIds"][0]).version == 4
    assert message["model"] == "qwen3-max" and message["models"] == ["qwen3-max"]
    assert message["extra"] == {"meta": {"subChatType": "t2t"}} and message["files"] == []


@pytest.mark.parametrize(("thinking", "expected"), [
    (None, {"thinking_enabled": True, "auto_thinking": True, "thinking_mode": "Auto", "thinking_format": "summary"}),
    (True, {"thinking_enabled": True, "auto_thinking": False, "thinking_mode": "Thinking",
            "thinking_format": "summary"}),
    (False, {"thinking_enabled": False, "auto_thinking": False, "thinking_mode": "Fast"}),
])
def test_thinking_gears_follow_the_table(thinking: bool | None, expected: dict[str, Any]) -> None:
    config = feature_config(ChatOptions("m", thinking=thinking))
    assert {k: config.get(k) for k in expected} == expected
    assert ("thinking_format" in config) == (thinking is not False)
    assert "thinking_budget" not in config
    assert config["output_schema"] == "phase" and config["research_mode"] == "normal"


def test_a_budget_goes_up_only_when_the_client_gave_one() -> None:
    assert feature_config(ChatOptions("m", thinking=True, thinking_budget=1024))["thinking_budget"] == 1024


def test_a_model_that_cannot_skip_thinking_is_asked_in_auto_never_fast() -> None:
    config = feature_config(ChatOptions("qwen3.8-plus", thinking=False, can_skip_thinking=False))
    assert config["thinking_enabled"] is True and config["thinking_mode"] == "Auto"


async def test_an_oversized_body_is_refused_before_any_upstream_call() -> None:
    with pytest.raises(InvalidRequest) as caught:
        await prepare(ChatOptions("qwen3-max"), text="x" * 130_000)
    assert caught.value.instance_code == "context_length_exceeded" and caught.value.status == 400
    assert "120000" in caught.value.message


async def test_a_body_just_under_the_limit_is_sent_and_measured_exactly() -> None:
    call, _ = await prepare(ChatOptions("qwen3-max"), text="x" * 119_000)
    assert len(dumps(call.body)) <= 120_000


def test_stop_and_delete_name_the_chat() -> None:
    dialect = QwenV2()
    completion = UpstreamCall("/api/v2/chat/completions?chat_id=c1", None, chat_id="c1")
    stop = dialect.stop_call(completion, "r1")
    assert stop is not None and stop.path == "/api/v2/chat/completions/stop?chat_id=c1"
    assert stop.body == {"chat_id": "c1", "response_id": "r1"} and stop.kind == "stop"
    delete = dialect.delete_call(completion)
    assert delete is not None and (delete.method, delete.path, delete.kind) == ("DELETE", "/api/v2/chats/c1", "delete")
