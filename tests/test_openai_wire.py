"""The OpenAI side of the wire (relay/openai_wire.py) and the error envelopes
(relay/errors.py): validation as the OpenAI API does it, response shapes the
official SDKs parse unchanged.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from relay import errors
from relay.errors import InvalidRequest, RelayError, UpstreamRejected
from relay.openai_wire import (
    completion_object,
    estimate_usage,
    model_list,
    new_completion_id,
    parse_chat_request,
    parse_json_body,
    usage_from_upstream,
)

USER = {"role": "user", "content": "hi"}


def body(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"model": "qwen-max-latest", "messages": [USER]}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not ...}


# ---- parse_chat_request: rejections ---------------------------------------------------

@pytest.mark.parametrize(("raw", "param"), [
    ([], None),
    ("text", None),
    (None, None),
    (body(model=...), "model"),
    (body(model=None), "model"),
    (body(model=3), "model"),
    (body(model=""), "model"),
    (body(model="  "), "model"),
    (body(model=["qwen"]), "model"),
    (body(messages=...), "messages"),
    (body(messages={"role": "user"}), "messages"),
    (body(messages="hi"), "messages"),
    (body(messages=[]), "messages"),
    (body(messages=["hi"]), "messages[0]"),
    (body(messages=[USER, None]), "messages[1]"),
    (body(messages=[{"content": "hi"}]), "messages[0].role"),
    (body(messages=[{"role": "wizard", "content": "hi"}]), "messages[0].role"),
    (body(messages=[{"role": "USER", "content": "hi"}]), "messages[0].role"),
    (body(messages=[USER, {"role": 1, "content": "hi"}]), "messages[1].role"),
    (body(messages=[{"role": "user", "content": 5}]), "messages[0].content"),
    (body(messages=[{"role": "user", "content": {"text": "hi"}}]), "messages[0].content"),
    (body(stream="true"), "stream"),
    (body(stream=1), "stream"),
    (body(stream_options=True), "stream_options"),
    (body(stream_options={"include_usage": "yes"}), "stream_options.include_usage"),
    (body(temperature="0.5"), "temperature"),
    (body(temperature=True), "temperature"),
    (body(top_p="1"), "top_p"),
    (body(presence_penalty=[0]), "presence_penalty"),
    (body(frequency_penalty="0"), "frequency_penalty"),
    (body(max_tokens=100.0), "max_tokens"),
    (body(max_tokens="100"), "max_tokens"),
    (body(max_tokens=True), "max_tokens"),
    (body(max_completion_tokens=1.5), "max_completion_tokens"),
    (body(seed="1"), "seed"),
    (body(n=2), "n"),
    (body(n=0), "n"),
    (body(n=1.0), "n"),
])
def test_invalid_chat_request_is_rejected_with_its_param(raw: Any, param: str | None) -> None:
    """Each broken field gives InvalidRequest (400) naming that field in ``param``,
    as the OpenAI API does, never a TypeError or a 500."""
    with pytest.raises(InvalidRequest) as info:
        parse_chat_request(raw)
    assert info.value.param == param
    assert info.value.http_status == 400
    assert info.value.envelope()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("role", [["user"], {"name": "user"}], ids=["list", "object"])
def test_unhashable_role_is_rejected_as_invalid_request(role: Any) -> None:
    """A role that is a JSON array or object is a 400 on ``messages[0].role``,
    not a TypeError (unhashable) that the middleware turns into a 500."""
    with pytest.raises(InvalidRequest) as info:
        parse_chat_request(body(messages=[{"role": role, "content": "hi"}]))
    assert info.value.param == "messages[0].role"


def test_missing_model_uses_openai_code() -> None:
    """A missing model says ``missing_required_parameter`` like OpenAI."""
    with pytest.raises(InvalidRequest) as info:
        parse_chat_request(body(model=...))
    assert info.value.envelope()["error"]["code"] == "missing_required_parameter"


def test_n_above_one_is_unsupported_value() -> None:
    """n=2 is valid OpenAI but Qwen Chat returns one choice: ``unsupported_value``."""
    with pytest.raises(InvalidRequest) as info:
        parse_chat_request(body(n=2))
    assert info.value.envelope()["error"]["code"] == "unsupported_value"


# ---- parse_chat_request: acceptance ---------------------------------------------------

def test_minimal_request_defaults() -> None:
    """stream and include_usage default to False; the body is kept as given."""
    raw = body()
    request = parse_chat_request(raw)
    assert (request.model, request.messages, request.stream, request.include_usage) == (
        "qwen-max-latest", [USER], False, False)
    assert request.body is raw


def test_unknown_fields_are_kept_for_the_upstream() -> None:
    """Fields the relay does not know are accepted and forwarded, not rejected."""
    raw = body(chat_type="search", tools=[{"type": "function"}], user="u1", response_format={"type": "text"})
    request = parse_chat_request(raw)
    assert request.body["chat_type"] == "search" and request.body["tools"] == [{"type": "function"}]


def test_stream_options_include_usage_is_read() -> None:
    """stream_options.include_usage=true turns include_usage on."""
    request = parse_chat_request(body(stream=True, stream_options={"include_usage": True}))
    assert request.stream is True and request.include_usage is True


def test_stream_options_without_include_usage() -> None:
    """stream_options without include_usage (or null) keeps it off."""
    assert parse_chat_request(body(stream_options={})).include_usage is False
    assert parse_chat_request(body(stream_options=None, stream=None)).stream is False


def test_assistant_content_null_with_tool_calls_is_accepted() -> None:
    """``content: null`` is valid on an assistant message with tool_calls."""
    messages = [USER, {"role": "assistant", "content": None,
                       "tool_calls": [{"id": "c1", "type": "function",
                                       "function": {"name": "f", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "42"}]
    assert parse_chat_request(body(messages=messages)).messages == messages


def test_list_content_parts_are_accepted() -> None:
    """Content as a list of parts (text and image_url) is valid."""
    parts = [{"type": "text", "text": "what is this?"},
             {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]
    request = parse_chat_request(body(messages=[{"role": "user", "content": parts}]))
    assert request.messages[0]["content"] == parts


@pytest.mark.parametrize("role", ["system", "developer", "user", "assistant", "tool", "function"])
def test_every_openai_role_is_accepted(role: str) -> None:
    """All six OpenAI roles pass validation, the message kept as sent."""
    request = parse_chat_request(body(messages=[{"role": role, "content": "x"}]))
    assert request.messages == [{"role": role, "content": "x"}]


@pytest.mark.parametrize("fields", [
    {"temperature": 0}, {"temperature": 0.5}, {"top_p": 1}, {"max_tokens": 100},
    {"max_completion_tokens": 5}, {"seed": -3}, {"n": 1}, {"n": None}, {"temperature": None},
])
def test_valid_numbers_are_accepted(fields: dict[str, Any]) -> None:
    """Integers are numbers; null means "not given"; the values reach the dialect as sent."""
    request = parse_chat_request(body(**fields))
    assert {name: request.body[name] for name in fields} == fields


# ---- parse_json_body ------------------------------------------------------------------

@pytest.mark.parametrize("raw", [
    b"",
    b"{",
    b"not json",
    b'{"a": 1} trailing',
    b"\xff\xfe{}",
    '{"model": "é"}'.encode("latin-1"),
    b"[" * 100_000,
    b'{"a":' * 100_000,
], ids=["empty", "truncated", "text", "trailing", "bad_utf8", "latin1", "deep_array", "deep_object"])
def test_broken_body_is_invalid_request_never_a_crash(raw: bytes) -> None:
    """Every way a body can be broken is a 400 InvalidRequest — deep nesting
    included (never RecursionError)."""
    with pytest.raises(InvalidRequest) as info:
        parse_json_body(raw)
    assert info.value.http_status == 400


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_standard_json_constants_are_invalid_request(constant: str) -> None:
    """RFC 8259 JSON has no NaN/Infinity. Python's json accepts them, and the
    relay would then forward ``"temperature":NaN`` — invalid JSON — upstream
    (json.dumps allows NaN by default); the OpenAI API answers 400."""
    raw = b'{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":' + constant.encode() + b"}"
    with pytest.raises(InvalidRequest):
        parse_json_body(raw)


def test_valid_body_is_decoded() -> None:
    """A valid UTF-8 JSON body decodes to Python objects."""
    assert parse_json_body('{"model":"q","messages":[{"content":"中😀"}]}'.encode()) == {
        "model": "q", "messages": [{"content": "中😀"}]}


# ---- usage ----------------------------------------------------------------------------

def test_usage_with_openai_names_is_kept() -> None:
    """OpenAI names pass through; total_tokens from upstream is kept."""
    assert usage_from_upstream({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 9}) == {
        "prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 9}


def test_usage_with_qwen_names_is_mapped() -> None:
    """input_tokens/output_tokens and output_tokens_details.reasoning_tokens map to
    OpenAI's names; a missing total is the sum."""
    raw = {"input_tokens": 10, "output_tokens": 20, "output_tokens_details": {"reasoning_tokens": 5}}
    assert usage_from_upstream(raw) == {
        "prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30,
        "completion_tokens_details": {"reasoning_tokens": 5}}


