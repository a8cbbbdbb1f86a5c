"""Dialect qwen-v1 (relay/dialects/qwen_v1.py, QWEN_PROTOCOL §2): the request
body we forward, cumulative stream payloads → incremental frames, in-stream
errors, the non-stream answer and the model list.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from relay.dialects import ChatOptions, get_dialect
from relay.dialects.qwen_v1 import QwenV1
from relay.errors import (
    AuthenticationFailed,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamRateLimited,
)
from relay.openai_wire import ChatRequest, parse_chat_request
from relay.pipeline import Frame, StreamStats

V1 = QwenV1()


async def _no_post(path: str, body: dict[str, Any]) -> Any:
    raise AssertionError(f"qwen-v1 makes no preparatory upstream call (asked for {path})")


def chat_body(chat: ChatRequest) -> dict[str, Any]:
    """The upstream body qwen-v1 builds for ``chat`` with no thinking/search switch."""
    return asyncio.run(prepared_body(chat))


async def prepared_body(chat: ChatRequest) -> dict[str, Any]:
    return (await V1.prepare(chat, ChatOptions(upstream_model=chat.model), _no_post)).body


def request(**fields: Any) -> Any:
    body: dict[str, Any] = {"model": "qwen-max-latest", "messages": [{"role": "user", "content": "hi"}]}
    body.update(fields)
    return parse_chat_request(body)


def delta(content: str, **extra: Any) -> dict[str, Any]:
    """A §2.3 stream payload holding the answer so far."""
    return {"choices": [{"delta": {"role": "assistant", "content": content, **extra}}]}


async def payloads_of(*payloads: dict[str, Any], closed: list[bool] | None = None) -> AsyncIterator[dict[str, Any]]:
    try:
        for payload in payloads:
            yield payload
    finally:
        if closed is not None:
            closed.append(True)


async def frames(*payloads: dict[str, Any], stats: StreamStats | None = None) -> list[Frame]:
    stream = V1.stream_frames(payloads_of(*payloads), stats or StreamStats())
    return [frame async for frame in stream]


def test_registered_as_qwen_v1() -> None:
    """The dialect registry maps ``qwen-v1`` to this dialect and its §2 paths."""
    dialect = get_dialect("qwen-v1")
    assert isinstance(dialect, QwenV1)
    assert (dialect.models_path, dialect.chat_path) == ("/api/models", "/api/chat/completions")
    with pytest.raises(ValueError):
        get_dialect("qwen-v0")


# ---- chat_body ------------------------------------------------------------------------

def test_chat_body_keeps_unknown_fields() -> None:
    """Fields the relay does not know (chat_type, id, incremental_output…) reach the upstream."""
    body = chat_body(request(chat_type="search", id="abc", temperature=0.2, session_id="s"))
    assert (body["chat_type"], body["id"], body["temperature"], body["session_id"]) == ("search", "abc", 0.2, "s")
    assert body["model"] == "qwen-max-latest" and body["stream"] is False


def test_chat_body_drops_stream_options() -> None:
    """stream_options is the relay's business (usage chunk), never forwarded."""
    body = chat_body(request(stream=True, stream_options={"include_usage": True}))
    assert "stream_options" not in body
    assert body["stream"] is True


def test_chat_body_maps_developer_role_to_system() -> None:
    """Qwen Chat knows no ``developer`` role (§2.2); other roles and the client's
    own message objects are left alone."""
    messages = [{"role": "developer", "content": "be brief", "name": "d"}, {"role": "user", "content": "hi"}]
    req = request(messages=messages)
    body = chat_body(req)
    assert body["messages"] == [{"role": "system", "content": "be brief", "name": "d"},
                                {"role": "user", "content": "hi"}]
    assert req.messages[0]["role"] == "developer", "the client's request is not mutated"


def test_chat_body_maps_max_completion_tokens_to_max_tokens() -> None:
    """max_completion_tokens becomes max_tokens (the field §2.2 knows) and is not forwarded itself."""
    body = chat_body(request(max_completion_tokens=256))
    assert body["max_tokens"] == 256
    assert "max_completion_tokens" not in body


def test_chat_body_max_tokens_wins_over_max_completion_tokens() -> None:
    """When the client sends both, its max_tokens is kept."""
    body = chat_body(request(max_tokens=100, max_completion_tokens=256))
    assert body["max_tokens"] == 100 and "max_completion_tokens" not in body


def test_chat_body_without_limit_has_no_max_tokens() -> None:
    """max_tokens is only sent when the client gave one (§2.2)."""
    assert "max_tokens" not in chat_body(request())


