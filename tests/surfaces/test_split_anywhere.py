"""Any text and tool calls, split anywhere, arrive exactly, on every surface (issue 18).

The property of tests/pipeline/test_toolcalls.py, carried to the clients: the
model's answer is cut into frames at any positions, runs through the tool-call
stage and ``pipeline.encode`` with each surface's encoder, and the client's own
SDK accumulates the events. The text and the calls it ends up with are exactly
the ones in the answer, in order.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import RawMessageStreamEvent
from hypothesis import given, settings
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk
from pydantic import TypeAdapter

from relay.errors import UpstreamProtocolError
from relay.pipeline import Frame, StreamStats, encode, extract_tool_calls
from relay.pipeline.encode import StreamEncoder
from relay.pipeline.frames import ToolCall
from relay.sse import SseDecoder
from relay.surfaces.anthropic.stream import MessagesEncoder
from relay.surfaces.openai_chat import ChatChunkEncoder
from tests.pipeline.test_toolcalls import ANY_TOOLS, Item, answers, normalise

Decode = Callable[[bytes], list[Item]]
_EVENTS: TypeAdapter[RawMessageStreamEvent] = TypeAdapter(RawMessageStreamEvent)


def _events(raw: bytes) -> list[Any]:
    decoder = SseDecoder(1 << 24)
    return [event for event in decoder.feed(raw) + decoder.close()]


def openai_chat(raw: bytes) -> list[Item]:
    """What the openai SDK's stream accumulator makes of a chat-completions stream.

    A chat message holds its text, then its calls: the order between them is not
    on this wire, so the text comes first here.
    """
    state = ChatCompletionStreamState()
    for event in _events(raw):
        if event.data != "[DONE]":
            state.handle_chunk(ChatCompletionChunk.model_validate_json(event.data))
    message = state.get_final_completion().choices[0].message
    calls = [ToolCall(0, call.id, call.function.name, call.function.arguments) for call in message.tool_calls or []]
    return normalise([message.content or "", *calls])


def anthropic_messages(raw: bytes) -> list[Item]:
    """What the anthropic SDK's accumulator makes of a Messages stream (blocks in order)."""
    snapshot = None
    json_bufs: dict[int, bytes] = {}
    for event in _events(raw):
        assert event.event == json.loads(event.data)["type"]  # Claude Code needs the event: lines
        snapshot = accumulate_event(event=_EVENTS.validate_python(json.loads(event.data)),
                                    current_snapshot=snapshot, json_bufs=json_bufs)
    assert snapshot is not None
    items: list[str | ToolCall] = []
    for block in snapshot.content:
        if block.type == "text":
            items.append(block.text)
        elif block.type == "tool_use":
            items.append(ToolCall(0, block.id, block.name, json.dumps(block.input)))
    return normalise(items)


def text_first(items: list[Item]) -> list[Item]:
    """``items`` as a wire that keeps no order between text and calls has them."""
    text = "".join(item for item in items if isinstance(item, str))
    return ([text] if text else []) + [item for item in items if not isinstance(item, str)]


def in_order(items: list[Item]) -> list[Item]:
    return items


#: surface → (its encoder, its client's reading, what of the answer's order that wire keeps).
SURFACES: dict[str, tuple[Callable[[], StreamEncoder], Decode, Callable[[list[Item]], list[Item]]]] = {
    "openai-chat": (lambda: ChatChunkEncoder(completion_id="c", created=0, model="m", include_usage=True),
                    openai_chat, text_first),
    "anthropic": (lambda: MessagesEncoder("m", 1), anthropic_messages, in_order),
}


async def _frames(pieces: list[str]) -> AsyncIterator[Frame]:
    for piece in pieces:
        yield Frame(content=piece)
    yield Frame(finish_reason="stop")


def _estimate(chars: int) -> dict[str, Any]:
    return {"prompt_tokens": 1, "completion_tokens": chars, "total_tokens": chars + 1}


@pytest.mark.parametrize("surface", list(SURFACES))
@settings(max_examples=120, deadline=None)
@given(answer=answers())
async def test_any_text_and_calls_split_anywhere_arrive_exactly(surface: str,
                                                                answer: tuple[list[str], list[Item]]) -> None:
    pieces, expected = answer
    make_encoder, decode, as_wire_keeps = SURFACES[surface]
    stream = encode(extract_tool_calls(_frames(pieces), ANY_TOOLS), make_encoder(), StreamStats(), _estimate)
    if not expected:  # nothing at all: the empty answer fails before the stream starts
        with pytest.raises(UpstreamProtocolError):
            await anext(stream)
        return
    assert decode(b"".join([chunk async for chunk in stream])) == as_wire_keeps(expected)