def test_usage_with_completion_tokens_details_keeps_reasoning() -> None:
    """OpenAI's completion_tokens_details.reasoning_tokens is kept too."""
    raw = {"prompt_tokens": 1, "completion_tokens": 2, "completion_tokens_details": {"reasoning_tokens": 1}}
    usage = usage_from_upstream(raw)
    assert usage is not None and usage["completion_tokens_details"] == {"reasoning_tokens": 1}


@pytest.mark.parametrize("raw", [None, [], "10", {}, {"input_tokens": 1}, {"prompt_tokens": "1", "completion_tokens": 2}])
def test_unusable_usage_is_none(raw: Any) -> None:
    """Anything without two integer counts is no usage (so the estimate is used)."""
    assert usage_from_upstream(raw) is None


def test_estimate_usage_returns_integers() -> None:
    """The estimate is integers, prompt at least 1, total the sum; list parts count."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": "x" * 40},
                                      {"role": "user", "content": [{"type": "text", "text": "y" * 8},
                                                                   {"type": "image_url"}]},
                                      {"role": "assistant", "content": None}]
    usage = estimate_usage(messages, 9)
    assert all(type(v) is int for v in usage.values())
    assert usage == {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
    assert estimate_usage([], 0) == {"prompt_tokens": 1, "completion_tokens": 0, "total_tokens": 1}


# ---- response shapes ------------------------------------------------------------------

def test_model_list_shape() -> None:
    """``{"object":"list","data":[{"id","object":"model","created","owned_by"}]}``;
    entries without a string id are dropped."""
    listed = model_list([{"id": "qwen-max-latest", "name": "Qwen2.5-Max", "info": {}},
                         {"id": "qwq-32b", "created": 5, "owned_by": "alibaba"},
                         {"name": "no id"}, {"id": 7}, {"id": ""}], created=1700000000)
    assert listed == {"object": "list", "data": [
        {"id": "qwen-max-latest", "object": "model", "created": 1700000000, "owned_by": "qwen",
         "name": "Qwen2.5-Max"},
        {"id": "qwq-32b", "object": "model", "created": 5, "owned_by": "alibaba"},
    ]}
    assert model_list([], 0) == {"object": "list", "data": []}


def test_completion_object_shape() -> None:
    """A chat.completion with one choice; reasoning and extra fields go on the message."""
    usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    obj = completion_object(completion_id="chatcmpl-x", created=1, model="m", content="hi",
                            reasoning="hmm", finish_reason="stop", usage=usage,
                            message_extra={"tool_calls": [], "content": "ignored"})
    assert obj == {"id": "chatcmpl-x", "object": "chat.completion", "created": 1, "model": "m",
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi",
                                                        "reasoning_content": "hmm", "tool_calls": []},
                                "logprobs": None, "finish_reason": "stop"}],
                   "usage": usage}


def test_new_completion_ids_are_unique_chatcmpl_ids() -> None:
    """Ids look like OpenAI's and do not repeat."""
    ids = {new_completion_id() for _ in range(100)}
    assert len(ids) == 100 and all(i.startswith("chatcmpl-") for i in ids)