@pytest.mark.parametrize("incremental_output", [True, False, None])
async def test_client_incremental_output_does_not_break_the_answer(incremental_output: bool | None) -> None:
    """§2.2: ``incremental_output: true`` in the upstream body switches Qwen to
    incremental deltas. Unknown fields are forwarded, so a client that sends it
    must still get the exact answer: either the field is not forwarded, or the
    stream is then not deaccumulated. (Modelled on the emulator, which honours
    the field the same way.)"""
    body = await prepared_body(request(stream=True, incremental_output=incremental_output))
    pieces = ["Hel", "lo", " wor", "ld"]
    sent = pieces if body.get("incremental_output") is True else ["Hel", "Hello", "Hello wor", "Hello world"]
    out = await frames(*(delta(text) for text in sent))
    assert "".join(f.content for f in out) == "Hello world"


# ---- stream_frames --------------------------------------------------------------------

async def test_stream_frames_turns_cumulative_payloads_into_increments() -> None:
    """§2.3: every payload holds the whole answer so far; frames hold only the new text."""
    stats = StreamStats()
    out = await frames(delta(""), delta("Hel"), delta("Hello"), delta("Hello"), delta("Hello wor"),
                       delta("Hello world"), stats=stats)
    assert [f.content for f in out] == ["Hel", "lo", " wor", "ld"]
    assert stats.divergences == 0


async def test_stream_frames_keeps_finish_reason_and_maps_usage() -> None:
    """finish_reason passes through; Qwen usage names become OpenAI's."""
    out = await frames(
        delta("Hi"),
        {"choices": [{"delta": {"role": "assistant", "content": "Hi!"}, "finish_reason": "stop"}]},
        {"choices": [], "usage": {"input_tokens": 3, "output_tokens": 2}},
    )
    assert [(f.content, f.finish_reason) for f in out] == [("Hi", None), ("!", "stop"), ("", None)]
    assert out[-1].usage == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


async def test_stream_frames_passes_unknown_delta_fields_as_extra() -> None:
    """An unknown delta field reaches the client as an extra field."""
    out = await frames(delta("Ans", audio={"id": "a1"}), delta("Answer"))
    assert out[0].extra == {"audio": {"id": "a1"}}
    assert out[1].content == "wer" and out[1].extra is None


async def test_web_search_results_become_a_sources_list_after_the_answer() -> None:
    """§2.3: the ``web_search`` delta is not answer text; its sources follow the answer."""
    info = {"web_search_info": [{"title": "T", "url": "https://example.com"}]}
    out = await frames(delta("", name="web_search", extra=info), delta("Answer"))
    text = "".join(f.content for f in out)
    assert text.startswith("Answer")
    assert "Sources:" in text and "[T](https://example.com)" in text


async def test_stream_frames_skips_payloads_without_choices() -> None:
    """A payload with no usable choice and no usage yields nothing."""
    out = await frames({"id": "x"}, {"choices": []}, {"choices": ["bad"]}, delta("ok"))
    assert [f.content for f in out] == ["ok"]


@pytest.mark.parametrize("code", ["ContextLengthExceeded", "context_length_exceeded"])
async def test_context_length_error_becomes_length_finish(code: str) -> None:
    """An in-stream ``{"error":{"code":"ContextLengthExceeded"}}`` ends the answer
    with finish_reason ``length`` (what OpenAI clients expect), not an error."""
    closed: list[bool] = []
    stream = V1.stream_frames(
        payloads_of(delta("Hel"), delta("Hello"), {"error": {"code": code, "details": "too long"}},
                    delta("never"), closed=closed),
        StreamStats(),
    )
    out = [frame async for frame in stream]
    assert [(f.content, f.finish_reason) for f in out] == [("Hel", None), ("lo", None), ("", "length")]
    assert closed == [True]


@pytest.mark.parametrize(("error", "cls"), [
    ({"code": "Unauthorized", "details": "token expired"}, AuthenticationFailed),
    ({"code": "invalid_token"}, AuthenticationFailed),
    ({"code": "Too_Many_Requests", "details": "slow down"}, UpstreamRateLimited),
    ({"code": "RateLimited"}, UpstreamRateLimited),
    ({"code": "InternalError", "message": "oops"}, UpstreamError),
    ("plain text error", UpstreamError),
])
async def test_in_stream_error_raises_the_matching_relay_error(error: Any, cls: type[Exception]) -> None:
    """In-stream upstream errors become RelayErrors (the encoder turns them into
    an error event); text already received is passed on first."""
    got: list[str] = []
    closed: list[bool] = []
    with pytest.raises(cls) as info:
        async for frame in V1.stream_frames(payloads_of(delta("Hi"), {"error": error}, closed=closed),
                                            StreamStats()):
            got.append(frame.content)
    assert got == ["Hi"]
    assert closed == [True]
    if isinstance(info.value, UpstreamRateLimited):
        assert info.value.retry_after_s is not None


