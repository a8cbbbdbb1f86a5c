"""Last stage (relay/pipeline/encode.py): frames → OpenAI chunk SSE.

The wire contract the openai SDKs, Roo Code and Cline parse: a role chunk
first, a ``content`` key in every text delta, ``delta.tool_calls`` entries for
calls, exactly one finish chunk, a ``choices: []`` usage chunk when asked, and
exactly one final ``[DONE]`` — also when the stream fails after the headers went out.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk

from relay.errors import (
    AuthenticationFailed,
    RelayError,
    StreamLimitExceeded,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamTimeout,
)
from relay.openai_wire import estimate_usage
from relay.pipeline import Frame, StreamStats, ToolCall
from relay.pipeline import encode as encode_stage
from relay.pipeline.frames import HEARTBEAT
from relay.sse import DONE_EVENT, SseDecoder
from relay.surfaces.openai_chat import ChatChunkEncoder
from tests.strategies import sse_texts, text_pieces

MODEL = "qwen-max-latest"
ROLE_DELTA = {"role": "assistant", "content": ""}


async def frames_of(*frames: Frame, error: RelayError | None = None) -> AsyncIterator[Frame]:
    for frame in frames:
        yield frame
    if error is not None:
        raise error


def usage_estimate(chars: int) -> dict[str, Any]:
    return estimate_usage([{"role": "user", "content": "hi"}], chars)


async def encode(source: AsyncIterator[Frame], *, include_usage: bool = False,
                 model: str = MODEL, completion_id: str = "chatcmpl-1") -> tuple[list[bytes], list[Any]]:
    """Run the encode stage with the chat encoder; return the yielded byte chunks and the
    decoded event data (JSON objects, or the string ``[DONE]``), checking the SSE framing."""
    encoder = ChatChunkEncoder(completion_id=completion_id, created=1700000000, model=model,
                               include_usage=include_usage)
    writes = [chunk async for chunk in encode_stage(source, encoder, StreamStats(), usage_estimate)]
    raw = b"".join(writes)
    assert all(writes), "no empty write"
    assert raw.endswith(b"\n\n")
    for block in raw[:-2].split(b"\n\n"):
        assert block.startswith(b"data: ") and b"\n" not in block and b"\r" not in block, block
    decoder = SseDecoder(1 << 24)
    events = decoder.feed(raw) + decoder.close()
    assert all(event.event == "message" for event in events)
    data = [event.data if event.data == "[DONE]" else json.loads(event.data) for event in events]
    return writes, data


def choices(data: list[Any]) -> list[dict[str, Any]]:
    return [event["choices"][0] for event in data if isinstance(event, dict) and event.get("choices")]


def check_done_once_and_last(writes: list[bytes], data: list[Any]) -> None:
    assert data.count("[DONE]") == 1 and data[-1] == "[DONE]"
    assert b"".join(writes).endswith(DONE_EVENT)


async def test_normal_stream_follows_the_openai_chunk_contract() -> None:
    """Role chunk, text deltas each with ``content``, one finish chunk, [DONE] last."""
    writes, data = await encode(frames_of(Frame(content="Hel"), Frame(content="lo"),
                                          Frame(finish_reason="stop")))
    check_done_once_and_last(writes, data)
    cs = choices(data)
    assert cs[0]["delta"] == ROLE_DELTA
    assert [c["delta"] for c in cs[1:-1]] == [{"content": "Hel"}, {"content": "lo"}]
    assert [c["finish_reason"] for c in cs] == [None, None, None, "stop"]
    assert cs[-1]["delta"] == {}
    for event in data[:-1]:
        assert event["object"] == "chat.completion.chunk"
        assert event["id"] == "chatcmpl-1" and event["model"] == MODEL and event["created"] == 1700000000
    assert all(c["index"] == 0 for c in cs)


async def test_every_delta_after_the_role_chunk_has_a_content_key() -> None:
    """Reasoning-only and extra-field deltas still carry ``content`` (Roo Code
    reads it unconditionally)."""
    _, data = await encode(frames_of(
        Frame(reasoning="thinking"),
        Frame(content="a", reasoning="more"),
        Frame(extra={"name": "web_search", "extra": {"web_search_info": []}}),
        Frame(content="b"),
    ))
    deltas = [c["delta"] for c in choices(data)[1:-1]]
    assert all("content" in d for d in deltas)
    assert deltas == [
        {"content": "", "reasoning_content": "thinking"},
        {"content": "a", "reasoning_content": "more"},
        {"name": "web_search", "extra": {"web_search_info": []}, "content": ""},
        {"content": "b"},
    ]


async def test_exactly_one_finish_chunk_even_if_several_frames_carry_one() -> None:
    """Only the closing chunk carries a non-null finish_reason; the last one seen wins."""
    _, data = await encode(frames_of(Frame(content="a", finish_reason="length"),
                                     Frame(content="b", finish_reason="stop")))
    finishes = [c["finish_reason"] for c in choices(data) if c["finish_reason"] is not None]
    assert finishes == ["stop"]


async def test_finish_reason_defaults_to_stop() -> None:
    """A stream that never says why it ended finishes with ``stop``."""
    _, data = await encode(frames_of(Frame(content="x")))
    assert choices(data)[-1]["finish_reason"] == "stop"


async def test_include_usage_adds_a_choices_empty_chunk_with_integer_usage() -> None:
    """With stream_options.include_usage, a chunk with ``choices == []`` (a list,
    never null) and integer usage comes after the finish chunk, before [DONE]."""
    writes, data = await encode(frames_of(Frame(content="Hello world")), include_usage=True)
    check_done_once_and_last(writes, data)
    usage_chunk = data[-2]
    assert usage_chunk["choices"] == []
    assert data[-3]["choices"][0]["finish_reason"] == "stop"
    usage = usage_chunk["usage"]
    assert set(usage) >= {"prompt_tokens", "completion_tokens", "total_tokens"}
    assert all(type(usage[k]) is int for k in ("prompt_tokens", "completion_tokens", "total_tokens"))
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_upstream_usage_is_preferred_over_the_estimate() -> None:
    """Usage carried by a frame reaches the usage chunk unchanged."""
    usage = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    _, data = await encode(frames_of(Frame(content="x"), Frame(usage=usage)), include_usage=True)
    assert data[-2]["usage"] == usage


async def test_without_include_usage_no_usage_chunk() -> None:
    """No chunk has ``choices == []`` unless the client asked for usage."""
    _, data = await encode(frames_of(Frame(content="x")))
    assert all(event["choices"] for event in data[:-1])


@pytest.mark.parametrize("error", [
    UpstreamTimeout("The upstream went silent."),
    StreamLimitExceeded("line too long"),
    AuthenticationFailed("token expired"),
    UpstreamRateLimited("slow down", retry_after_s=60.0),
])
async def test_error_mid_stream_becomes_one_error_event_then_done(error: RelayError) -> None:
    """A RelayError after the headers went out is one ``{"error": {...}}`` event
    with all four keys, then [DONE], and no finish chunk (the answer is incomplete)."""
    writes, data = await encode(frames_of(Frame(content="partial"), error=error))
    check_done_once_and_last(writes, data)
    errors = [event for event in data if isinstance(event, dict) and "error" in event]
    assert errors == [error.envelope()]
    assert set(errors[0]["error"]) == {"message", "type", "param", "code"}
    assert data[-2] is errors[0]
    assert all(c["finish_reason"] is None for c in choices(data))
    assert choices(data)[1]["delta"] == {"content": "partial"}


async def test_error_before_any_frame_is_raised_for_a_status_answer() -> None:
    """Failing on the first read: nothing was sent, so the error leaves the stage
    (the handler answers with its status, or tries again)."""
    stream = encode_stage(frames_of(error=UpstreamTimeout("silent")),
                          ChatChunkEncoder(completion_id="c", created=0, model=MODEL, include_usage=False),
                          StreamStats(), usage_estimate)
    with pytest.raises(UpstreamTimeout):
        await anext(stream)


async def test_a_heartbeat_starts_the_stream_so_a_later_error_is_an_event() -> None:
    """A keep-alive commits the response: role chunk and comment, then the error event and [DONE]."""
    writes = [chunk async for chunk in encode_stage(
        frames_of(HEARTBEAT, error=UpstreamTimeout("silent")),
        ChatChunkEncoder(completion_id="c", created=0, model=MODEL, include_usage=False),
        StreamStats(), usage_estimate)]
    assert writes[0].endswith(b": keep-alive\n\n")
    events = SseDecoder(1 << 20).feed(b"".join(writes))
    assert json.loads(events[0].data)["choices"][0]["delta"] == ROLE_DELTA
    assert json.loads(events[1].data)["error"]["code"] == "upstream_timeout"
    assert events[2].data == "[DONE]" and len(events) == 3


@pytest.mark.parametrize("frames", [
    [],
    [Frame(content="")],
    [Frame(finish_reason="stop")],
    [Frame(usage={"prompt_tokens": 1, "completion_tokens": 0, "total_tokens": 1})],
], ids=["nothing", "empty_text", "finish_only", "usage_only"])
async def test_stream_without_answer_text_raises_empty_answer(frames: list[Frame]) -> None:
    """No text at all is ``upstream_empty_answer``, raised before anything was sent."""
    stream = encode_stage(frames_of(*frames),
                          ChatChunkEncoder(completion_id="c", created=0, model=MODEL, include_usage=False),
                          StreamStats(), usage_estimate)
    with pytest.raises(UpstreamProtocolError) as raised:
        await anext(stream)
    assert raised.value.envelope()["error"]["code"] == "upstream_empty_answer"


async def test_started_stream_without_answer_text_ends_with_empty_answer_event() -> None:
    """An unknown-field frame starts the stream; no text after it is an error event, then [DONE]."""
    writes, data = await encode(frames_of(Frame(extra={"name": "web_search"})))
    check_done_once_and_last(writes, data)
    assert data[-2]["error"]["code"] == "upstream_empty_answer"
    assert all(c["finish_reason"] is None for c in choices(data))


async def test_length_finish_without_text_is_not_an_error() -> None:
    """A context-length stop with no text is a legitimate ``length`` finish."""
    _, data = await encode(frames_of(Frame(finish_reason="length")))
    assert choices(data)[-1]["finish_reason"] == "length"
    assert not any("error" in event for event in data[:-1])


async def test_reasoning_only_answer_is_not_empty() -> None:
    """A reasoning-only answer counts as answer text."""
    _, data = await encode(frames_of(Frame(reasoning="hmm")))
    assert choices(data)[-1]["finish_reason"] == "stop"


async def test_first_frame_is_emitted_first_in_the_first_write() -> None:
    """The first frame comes right after the role chunk, in the same first write
    (the write that commits the response)."""
    writes, data = await encode(frames_of(Frame(content="A"), Frame(content="B")))
    first_write = SseDecoder(1 << 20).feed(writes[0])
    assert [json.loads(e.data)["choices"][0]["delta"] for e in first_write] == [ROLE_DELTA, {"content": "A"}]
    assert [c["delta"].get("content") for c in choices(data)[1:-1]] == ["A", "B"]


async def test_first_frame_metadata_is_kept() -> None:
    """finish_reason and usage of the first frame reach the closing chunks."""
    usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    _, data = await encode(frames_of(Frame(content="A", finish_reason="length", usage=usage)),
                           include_usage=True)
    assert data[-3]["choices"][0]["finish_reason"] == "length"
    assert data[-2]["usage"] == usage


async def test_encode_closes_its_source_on_early_close() -> None:
    """The client going away closes the frame source (and so the upstream)."""
    closed: list[bool] = []

    async def source() -> AsyncIterator[Frame]:
        try:
            yield Frame(content="a")
            yield Frame(content="b")
        finally:
            closed.append(True)

    encoder = ChatChunkEncoder(completion_id="c", created=0, model=MODEL, include_usage=False)
    stream = encode_stage(source(), encoder, StreamStats(), usage_estimate)
    await anext(stream)
    await anext(stream)
    assert isinstance(stream, AsyncGenerator)
    await stream.aclose()
    assert closed == [True]


async def test_stats_count_characters_sent() -> None:
    """content_chars / reasoning_chars count characters, not bytes."""
    encoder = ChatChunkEncoder(completion_id="c", created=0, model=MODEL, include_usage=False)
    stats = StreamStats()
    _ = [c async for c in encode_stage(frames_of(Frame(content="😀é", reasoning="ab")), encoder, stats, usage_estimate)]
    assert (stats.content_chars, stats.reasoning_chars) == (2, 2)


@settings(max_examples=150)
@given(text_pieces.filter(any), st.booleans())
async def test_any_text_round_trips_exactly_through_the_events(pieces: list[str], include_usage: bool) -> None:
    """Unicode, emoji, quotes, backslashes, CR/LF, U+2028: json.loads of the
    events gives back exactly the text, and the contract holds."""
    writes, data = await encode(frames_of(*(Frame(content=p) for p in pieces)), include_usage=include_usage)
    check_done_once_and_last(writes, data)
    cs = choices(data)
    assert cs[0]["delta"] == ROLE_DELTA
    assert "".join(c["delta"]["content"] for c in cs[1:-1]) == "".join(pieces)
    assert [c["finish_reason"] for c in cs].count("stop") == 1
    assert sum(1 for event in data[:-1] if event["choices"] == []) == int(include_usage)


@settings(max_examples=100)
@given(sse_texts.filter(bool), sse_texts)
async def test_model_and_id_with_any_characters_stay_valid_json(model: str, completion_id: str) -> None:
    """The per-stream template escapes model and id like the text."""
    _, data = await encode(frames_of(Frame(content="x")), model=model, completion_id=completion_id,
                           include_usage=True)
    assert {event["model"] for event in data[:-1]} == {model}
    assert {event["id"] for event in data[:-1]} == {completion_id}


# -- tool calls (issue 5) -----------------------------------------------------------------

CALL_A = ToolCall(index=0, id="call_" + "a" * 24, name="read_file", arguments='{"path":"a.py"}')
CALL_B = ToolCall(index=1, id="call_" + "b" * 24, name="attempt_completion", arguments='{"result":"“done” \\n"}')


def tool_call_deltas(data: list[Any]) -> list[dict[str, Any]]:
    return [c["delta"] for c in choices(data) if "tool_calls" in c["delta"]]


async def test_tool_call_chunk_has_the_openai_shape() -> None:
    """One chunk per call: ``delta.tool_calls[{index, id, type: "function", function:
    {name, arguments}}]``, arguments whole; the SDK's own chunk type accepts every chunk."""
    writes, data = await encode(frames_of(Frame(tool_calls=[CALL_A, CALL_B]), Frame(finish_reason="tool_calls")),
                                include_usage=True)
    check_done_once_and_last(writes, data)
    assert tool_call_deltas(data) == [
        {"tool_calls": [{"index": 0, "id": CALL_A.id, "type": "function",
                         "function": {"name": "read_file", "arguments": '{"path":"a.py"}'}}]},
        {"tool_calls": [{"index": 1, "id": CALL_B.id, "type": "function",
                         "function": {"name": "attempt_completion", "arguments": CALL_B.arguments}}]},
    ]
    for event in data[:-1]:
        ChatCompletionChunk.model_validate(event)
    assert [c["finish_reason"] for c in choices(data)].count("tool_calls") == 1
    assert choices(data)[-1]["finish_reason"] == "tool_calls" and data[-2]["choices"] == []