# ---- error envelopes ------------------------------------------------------------------

ERROR_STATUSES: dict[type[RelayError], int] = {
    errors.RelayError: 500,
    errors.InvalidRequest: 400,
    errors.BodyTooLarge: 413,
    errors.ModelNotFound: 404,
    errors.NotFound: 404,
    errors.MethodNotAllowed: 405,
    errors.OriginNotAllowed: 403,
    errors.AuthenticationFailed: 401,
    errors.Overloaded: 429,
    errors.Draining: 503,
    errors.RequestTimeout: 408,
    errors.UpstreamRateLimited: 429,
    errors.UpstreamError: 502,
    errors.UpstreamUnavailable: 502,
    errors.UpstreamInterrupted: 502,
    errors.UpstreamTimeout: 504,
    errors.UpstreamProtocolError: 502,
    errors.UpstreamChallenge: 502,
    errors.StreamLimitExceeded: 502,
    errors.ModelNotAllowed: 403,
    errors.KeyRateLimited: 429,
    errors.PoolExhausted: 503,
    errors.AdminKeyRequired: 403,
    errors.ImageTooLarge: 400,
    errors.UnsupportedImage: 400,
    errors.ImageUrlNotAllowed: 400,
    errors.UpstreamUploadFailed: 502,
}


def test_every_error_class_has_a_status_here() -> None:
    """A new error class must be added to this table (and so get a tested status)."""
    exported = {getattr(errors, name) for name in errors.__all__}
    assert exported == set(ERROR_STATUSES) | {UpstreamRejected}