async def test_auth_error_status_is_401() -> None:
    """An in-stream Unauthorized surfaces as a 401 authentication_error envelope."""
    with pytest.raises(AuthenticationFailed) as info:
        await frames({"error": {"code": "Unauthorized"}})
    assert info.value.http_status == 401
    assert info.value.envelope()["error"]["type"] == "authentication_error"


# ---- completion -----------------------------------------------------------------------

def test_completion_of_v1_non_stream_shape() -> None:
    """§2.4: the answer is choices[0].message.content; usage is mapped; finish defaults to stop."""
    done = V1.completion({"choices": [{"message": {"role": "assistant", "content": "Hello world"}}],
                          "usage": {"input_tokens": 4, "output_tokens": 2}})
    assert (done.content, done.reasoning, done.finish_reason) == ("Hello world", "", "stop")
    assert done.usage == {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}
    assert done.message_extra is None


def test_completion_keeps_finish_reason_and_extra_message_fields() -> None:
    """finish_reason passes through; unknown message fields are kept."""
    done = V1.completion({"choices": [{"message": {"role": "assistant", "content": "x", "tool_calls": []},
                                       "finish_reason": "length"}]})
    assert done.finish_reason == "length"
    assert done.message_extra == {"tool_calls": []}
    assert done.usage is None


@pytest.mark.parametrize("payload", [
    {"detail": "Your session has expired or the token is invalid. Please sign in again."},
    {"choices": []},
    {"choices": [{"delta": {"content": "x"}}]},
    {},
    [],
    "Hello",
    None,
])
def test_completion_without_a_message_is_a_protocol_error(payload: Any) -> None:
    """A body with no choices[0].message (an Open-WebUI ``detail`` body, a list,
    a string) is UpstreamProtocolError, not a KeyError or an empty answer."""
    with pytest.raises(UpstreamProtocolError) as info:
        V1.completion(payload)
    assert info.value.http_status == 502


def test_completion_detail_is_quoted_in_the_message() -> None:
    """The upstream's ``detail`` text helps the user, so it is in the error message."""
    with pytest.raises(UpstreamProtocolError) as info:
        V1.completion({"detail": "session expired"})
    assert "session expired" in info.value.message


def test_completion_error_body_maps_to_relay_error() -> None:
    """A non-stream ``{"error":{...}}`` maps like an in-stream one."""
    with pytest.raises(AuthenticationFailed):
        V1.completion({"error": {"code": "Unauthorized"}})
    with pytest.raises(UpstreamRateLimited):
        V1.completion({"error": {"code": "Too_Many_Requests"}})


# ---- models ---------------------------------------------------------------------------

MODEL_ENTRIES = [{"id": "qwen-max-latest", "name": "Qwen2.5-Max",
                  "info": {"meta": {"capabilities": {"vision": True}}}},
                 {"id": "qwq-32b", "name": "QwQ-32B"}]


def test_models_of_v1_data_list() -> None:
    """§2.1: ``{"data":[...]}`` gives its entries; entries without a string id are dropped."""
    assert V1.models({"data": [*MODEL_ENTRIES, {"name": "no id"}, {"id": 5}, "junk"]}) == MODEL_ENTRIES


def test_models_of_v2_wrapped_data() -> None:
    """``{"success":true,"data":{"data":[...]}}`` (the v2 wrapper) gives the same entries."""
    assert V1.models({"success": True, "request_id": "r", "data": {"data": MODEL_ENTRIES}}) == MODEL_ENTRIES


@pytest.mark.parametrize("payload", [{}, {"data": None}, {"data": {"items": []}}, [], "x"])
def test_models_without_data_array_is_a_protocol_error(payload: Any) -> None:
    """No ``data`` array anywhere: UpstreamProtocolError."""
    with pytest.raises(UpstreamProtocolError):
        V1.models(payload)


def test_models_unsuccessful_v2_body_maps_its_error_code() -> None:
    """``{"success": false, "data": {"code": "Unauthorized"}}`` is the token's fault: 401, not 502."""
    with pytest.raises(AuthenticationFailed):
        V1.models({"success": False, "data": {"code": "Unauthorized"}})
