"""The Responses stream encoder (relay/surfaces/responses/stream.py) through ``pipeline.encode`` (issue 18).

What Codex CLI and the openai SDK's ``ResponseStreamState`` need: every event
with an ``event:`` line naming its type and a ``sequence_number`` counting from
0; each output item added before its deltas and done before the next one
opens; ``response.completed`` (or ``response.incomplete``) last, carrying the
whole output; a fault after the head as ``response.failed``, never a cut.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given, settings
from openai import omit
from openai.lib.streaming.responses import ResponseStreamState
from openai.types.responses import ResponseStreamEvent
from pydantic import TypeAdapter

from relay.errors import RelayError, UpstreamProtocolError, UpstreamTimeout
from relay.openai_wire import usage_for_chars
from relay.pipeline import Frame, StreamStats, encode, extract_tool_calls
from relay.pipeline.frames import HEARTBEAT, ToolCall
from relay.sse import SseDecoder
from relay.surfaces.responses import ResponsesEncoder
from relay.surfaces.responses.request import ResponsesContext, chat_body
from tests.pipeline.test_toolcalls import ANY_TOOLS, Item, answers, normalise

_EVENTS: TypeAdapter[ResponseStreamEvent] = TypeAdapter(ResponseStreamEvent)
NAMESPACE = {"type": "namespace", "name": "multi_agent_v1", "description": "Sub-agents.", "tools": [
    {"type": "function", "name": "spawn_agent", "description": "Spawn one.", "strict": False,
     "parameters": {"type": "object", "properties": {"task": {"type": "string"}}}}]}


def context(**body: Any) -> ResponsesContext:
    return chat_body({"model": "qwen3-coder-plus", "input": "hi", **body})[1]


async def frames_of(*frames: Frame, error: RelayError | None = None) -> AsyncIterator[Frame]:
    for frame in frames:
        yield frame
    if error is not None:
        raise error


def _estimate(chars: int) -> dict[str, Any]:
    return usage_for_chars(2, chars)


async def run(source: AsyncIterator[Frame], encoder: ResponsesEncoder | None = None) -> tuple[bytes, list[Any]]:
    """Encode ``source``; return the bytes and the decoded events, checking the framing on the way."""
    raw = b"".join([chunk async for chunk in encode(source, encoder or ResponsesEncoder(context()), StreamStats(),
                                                     _estimate)])
    decoder = SseDecoder(1 << 24)
    events = []
    for event in decoder.feed(raw) + decoder.close():
        data = json.loads(event.data)
        assert event.event == data["type"]  # Codex and the SDK read the event: lines
        events.append(data)
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    return raw, events


def read_back(events: list[Any]) -> tuple[list[Item], list[Item]]:
    """What the openai SDK's stream accumulator makes of the events: (from the deltas, from response.completed).

    From the deltas: the ``snapshot`` the SDK's delta events carry (its text or
    arguments so far), per output item, named by the item's ``added`` event.
    """
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=omit, text_format=omit)
    completed = None
    added: dict[int, Any] = {}
    snapshots: dict[int, str] = {}
    for data in events:
        for event in state.handle_event(_EVENTS.validate_python(data)):
            if event.type == "response.output_item.added":
                added[event.output_index] = event.item
            elif event.type in ("response.output_text.delta", "response.function_call_arguments.delta"):
                snapshots[event.output_index] = event.snapshot
            elif event.type == "response.completed":
                completed = event.response
    assert completed is not None
    from_deltas: list[str | ToolCall] = []
    for index in sorted(added):
        item = added[index]
        if item.type == "message":
            from_deltas.append(snapshots.get(index, ""))
        elif item.type == "function_call":
            from_deltas.append(ToolCall(0, item.call_id, item.name, snapshots[index]))
    from_completed: list[str | ToolCall] = []
    for item in completed.output:
        if item.type == "message":
            from_completed.append("".join(part.text for part in item.content))
        elif item.type == "function_call":
            from_completed.append(ToolCall(0, item.call_id, item.name, item.arguments))
    return normalise(from_deltas), normalise(from_completed)


async def _pieces(pieces: list[str]) -> AsyncIterator[Frame]:
    for piece in pieces:
        yield Frame(content=piece)
    yield Frame(finish_reason="stop")


@settings(max_examples=150, deadline=None)
@given(answer=answers())
async def test_any_text_and_calls_split_anywhere_arrive_exactly_in_order(answer: tuple[list[str], list[Item]]) -> None:
    """Frames cut at any positions, through the tool-call stage and the encoder: the SDK's
    snapshot and the completed response hold exactly the answer's text and calls, in order."""
    pieces, expected = answer
    stream = extract_tool_calls(_pieces(pieces), ANY_TOOLS)
    if not expected:  # nothing at all: the empty answer fails before the stream starts
        with pytest.raises(UpstreamProtocolError):
            await run(stream)
        return
    _, events = await run(stream)
    from_deltas, from_completed = read_back(events)
    assert from_deltas == expected
    assert from_completed == expected
    assert events[-1]["type"] == "response.completed"