@pytest.mark.parametrize("cls", list(ERROR_STATUSES), ids=lambda cls: cls.__name__)
def test_error_envelope_shape_and_status(cls: type[RelayError]) -> None:
    """Every error renders ``{"error":{"message","type","param","code"}}``, JSON-safe,
    with the HTTP status its class declares."""
    exc = cls("something broke", param="p")
    envelope = exc.envelope()
    assert set(envelope) == {"error"}
    assert set(envelope["error"]) == {"message", "type", "param", "code"}
    assert envelope["error"]["message"] == "something broke"
    assert envelope["error"]["param"] == "p"
    assert isinstance(envelope["error"]["type"], str)
    assert json.loads(json.dumps(envelope)) == envelope
    assert exc.http_status == ERROR_STATUSES[cls]


def test_instance_code_overrides_class_code() -> None:
    """``code=`` on the instance wins over the class default."""
    assert errors.UpstreamProtocolError("x").envelope()["error"]["code"] == "upstream_protocol_error"
    assert errors.UpstreamProtocolError("x", code="upstream_empty_answer").envelope()["error"]["code"] == (
        "upstream_empty_answer")


@pytest.mark.parametrize("status", [400, 404, 413, 422])
def test_upstream_rejected_carries_its_own_status(status: int) -> None:
    """UpstreamRejected passes the upstream's 4xx on."""
    exc = UpstreamRejected("no", status=status)
    assert exc.http_status == status
    assert exc.envelope() == {"error": {"message": "no", "type": "invalid_request_error",
                                        "param": None, "code": "upstream_rejected"}}


def test_upstream_errors_are_also_builtin_exceptions() -> None:
    """Timeouts and connection failures still match TimeoutError/ConnectionError."""
    assert isinstance(errors.UpstreamTimeout("t"), TimeoutError)
    assert isinstance(errors.UpstreamUnavailable("u"), ConnectionError)