async def test_the_openai_sdk_accumulates_text_and_calls() -> None:
    """The SDK's stream accumulator (what ``client.chat.completions.stream`` uses) sees
    the text, both calls with their arguments, and finish_reason ``tool_calls``."""
    _, data = await encode(frames_of(Frame(content="Reading."), Frame(tool_calls=[CALL_A]),
                                     Frame(tool_calls=[CALL_B], finish_reason="tool_calls")), include_usage=True)
    state: ChatCompletionStreamState = ChatCompletionStreamState()
    for event in data[:-1]:
        state.handle_chunk(ChatCompletionChunk.model_validate(event))
    choice = state.get_final_completion().choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Reading."
    calls = choice.message.tool_calls or []
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == [  # type: ignore[union-attr]
        (CALL_A.id, "read_file", CALL_A.arguments), (CALL_B.id, "attempt_completion", CALL_B.arguments)]


async def test_answer_with_only_tool_calls_is_not_empty() -> None:
    """No text and no reasoning, but a call: a normal answer, not ``upstream_empty_answer``."""
    _, data = await encode(frames_of(Frame(tool_calls=[CALL_A]), Frame(finish_reason="tool_calls")))
    assert not any("error" in event for event in data[:-1])
    assert choices(data)[-1]["finish_reason"] == "tool_calls"