async def test_reasoning_then_text_events_come_in_the_order_codex_reads() -> None:
    _, events = await run(frames_of(Frame(reasoning="Let me "), Frame(reasoning="think."),
                                    Frame(content="Forty"), Frame(content="-two."),
                                    Frame(finish_reason="stop", usage={"prompt_tokens": 5, "completion_tokens": 7,
                                                                       "total_tokens": 12,
                                                                       "completion_tokens_details":
                                                                           {"reasoning_tokens": 3}})))
    assert [event["type"] for event in events] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta", "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done", "response.reasoning_summary_part.done", "response.output_item.done",
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.completed",
    ]
    response = events[-1]["response"]
    assert response["status"] == "completed" and response["id"].startswith("resp_")
    reasoning, message = response["output"]
    assert reasoning["type"] == "reasoning" and reasoning["summary"] == [{"type": "summary_text",
                                                                          "text": "Let me think."}]
    assert message["type"] == "message" and message["content"][0]["text"] == "Forty-two."
    assert events[2]["item"]["id"] == reasoning["id"] and events[9]["item"]["id"] == message["id"]
    assert response["usage"] == {"input_tokens": 5, "input_tokens_details": {"cached_tokens": 0,
                                                                              "cache_write_tokens": 0},
                                 "output_tokens": 7, "output_tokens_details": {"reasoning_tokens": 3},
                                 "total_tokens": 12}


async def test_a_call_is_one_function_call_item_with_its_call_id() -> None:
    call = ToolCall(0, "call_abc", "exec_command", '{"cmd":"ls"}')
    _, events = await run(frames_of(Frame(tool_calls=[call]), Frame(finish_reason="tool_calls")))
    added, delta, done, item_done = events[2:6]
    assert added["type"] == "response.output_item.added" and added["item"]["status"] == "in_progress"
    assert added["item"]["arguments"] == ""
    assert delta == {"type": "response.function_call_arguments.delta", "sequence_number": 3,
                     "item_id": added["item"]["id"], "output_index": 0, "delta": '{"cmd":"ls"}'}
    assert done["arguments"] == '{"cmd":"ls"}'
    item = item_done["item"]
    assert item["id"].startswith("fc_") and item["call_id"] == "call_abc" and item["name"] == "exec_command"
    assert item["status"] == "completed" and "namespace" not in item
    assert events[-1]["response"]["output"] == [item]


async def test_a_nested_tool_call_goes_back_by_its_bare_name_and_namespace() -> None:
    encoder = ResponsesEncoder(context(tools=[NAMESPACE]))
    call = ToolCall(0, "call_1", "spawn_agent", '{"task":"x"}')
    _, events = await run(frames_of(Frame(tool_calls=[call])), encoder)
    item = events[-1]["response"]["output"][0]
    assert (item["name"], item["namespace"]) == ("spawn_agent", "multi_agent_v1")


async def test_length_finish_is_response_incomplete_with_max_output_tokens() -> None:
    _, events = await run(frames_of(Frame(content="cut sh"), Frame(finish_reason="length")))
    last = events[-1]
    assert last["type"] == "response.incomplete"
    assert last["response"]["status"] == "incomplete"
    assert last["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert last["response"]["output"][0]["status"] == "incomplete"
    assert "response.completed" not in [event["type"] for event in events]


async def test_a_fault_after_the_head_is_response_failed_last() -> None:
    raw, events = await run(frames_of(Frame(content="partial"),
                                      error=UpstreamTimeout("The upstream went silent.")))
    last = events[-1]
    assert last["type"] == "response.failed" and raw.endswith(b"\n\n")
    assert last["response"]["status"] == "failed"
    assert last["response"]["error"] == {"code": "upstream_timeout", "message": "The upstream went silent."}
    assert last["response"]["output"][0]["content"][0]["text"] == "partial"
    assert "response.completed" not in [event["type"] for event in events]


async def test_a_fault_before_anything_was_sent_is_raised_for_a_status() -> None:
    with pytest.raises(UpstreamTimeout):
        await run(frames_of(error=UpstreamTimeout("silent")))


async def test_keep_alive_is_a_comment_and_may_open_the_stream() -> None:
    raw, events = await run(frames_of(HEARTBEAT, Frame(content="hi"), HEARTBEAT, Frame(finish_reason="stop")))
    assert raw.count(b": keep-alive\n\n") == 2
    assert raw.index(b": keep-alive") > raw.index(b"response.in_progress")
    assert events[0]["type"] == "response.created" and events[-1]["type"] == "response.completed"


async def test_the_answer_is_saved_before_response_completed_goes_out() -> None:
    saved: list[dict[str, Any]] = []

    async def save(response: dict[str, Any]) -> None:
        saved.append(response)

    _, events = await run(frames_of(Frame(content="kept"), Frame(finish_reason="stop")),
                          ResponsesEncoder(context(), save))
    assert saved == [events[-1]["response"]]
    assert saved[0]["status"] == "completed"