async def test_text_then_calls_keep_their_order_within_a_frame() -> None:
    """A frame's content comes before its calls; content deltas still carry ``content``."""
    _, data = await encode(frames_of(Frame(content="Hi", reasoning="r", tool_calls=[CALL_A]), Frame(content="!")))
    deltas = [c["delta"] for c in choices(data)[1:-1]]
    assert deltas[0] == {"content": "Hi", "reasoning_content": "r"}
    assert deltas[1]["tool_calls"][0]["id"] == CALL_A.id
    assert deltas[2] == {"content": "!"}


async def test_first_frame_may_be_a_tool_call() -> None:
    _, data = await encode(frames_of(Frame(tool_calls=[CALL_A], finish_reason="tool_calls")))
    assert len(tool_call_deltas(data)) == 1 and choices(data)[-1]["finish_reason"] == "tool_calls"


async def test_stats_count_tool_calls_and_usage_estimate_includes_them() -> None:
    estimated: list[int] = []

    def estimate(chars: int) -> dict[str, Any]:
        estimated.append(chars)
        return usage_estimate(chars)

    encoder = ChatChunkEncoder(completion_id="c", created=0, model=MODEL, include_usage=True)
    stats = StreamStats()
    frames = frames_of(Frame(content="ab", tool_calls=[CALL_A, CALL_B]))
    _ = [c async for c in encode_stage(frames, encoder, stats, estimate)]
    assert (stats.tool_calls, stats.content_chars) == (2, 2)
    assert stats.tool_call_chars == sum(len(c.name) + len(c.arguments) for c in (CALL_A, CALL_B))
    assert estimated == [2 + stats.tool_call_chars]
